"""The command line as a user meets it: the chain on real data, and one clear line for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from confocalize.cli import main
from confocalize.io import read_image, write_image

TINY = """
data: {patch_size: 32, batch_size: 2, patches_per_epoch: 8, val_fraction: 0.25, test_fraction: 0.25}
generator: {depth: 2, base_channels: 4}
discriminator: {n_layers: 2, base_channels: 8}
trainer: {max_steps: 3, val_every_steps: 2, progress_bar: false}
"""


def run_cli(capsys, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    message = " ".join(err.split())  # rich may wrap long lines
    for needle in needles:
        assert needle in message


@pytest.mark.slow
def test_chain_on_real_w2s_pairs(tmp_path, capsys, shared_data):
    """Train a few steps on four real W2S fields, then enhance and evaluate through the CLI."""
    w2s = shared_data / "w2s_widefield"
    rows = [f"{w2s / 'avg1' / f'{fov:03d}_{ch}.png'},{w2s / 'avg400' / f'{fov:03d}_{ch}.png'}" for fov in (1, 2, 3, 4) for ch in (0, 1)]
    csv = tmp_path / "pairs.csv"
    csv.write_text("lq,hq\n" + "\n".join(rows) + "\n")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    run = tmp_path / "run"

    code, out, err = run_cli(capsys, "train", "--pairs-csv", csv, "--field-pattern", r"^(\d+)_", "--lq-pixel-size", 0.1,
                             "--config", config, "-o", run)
    assert code == 0, err
    split = json.loads((run / "split.json").read_text())
    fields = {s: set(split[s]["fields"]) for s in ("train", "val", "test")}
    assert not (fields["train"] & fields["val"]) and not (fields["train"] & fields["test"]) and not (fields["val"] & fields["test"])

    code, _, err = run_cli(capsys, "enhance", run / "model", w2s / "avg1" / "090_0.png", "-o", tmp_path / "enhanced",
                           "--dtype", "uint16", "--pixel-size", 0.1)
    assert code == 0, err
    enhanced = read_image(tmp_path / "enhanced" / "090_0.ome.tif")
    assert enhanced.data.shape == (512, 512) and enhanced.data.dtype == np.uint16 and enhanced.pixel_size == pytest.approx(0.1)

    code, out, err = run_cli(capsys, "evaluate", run / "model", "--pairs-csv", csv, "--field-pattern", r"^(\d+)_",
                             "--split", run / "split.json", "-o", tmp_path / "eval")
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["median"]) == {"lq_vs_hq", "generated_vs_hq"}
    assert {p["name"] for p in metrics["per_image"]} == {p["name"] for p in split["test"]["pairs"]}
    assert (tmp_path / "eval" / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "SSIM" in out


def test_missing_input_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "enhance", tmp_path / "model", tmp_path / "nope.tif", "-o", tmp_path / "out")
    assert_user_error(code, err, str(tmp_path / "model"))
    assert not (tmp_path / "out").exists()


@pytest.fixture()
def model(tmp_path):
    from confocalize.config import GeneratorConfig, NormalizationConfig
    from confocalize.package import ModelPackage, build_generator, save_package

    cfg = GeneratorConfig(depth=2, base_channels=4, residual=False)
    return save_package(ModelPackage(build_generator(cfg), cfg, NormalizationConfig()), tmp_path / "model")


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("not an image at all"), "not a readable TIFF"),
        (lambda p: tifffile.imwrite(p, np.full((16, 16), np.nan, np.float32)), "NaN"),
        (lambda p: tifffile.imwrite(p, np.ones((1, 1), np.uint16)), "too small"),
    ],
)
def test_bad_image_for_enhance_writes_nothing(tmp_path, capsys, model, make, needle):
    bad = tmp_path / "bad.tif"
    make(bad)
    code, _, err = run_cli(capsys, "enhance", model, bad, "-o", tmp_path / "out")
    assert_user_error(code, err, str(bad), needle)
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_unknown_yaml_key(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("trainer:\n  max_stepz: 3\n")
    code, _, err = run_cli(capsys, "train", "--lq", tmp_path, "--hq", tmp_path, "--config", config)
    assert_user_error(code, err, str(config), "max_stepz", "unknown key")


def test_pairs_that_cannot_be_paired(tmp_path, capsys):
    for i in range(3):
        write_image(tmp_path / "lq" / f"f{i}.tif", np.ones((64, 64), np.uint16), "YX")
        write_image(tmp_path / "hq" / f"f{i}.tif", np.ones((64, 48), np.uint16), "YX")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    code, _, err = run_cli(capsys, "train", "--lq", tmp_path / "lq", "--hq", tmp_path / "hq", "--config", config, "-o", tmp_path / "run")
    assert_user_error(code, err, str(tmp_path / "lq"), "differ in shape", "confocalize register")
    assert not (tmp_path / "run" / "model").exists()


def test_unregistrable_pair_is_listed_as_rejected(tmp_path, capsys, rng):
    write_image(tmp_path / "lq" / "a.tif", (rng.random((96, 96)) * 1000).astype(np.uint16), "YX", pixel_size=0.1)
    write_image(tmp_path / "hq" / "a.tif", (rng.random((96, 96)) * 1000).astype(np.uint16), "YX", pixel_size=0.1)
    code, out, err = run_cli(capsys, "register", tmp_path / "lq", tmp_path / "hq", "-o", tmp_path / "pairs")
    assert_user_error(code, err, "no pair could be registered")
    manifest = json.loads((tmp_path / "pairs" / "pairs.json").read_text())
    assert manifest["pairs"][0]["status"] == "rejected" and manifest["pairs"][0]["reason"]
    assert not (tmp_path / "pairs" / "lq" / "a.ome.tif").exists()


def test_a_blank_or_corrupt_file_is_rejected_and_the_batch_goes_on(tmp_path, capsys, rng):
    write_image(tmp_path / "lq" / "blank.tif", np.full((96, 96), 5, np.uint16), "YX", pixel_size=0.1)
    write_image(tmp_path / "hq" / "blank.tif", (rng.random((96, 96)) * 1000).astype(np.uint16), "YX", pixel_size=0.1)
    (tmp_path / "lq" / "broken.tif").write_bytes(b"II*\x00 not a tiff")
    write_image(tmp_path / "hq" / "broken.tif", (rng.random((96, 96)) * 1000).astype(np.uint16), "YX", pixel_size=0.1)
    code, out, err = run_cli(capsys, "register", tmp_path / "lq", tmp_path / "hq", "-o", tmp_path / "pairs")
    assert_user_error(code, err, "no pair could be registered")
    reasons = {p["name"]: p["reason"] for p in json.loads((tmp_path / "pairs" / "pairs.json").read_text())["pairs"]}
    assert "is blank" in reasons["blank"] and "broken.tif" in reasons["broken"]


def test_error_text_with_brackets_is_printed_verbatim(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  patch_size: [red]\n")
    code, _, err = run_cli(capsys, "train", "--lq", tmp_path, "--hq", tmp_path, "--config", config)
    assert_user_error(code, err, "data.patch_size")
