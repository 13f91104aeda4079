"""The catalogue of bad inputs, through the API and the command line.

Each bad input gives one line naming the file (or setting) and a fix, exit code 2, no traceback and
no output file, not even a partial one. Cases already covered elsewhere are not repeated here:
test_io.py (API: missing file, folder, 0 bytes, garbage and text .tif, NaN, 1x1, 1xN, complex, bool,
wrong axes, negative pixel size, unwritable folder), test_cli.py (CLI: missing model, 0 bytes, text
.tif, NaN, 1x1, unknown YAML key, unpaired LQ/HQ shapes), test_config.py (bad YAML values) and
test_package.py (packages of other format versions, API).

Decisions the tests pin down:
* all-zero and constant images are enhanced (the normalisation maps a zero range to 0, no NaN);
  for training they are refused, naming the file, since they teach nothing;
* images smaller than the network's receptive field are enhanced without a warning: the U-Net pads,
  and the training patches are themselves smaller than the receptive field of the deeper models;
* a z-stack given to a 2D model is enhanced plane by plane.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from confocalize.cli import main
from confocalize.config import GeneratorConfig, NormalizationConfig
from confocalize.errors import ConfocalizeError
from confocalize.io import Image, read_image, write_image, write_json
from confocalize.package import ModelPackage, build_generator, save_package
from confocalize.predict import enhance_image

TINY = GeneratorConfig(depth=2, base_channels=4, residual=False)


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_package(ModelPackage(build_generator(TINY), TINY, NormalizationConfig()), tmp_path / "model")


def cli(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, " ".join(captured.err.split())  # rich may wrap long lines


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err and err.count("confocalize: error:") == 1
    for needle in needles:
        assert needle in err, (needle, err)


def files_under(folder: Path) -> list[Path]:
    """Every file below ``folder``, hidden temporary files included."""
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _truncated_stack(path: Path) -> None:
    """An OME-TIFF z-stack cut short: tifffile alone would return fewer planes and no pixel size."""
    full = write_image(path.with_name("full.ome.tif"), np.arange(3 * 32 * 32, dtype=np.uint16).reshape(3, 32, 32), "ZYX", 0.1)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])


def _png_named_tif(path: Path) -> None:
    from PIL import Image as PILImage

    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(path, format="PNG")


MakeFile = Callable[[Path], object]
NEW_BAD_FILES: dict[str, tuple[MakeFile, str]] = {  # not in test_io.py
    "truncated stack": (_truncated_stack, "truncated"),
    "png named .tif": (_png_named_tif, "not a readable TIFF"),
    "inf pixels": (lambda p: tifffile.imwrite(p, np.array([[np.inf, 1], [2, 3]], np.float32)), "NaN or Inf"),
    "values beyond float32": (lambda p: tifffile.imwrite(p, np.array([[1e300, 0], [1, 2]])), "exceed"),
}
BAD_FILES: dict[str, tuple[MakeFile, str]] = NEW_BAD_FILES | {  # not in test_cli.py
    "complex": (lambda p: tifffile.imwrite(p, np.ones((8, 8), np.complex64)), "not supported"),
    "bool": (lambda p: tifffile.imwrite(p, np.ones((8, 8), bool)), "not supported"),
    "1xN": (lambda p: tifffile.imwrite(p, np.ones((1, 40), np.uint16)), "too small"),
    "missing": (lambda p: None, "no such file"),
}


@pytest.mark.parametrize("case", list(NEW_BAD_FILES))
def test_bad_image_files_api(tmp_path: Path, case: str) -> None:
    make, needle = NEW_BAD_FILES[case]
    path = tmp_path / "bad.tif"
    make(path)
    with pytest.raises(ConfocalizeError, match=needle) as err:
        read_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_image_files_cli(tmp_path: Path, capsys, model: Path, case: str) -> None:
    make, needle = BAD_FILES[case]
    path = tmp_path / "bad.tif"
    make(path)
    code, _, err = cli(capsys, "enhance", model, path, "-o", tmp_path / "out")
    assert_one_line_error(code, err, str(path), needle)
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("data", "axes"),
    [
        (np.zeros((24, 24), np.uint16), "YX"),  # all zero
        (np.full((24, 24), 7.5, np.float32), "YX"),  # constant
        (np.full((3, 24, 24), 2**32 - 1, np.uint32), "ZYX"),  # constant at the top of the range
        (np.arange(4, dtype=np.float32).reshape(2, 2), "YX"),  # far smaller than the receptive field
        (np.arange(100, dtype=np.int64).reshape(2, 50), "YX"),  # a strip, as int64 (numpy's default)
        (np.random.default_rng(0).random((3, 20, 20)), "ZYX"),  # a z-stack for a 2D model: plane by plane
    ],
)
def test_edge_images_are_enhanced_to_finite_values(data: np.ndarray, axes: str) -> None:
    package = ModelPackage(build_generator(TINY), TINY, NormalizationConfig())
    out = enhance_image(package, Image(data, axes))
    assert out.axes == axes and out.data.shape == data.shape and out.data.dtype == np.float32
    assert np.all(np.isfinite(out.data))


@pytest.mark.parametrize("value", [0, 1000])
def test_constant_image_cli_writes_a_finite_output(tmp_path: Path, capsys, model: Path, value: int) -> None:
    path = write_image(tmp_path / "flat.tif", np.full((16, 16), value, np.uint16), "YX")
    code, _, err = cli(capsys, "enhance", model, path, "-o", tmp_path / "out")
    assert code == 0, err
    result = read_image(tmp_path / "out" / "flat.ome.tif").data
    assert result.shape == (16, 16) and np.all(np.isfinite(result))  # zero range: normalised to 0, not 0/0


@pytest.mark.parametrize("dtype", [np.complex64, bool, object])
def test_in_memory_images_of_unusable_types_are_refused(dtype: type) -> None:
    package = ModelPackage(build_generator(TINY), TINY, NormalizationConfig())
    with pytest.raises(ConfocalizeError, match="not supported"):
        enhance_image(package, Image(np.ones((8, 8), dtype=dtype), "YX"))


def test_huge_in_memory_values_are_refused_not_turned_into_nan() -> None:
    package = ModelPackage(build_generator(TINY), TINY, NormalizationConfig())
    data = np.array([[3e38, -3e38], [0, 1]], np.float32)
    with pytest.raises(ConfocalizeError, match="exceed"):
        enhance_image(package, Image(data, "YX"))


def test_a_model_with_nan_weights_is_refused_rather_than_writing_garbage(tmp_path: Path, capsys) -> None:
    generator = build_generator(TINY)
    with torch.no_grad():
        generator.head.bias.fill_(float("nan"))
    model = save_package(ModelPackage(generator, TINY, NormalizationConfig()), tmp_path / "model")
    path = write_image(tmp_path / "a.tif", np.ones((16, 16), np.uint16), "YX")
    code, _, err = cli(capsys, "enhance", model, path, "-o", tmp_path / "out")
    assert_one_line_error(code, err, str(path), "NaN/Inf")
    assert files_under(tmp_path / "out") == []


@pytest.mark.parametrize(
    ("options", "needles"),
    [
        (["--axes", "XYZ"], ["axes 'XYZ' are not supported"]),
        (["--axes", "YX"], ["do not fit an array of shape (3, 16, 16)"]),  # a z-stack called a plane
        (["--pixel-size", "0"], ["not positive"]),
        (["--pixel-size", "-0.1"], ["not positive"]),
        (["--pixel-size", "nan"], ["not positive"]),
    ],
)
def test_wrong_axes_and_pixel_sizes_cli(tmp_path: Path, capsys, model: Path, options: list[str], needles: list[str]) -> None:
    path = write_image(tmp_path / "stack.tif", np.ones((3, 16, 16), np.uint16), "ZYX")
    code, _, err = cli(capsys, "enhance", model, path, "-o", tmp_path / "out", *options)
    assert_one_line_error(code, err, str(path), *needles)
    assert files_under(tmp_path / "out") == []


def test_zero_pixel_size_api(tmp_path: Path) -> None:
    path = write_image(tmp_path / "a.tif", np.ones((8, 8), np.uint16), "YX")
    with pytest.raises(ConfocalizeError, match="not positive"):
        read_image(path, pixel_size=0.0)


def _write_pairs(root: Path, hq: np.ndarray, hq_axes: str, lq: np.ndarray | None = None, lq_axes: str = "YX") -> None:
    """Three fields of 48x48 pairs; the first pair's HQ (and LQ) replaced by the given arrays."""
    rng = np.random.default_rng(0)
    for i in range(3):
        write_image(root / "lq" / f"{i:03d}_a.tif", (rng.random((48, 48)) * 1000).astype(np.float32), "YX")
        write_image(root / "hq" / f"{i:03d}_a.tif", (rng.random((48, 48)) * 1000).astype(np.float32), "YX")
    write_image(root / "hq" / "000_a.tif", hq, hq_axes)
    if lq is not None:
        write_image(root / "lq" / "000_a.tif", lq, lq_axes)


