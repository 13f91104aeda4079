"""Model packages: folder and zip round trips, provenance, refusal of anything suspicious, the fit check, CLI."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import tiny_config, write_tiny_pairs

from confocalize.cli import _train_config, build_parser, main
from confocalize.config import GeneratorConfig, NormalizationConfig, SystemDescription
from confocalize.errors import ConfocalizeError
from confocalize.io import Image, read_image, write_image
from confocalize.package import (
    DESCRIPTION,
    MANIFEST,
    WEIGHTS,
    ModelPackage,
    Provenance,
    TrainingData,
    build_generator,
    load_package,
    manifest,
    package_summary,
    save_package,
)
from confocalize.predict import PixelSizeWarning, check_fit, enhance_image
from confocalize.train import fit

LQ = SystemDescription(modality="wide-field", objective_na=0.8, magnification=40, pixel_size_um=0.1, emission_nm=520,
                       detector="sCMOS", institute="Partner lab")  # fmt: skip
HQ = SystemDescription(modality="confocal", objective_na=1.4, pinhole_au=1.0, institute="Imaging facility")


def make_package(lq_pixel_size: float | None = 0.1, generator_config: GeneratorConfig | None = None) -> ModelPackage:
    """A tiny random model with provenance and metrics (``generator_config`` may disagree with the network)."""
    cfg = GeneratorConfig(depth=2, base_channels=4, residual=False)
    torch.manual_seed(0)
    provenance = Provenance(
        lq_system=LQ, hq_system=HQ, training_data=TrainingData(n_pairs=6, n_fields=3, lq_pixel_sizes_um=[0.1])
    )
    generator = build_generator(cfg).eval()
    generator.head.weight.data.normal_(0.0, 0.5)  # the residual head starts at zero: give it a correction to make
    return ModelPackage(
        generator, generator_config or cfg, NormalizationConfig(low=2, high=99.5),
        lq_pixel_size=lq_pixel_size, provenance=provenance, metrics={"val": {"ssim": 0.8, "psnr": 25.0}},
    )  # fmt: skip


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return save_package(make_package(), tmp_path / "model")


def _members(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.iterdir()}


def _write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _rehash(members: dict[str, bytes]) -> dict[str, bytes]:
    """What an attacker who edits files would do: a manifest that matches them again."""
    files = {k: v for k, v in members.items() if k != MANIFEST}
    return {**files, MANIFEST: json.dumps(manifest(files)).encode()}


def test_folder_and_zip_round_trip_to_the_same_network_and_record(folder: Path, tmp_path: Path) -> None:
    zipped = save_package(load_package(folder), tmp_path / "model.zip")
    with zipfile.ZipFile(zipped) as zf:
        assert sorted(zf.namelist()) == sorted([DESCRIPTION, WEIGHTS, MANIFEST])
    a, b = load_package(folder), load_package(zipped)
    x = torch.randn(1, 1, 20, 20)
    with torch.no_grad():
        torch.testing.assert_close(a.generator(x), b.generator(x))
        torch.testing.assert_close(a.generator(x), make_package().generator(x))
    assert a.sha256 == b.sha256 and len(a.sha256) == 64  # same content, same package hash
    assert b.lq_pixel_size == 0.1 and b.normalization.high == 99.5 and b.metrics["val"]["ssim"] == 0.8
    assert b.provenance.lq_system == LQ and b.provenance.hq_system == HQ
    assert b.provenance.training_data.n_fields == 3 and b.path == zipped


def test_summary_lists_systems_training_data_and_metrics(folder: Path) -> None:
    summary = package_summary(load_package(folder))
    assert summary["package"]["sha256"] == load_package(folder).sha256
    assert summary["lq_system"]["objective_na"] == 0.8 and summary["hq_system"]["pinhole_au"] == 1.0
    assert summary["training_data"]["n_fields"] == 3 and summary["network"]["depth"] == 2
    assert summary["metrics"] == {"val": {"ssim": 0.8, "psnr": 25.0}}
    json.dumps(summary)  # printable as JSON


def test_tampered_weights_in_a_folder_are_refused(folder: Path) -> None:
    weights = folder / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfocalizeError, match=f"hash mismatch for {WEIGHTS}.*altered"):
        load_package(folder)


def test_an_edited_description_is_refused(folder: Path) -> None:
    desc = json.loads((folder / DESCRIPTION).read_text())
    desc["lq_pixel_size_um"] = 0.2
    (folder / DESCRIPTION).write_text(json.dumps(desc))
    with pytest.raises(ConfocalizeError, match=f"hash mismatch for {DESCRIPTION}"):
        load_package(folder)


def test_tampered_zips_are_refused(folder: Path, tmp_path: Path) -> None:
    members = _members(folder)
    weights = bytearray(members[WEIGHTS])
    weights[-4:] = b"\x00\x00\x80\x7f"  # last float32 of the weights set to +inf
    swapped = _write_zip(tmp_path / "swapped.zip", {**members, WEIGHTS: bytes(weights)})
    with pytest.raises(ConfocalizeError, match="altered"):
        load_package(swapped)
    raw = bytearray(save_package(load_package(folder), tmp_path / "ok.zip").read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # a flipped bit inside the compressed weights: the zip's CRC fails
    (tmp_path / "flipped.zip").write_bytes(bytes(raw))
    with pytest.raises(ConfocalizeError, match="damaged, altered"):
        load_package(tmp_path / "flipped.zip")


class _Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_a_malicious_pickle_is_never_unpickled(folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"head.weight": _Payload(marker)})
    members = _members(folder)
    as_weights = _write_zip(tmp_path / "as_weights.zip", _rehash({**members, WEIGHTS: evil}))
    with pytest.raises(ConfocalizeError, match="not a safetensors file"):
        load_package(as_weights)
    as_extra = _write_zip(tmp_path / "as_extra.zip", {**members, "weights.pt": evil})
    with pytest.raises(ConfocalizeError, match="unexpected file.*weights.pt"):
        load_package(as_extra)
    (folder / "weights.pt").write_bytes(evil)
    with pytest.raises(ConfocalizeError, match="unexpected file.*weights.pt"):
        load_package(folder)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../model.json", "/etc/evil", "model/weights.safetensors", "model.json/"])
def test_unexpected_zip_members_are_refused(folder: Path, tmp_path: Path, name: str) -> None:
    path = _write_zip(tmp_path / "extra.zip", {**_members(folder), name: b"x"})
    with pytest.raises(ConfocalizeError, match="unexpected file"):
        load_package(path)


def test_duplicate_and_missing_members_are_refused(folder: Path, tmp_path: Path) -> None:
    members = _members(folder)
    with zipfile.ZipFile(tmp_path / "dup.zip", "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        for name, data in [*members.items(), (WEIGHTS, b"other")]:
            zf.writestr(name, data)
    with pytest.raises(ConfocalizeError, match="lists a file twice"):
        load_package(tmp_path / "dup.zip")
    (folder / MANIFEST).unlink()
    with pytest.raises(ConfocalizeError, match=f"{MANIFEST} missing"):
        load_package(folder)


@pytest.mark.parametrize(("version", "fix"), [(99, "upgrade confocalize"), (1, "retrain the model")])
def test_other_format_versions_are_refused(folder: Path, version: int, fix: str) -> None:
    desc = json.loads((folder / DESCRIPTION).read_text())
    desc["format_version"] = version
    (folder / DESCRIPTION).write_text(json.dumps(desc))
    with pytest.raises(ConfocalizeError, match=f"format {version} is not supported.*{fix}"):
        load_package(folder)


def test_format_3_packages_load_as_plain_unets(tmp_path: Path) -> None:
    """Before format 4 no generator was residual: an old package without the key keeps its meaning."""
    plain = make_package(generator_config=GeneratorConfig(depth=2, base_channels=4, residual=False))
    plain.generator = build_generator(plain.generator_config).eval()
    folder = save_package(plain, tmp_path / "old")
    desc = json.loads((folder / DESCRIPTION).read_text())
    desc["format_version"] = 3
    del desc["generator"]["residual"]
    files = {DESCRIPTION: json.dumps(desc).encode(), WEIGHTS: (folder / WEIGHTS).read_bytes()}
    (folder / DESCRIPTION).write_bytes(files[DESCRIPTION])
    (folder / MANIFEST).write_text(json.dumps({**manifest(files), "format_version": 3}))
    loaded = load_package(folder)
    assert loaded.generator_config.residual is False
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded.generator(x), plain.generator(x))


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    wrong = make_package(generator_config=GeneratorConfig(depth=2, base_channels=8, residual=False))
    with pytest.raises(ConfocalizeError, match="weights do not fit the described network"):
        load_package(save_package(wrong, tmp_path / "wrong"))


def test_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ConfocalizeError, match="no such model folder or .zip"):
        load_package(tmp_path / "missing.zip")
    with pytest.raises(ConfocalizeError, match="not a confocalize model"):
        load_package(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ConfocalizeError, match="not a confocalize model"):
        load_package(tmp_path / "notes.txt")


def test_fit_check_warns_beyond_ten_percent_only() -> None:
    package = make_package(lq_pixel_size=0.1)
    image = Image(np.zeros((32, 32), np.float32), "YX", pixel_size=0.109)
    assert check_fit(package, image) is None  # 9%: fine
    with pytest.warns(PixelSizeWarning, match="0.2 µm differs from the model's 0.1 µm by 100%.*--resample"):
        assert check_fit(package, Image(image.data, "YX", pixel_size=0.2)) is None
    assert check_fit(package, Image(image.data, "YX", pixel_size=0.2), resample=True) == pytest.approx(2.0)
    assert check_fit(make_package(lq_pixel_size=None), Image(image.data, "YX", pixel_size=0.2)) is None
    with pytest.raises(ConfocalizeError, match="cannot resample, its pixel size is unknown"):
        check_fit(package, Image(image.data, "YX"), resample=True)


def test_resample_enhances_on_the_model_grid_and_returns_to_the_input_grid(rng: np.random.Generator) -> None:
    package = make_package(lq_pixel_size=0.1)
    coarse = Image(rng.random((3, 30, 40), dtype=np.float32) * 100, "ZYX", pixel_size=0.2, z_step=0.5)
    out = enhance_image(package, coarse, resample=True)
    assert out.data.shape == coarse.data.shape and out.pixel_size == 0.2 and out.z_step == 0.5
    from skimage.transform import resize

    fine = Image(resize(coarse.data, (3, 60, 80), order=1, mode="reflect", preserve_range=True), "ZYX", pixel_size=0.1)
    on_model_grid = enhance_image(package, fine).data  # no warning: it already has the model's pixel size
    expected = resize(on_model_grid, coarse.data.shape, order=1, mode="reflect", preserve_range=True)
    np.testing.assert_allclose(out.data, expected, atol=1e-5)


def test_cli_enhances_with_a_zip_and_warns_about_the_pixel_size(folder: Path, tmp_path: Path, rng, capsys) -> None:
    zipped = save_package(load_package(folder), tmp_path / "model.zip")
    write_image(tmp_path / "in" / "a.tif", rng.random((24, 24), dtype=np.float32), "YX", pixel_size=0.13)
    assert main(["enhance", str(zipped), str(tmp_path / "in"), "-o", str(tmp_path / "out")]) == 0
    assert "warning: " in capsys.readouterr().err
    assert main(["enhance", str(zipped), str(tmp_path / "in"), "-o", str(tmp_path / "out2"), "--resample"]) == 0
    assert "warning: " not in capsys.readouterr().err
    assert read_image(tmp_path / "out2" / "a.ome.tif").data.shape == (24, 24)
    (folder / "extra.py").write_text("import os")
    assert main(["enhance", str(folder), str(tmp_path / "in"), "-o", str(tmp_path / "out3")]) == 2
    assert "unexpected file(s) extra.py" in capsys.readouterr().err


def test_cli_info_prints_tables_and_json(folder: Path, capsys) -> None:
    assert main(["info", str(folder)]) == 0
    text = capsys.readouterr().out
    assert "Partner lab" in text and "Imaging facility" in text and "ssim" in text
    assert main(["info", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lq_system"]["modality"] == "wide-field"


def test_cli_export_zip(folder: Path, tmp_path: Path) -> None:
    assert main(["export", str(folder)]) == 2
    assert main(["export", str(folder), "--zip", str(tmp_path / "send.zip")]) == 0
    assert load_package(tmp_path / "send.zip").sha256 == load_package(folder).sha256


def test_train_options_describe_the_systems() -> None:
    args = build_parser().parse_args(
        ["train", "pairs", "--lq-system", "modality=wide-field", "--lq-system", "objective_na=0.8",
         "--hq-system", "institute=Imaging facility, Dept. 2"]
    )  # fmt: skip
    provenance = _train_config(args).provenance
    assert provenance.lq_system.objective_na == 0.8 and provenance.hq_system.institute == "Imaging facility, Dept. 2"
    with pytest.raises(ConfocalizeError, match=r"provenance\.lq_system\.na.*unknown key"):
        _train_config(build_parser().parse_args(["train", "pairs", "--lq-system", "na=0.8"]))
    with pytest.raises(ConfocalizeError, match="expected KEY=VALUE"):
        _train_config(build_parser().parse_args(["train", "pairs", "--hq-system", "confocal"]))


def test_training_writes_systems_data_summary_and_config_into_the_package(tmp_path: Path) -> None:
    write_tiny_pairs(tmp_path, n_fields=3, per_field=1)
    systems = {"lq_system": {"modality": "wide-field", "objective_na": 0.8}, "hq_system": {"modality": "confocal"}}
    config = tiny_config(tmp_path, "run", provenance=systems, trainer={"max_steps": 1})
    package = load_package(fit(config).model_dir)
    p = package.provenance
    assert p.lq_system.objective_na == 0.8 and p.hq_system.modality == "confocal"
    assert p.training_data.n_fields == 3 and p.training_data.lq_pixel_sizes_um == [0.2]
    assert p.training_data.split["val"]["fields"] and p.config["generator"]["depth"] == 2
    assert set(package.metrics["val"]) >= {"ssim", "psnr"} and package.lq_pixel_size == 0.2