def _train_cli(capsys, root: Path, *extra: object) -> tuple[int, str, str]:
    config = root / "tiny.yaml"
    config.write_text(
        "data: {patch_size: 32, batch_size: 2, patches_per_epoch: 4, val_fraction: 0.34, test_fraction: 0.0}\n"
        "generator: {depth: 2, base_channels: 4}\ndiscriminator: {n_layers: 2, base_channels: 4}\n"
        "trainer: {max_steps: 2, val_every_steps: 2, progress_bar: false}\n"
    )
    return cli(capsys, "train", "--lq", root / "lq", "--hq", root / "hq", "--field-pattern", r"^(\d+)_",
               "--config", config, "-o", root / "run", *extra)  # fmt: skip


@pytest.mark.parametrize("value", [0.0, 500.0])
def test_constant_hq_is_refused_for_training_naming_the_file(tmp_path: Path, capsys, value: float) -> None:
    _write_pairs(tmp_path, np.full((48, 48), value, np.float32), "YX")
    code, _, err = _train_cli(capsys, tmp_path)
    assert_one_line_error(code, err, str(tmp_path / "hq" / "000_a.tif"), "constant image")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_constant_channel_is_named(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    both = np.stack([rng.random((48, 48)), np.zeros((48, 48))]).astype(np.float32)
    _write_pairs(tmp_path, both, "CYX", lq=both, lq_axes="CYX")
    code, _, err = _train_cli(capsys, tmp_path)
    assert_one_line_error(code, err, "000_a.tif: channel 1: every pixel is 0.0")


def test_mismatched_lq_hq_channel_counts_are_refused(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(2)
    _write_pairs(tmp_path, rng.random((2, 48, 48)).astype(np.float32), "CYX")
    code, _, err = _train_cli(capsys, tmp_path)
    assert_one_line_error(code, err, "000_a.tif", "CYX (2, 48, 48)", "differ in shape")


@pytest.mark.parametrize(
    ("yaml_text", "needles"),
    [
        ("trainer:\n  max_steps: many\n", ["trainer.max_steps", "valid integer"]),
        ("trainer:\n  checkpoint_every_steps: 0\n", ["trainer.checkpoint_every_steps"]),
        ("trainer:\n  stop_on_nan: perhaps\n", ["trainer.stop_on_nan"]),
        ("genrator:\n  depth: 2\n", ["genrator", "unknown key"]),
    ],
)
def test_mistyped_yaml_cli(tmp_path: Path, capsys, yaml_text: str, needles: list[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    code, _, err = cli(capsys, "train", "--lq", tmp_path, "--hq", tmp_path, "--config", config, "-o", tmp_path / "run")
    assert_one_line_error(code, err, str(config), *needles)
    assert not (tmp_path / "run").exists()


def test_folder_given_as_config_or_checkpoint(tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "train", "--lq", tmp_path, "--hq", tmp_path, "--config", tmp_path)
    assert_one_line_error(code, err, str(tmp_path), "is a folder")
    code, _, err = cli(capsys, "train", "--lq", tmp_path, "--hq", tmp_path, "--resume", tmp_path, "-o", tmp_path / "run")
    assert_one_line_error(code, err, "no such checkpoint")


def test_negative_lq_pixel_size_for_training(tmp_path: Path, capsys) -> None:
    code, _, err = cli(capsys, "train", "--lq", tmp_path, "--hq", tmp_path, "--lq-pixel-size", "0")
    assert_one_line_error(code, err, "data.lq_pixel_size", "greater than 0")


def test_output_folder_not_writable_cli(tmp_path: Path, capsys, model: Path) -> None:
    path = write_image(tmp_path / "a.tif", np.ones((16, 16), np.uint16), "YX")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    code, _, err = cli(capsys, "enhance", model, path, "-o", blocker / "out")
    assert_one_line_error(code, err, "cannot write here")


def _disk_full(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_an_image_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tifffile, "imwrite", _disk_full)
    with pytest.raises(ConfocalizeError, match="No space left on device") as err:
        write_image(tmp_path / "out" / "a.ome.tif", np.ones((8, 8), np.uint16), "YX")
    assert "free disk space" in str(err.value)
    assert files_under(tmp_path / "out") == []


def test_disk_full_while_writing_json_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Path, "write_text", _disk_full)
    with pytest.raises(ConfocalizeError, match="No space left on device"):
        write_json(tmp_path / "m.json", {"a": 1})
    assert files_under(tmp_path) == []


def test_disk_full_during_enhance_cli(tmp_path: Path, capsys, model: Path, monkeypatch) -> None:
    for name in ("a", "b"):
        write_image(tmp_path / "in" / f"{name}.tif", np.ones((16, 16), np.uint16), "YX")
    monkeypatch.setattr(tifffile, "imwrite", _disk_full)
    code, _, err = cli(capsys, "enhance", model, tmp_path / "in", "-o", tmp_path / "out")
    assert_one_line_error(code, err, "a.ome.tif", "No space left on device")  # stops at once: every file would fail
    assert files_under(tmp_path / "out") == []


def test_disk_full_while_saving_a_checkpoint_leaves_the_old_one(tmp_path: Path, monkeypatch) -> None:
    from confocalize.guards import AtomicCheckpointIO

    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 2}, path)
    monkeypatch.setattr(Path, "write_bytes", _disk_full)
    with pytest.raises(ConfocalizeError, match="No space left on device"):
        AtomicCheckpointIO().save_checkpoint({"global_step": 4}, path)
    assert files_under(tmp_path) == [path]
    assert torch.load(path, weights_only=True) == {"global_step": 2}


@pytest.mark.parametrize("command", ["enhance", "info"])
def test_model_package_from_a_newer_version_cli(tmp_path: Path, capsys, model: Path, command: str) -> None:
    desc = json.loads((model / "model.json").read_text())
    desc.update(format_version=99, confocalize_version="9.0")
    (model / "model.json").write_text(json.dumps(desc))
    path = write_image(tmp_path / "a.tif", np.ones((16, 16), np.uint16), "YX")
    args = [model, path, "-o", tmp_path / "out"] if command == "enhance" else [model]
    code, _, err = cli(capsys, command, *args)
    assert_one_line_error(code, err, str(model), "model format 99", "upgrade confocalize")
    assert files_under(tmp_path / "out") == []
