"""Uncertainty from the 8 flips/rotations: transforms, the variance-model fit, calibration in the package, CLI and evaluate."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from confocalize import calibration, uncertainty
from confocalize.cli import main
from confocalize.config import GeneratorConfig, NormalizationConfig
from confocalize.evaluate import evaluate_model
from confocalize.io import Image, read_image, write_image
from confocalize.package import ModelPackage, TrainingData, UncertaintyCalibration, build_generator, load_package, save_package
from confocalize.pairs import PairPaths

TINY = GeneratorConfig(depth=2, base_channels=4, residual=True)  # with a random head: input plus a varied correction


@pytest.fixture()
def package() -> ModelPackage:
    torch.manual_seed(0)
    generator = build_generator(TINY)
    generator.head.weight.data.normal_(0.0, 0.5)  # outputs that vary with the input, as a trained model's do
    return ModelPackage(generator, TINY, NormalizationConfig())


def test_dihedral_transforms_are_eight_and_invert(rng: np.random.Generator) -> None:
    x = rng.random((2, 5, 7))
    views = [uncertainty._transform(x, t, m) for t, m in uncertainty.DIHEDRAL]
    assert len({v.tobytes() for v in map(np.ascontiguousarray, views)}) == 8
    for (t, m), v in zip(uncertainty.DIHEDRAL, views):
        np.testing.assert_array_equal(uncertainty._untransform(v, t, m), x)


def test_an_equivariant_model_has_no_spread_and_a_biased_one_does(package: ModelPackage, rng: np.random.Generator) -> None:
    image = Image(rng.random((16, 24)).astype(np.float32), "YX")
    doubling = lambda pkg, im, *a: im.with_data(2 * np.asarray(im.data, np.float32))  # noqa: E731
    with mock.patch.object(uncertainty, "enhance_image", doubling):
        result = uncertainty.enhance_with_uncertainty(package, image)
    np.testing.assert_allclose(result.image.data, 2 * image.data, rtol=1e-6)
    assert np.abs(result.uncertainty.data).max() < 1e-6
    ramp = lambda pkg, im, *a: im.with_data(np.asarray(im.data, np.float32) + np.arange(im.data.shape[-1]))  # noqa: E731
    with mock.patch.object(uncertainty, "enhance_image", ramp):
        assert uncertainty.enhance_with_uncertainty(package, image).median > 1.0


def test_uncertainty_has_the_output_grid_and_the_calibration_applies(package: ModelPackage, rng: np.random.Generator) -> None:
    image = Image(rng.random((3, 20, 28)).astype(np.float32), "ZYX", pixel_size=0.1)
    raw = uncertainty.enhance_with_uncertainty(package, image)
    assert raw.uncertainty.data.shape == raw.image.data.shape == image.data.shape
    assert raw.uncertainty.axes == "ZYX" and raw.uncertainty.data.dtype == np.float32 and not raw.calibrated
    assert raw.uncertainty.data.min() >= 0 and raw.median > 0
    cal = UncertaintyCalibration(scale=2.0, signal=0.0, floor=0.0, median_p95=raw.median, n_images=1)
    scaled = uncertainty.enhance_with_uncertainty(replace(package, uncertainty=cal), image)
    np.testing.assert_allclose(scaled.uncertainty.data, 2 * raw.uncertainty.data, rtol=1e-5)
    assert scaled.calibrated and uncertainty.outside_calibration(replace(package, uncertainty=cal), scaled.median)
    assert uncertainty.outside_calibration(package, 1.0) is None


def test_fit_recovers_the_variance_model_and_calibrates(rng: np.random.Generator) -> None:
    spread = rng.uniform(0.0, 0.05, (4, 64, 64)).astype(np.float32)
    mean = rng.uniform(0.0, 1.0, spread.shape).astype(np.float32)
    errors = np.abs(rng.normal(0, np.sqrt((3 * spread) ** 2 + 0.002 * mean + 0.02**2))).astype(np.float32)
    coef = calibration.fit(list(spread), list(mean), list(errors))
    assert coef["scale"] == pytest.approx(3, rel=0.1) and coef["signal"] == pytest.approx(0.002, rel=0.15)
    assert coef["floor"] == pytest.approx(0.02, rel=0.25)
    calibrated = [calibration.calibrated(s.copy(), m, **coef) for s, m in zip(spread, mean)]
    assert calibration.calibration_error(calibration.reliability(calibrated, list(errors))) < 0.1
    assert calibration.calibration_error(calibration.reliability(list(spread), list(errors))) > 0.5
    assert calibration.spearman(calibrated[0], errors[0]) > 0.3
    assert calibration.spearman(mean[0], -mean[0]) == pytest.approx(-1)


def test_calibrate_stores_in_the_package(package: ModelPackage, tmp_path: Path, rng: np.random.Generator) -> None:
    pairs = []
    for i in range(2):
        hq = rng.random((32, 32)).astype(np.float32)
        lq = hq + rng.normal(0, 0.2, hq.shape).astype(np.float32)
        pairs.append(PairPaths(f"p{i}", f"p{i}", write_image(tmp_path / f"lq{i}.tif", lq, "YX"), write_image(tmp_path / f"hq{i}.tif", hq, "YX")))
    plain = json.loads((save_package(package, tmp_path / "plain") / "model.json").read_text())
    assert "uncertainty" not in plain  # uncalibrated packages are written as before
    package.uncertainty = uncertainty.calibrate(package, pairs, data="two test pairs")
    assert package.uncertainty.n_images == 2 and package.uncertainty.median_p95 > 0
    loaded = load_package(save_package(package, tmp_path / "calibrated"))
    assert loaded.uncertainty == package.uncertainty
    result = evaluate_model(loaded, pairs, tmp_path / "eval", uncertainty=True)
    block = json.loads((tmp_path / "eval" / "metrics.json").read_text())["uncertainty"]
    assert [r["name"] for r in block["per_image"]] == ["p0", "p1"] and -1 <= block["median_spearman"] <= 1
    assert result["uncertainty"] == block
    assert read_image(tmp_path / "eval" / "generated" / "p0.uncertainty.ome.tif").data.shape == (32, 32)


def test_cli_calibrate_writes_a_new_package_and_keeps_the_model(package: ModelPackage, tmp_path: Path, rng: np.random.Generator,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    for i in range(3):
        hq = rng.random((32, 32)).astype(np.float32)
        write_image(tmp_path / "hq" / f"p{i}.tif", hq, "YX")
        write_image(tmp_path / "lq" / f"p{i}.tif", hq + rng.normal(0, 0.2, hq.shape).astype(np.float32), "YX")
    model = save_package(package, tmp_path / "model")
    before = (model / "model.json").read_bytes()
    source = ["--lq", str(tmp_path / "lq"), "--hq", str(tmp_path / "hq")]
    assert main(["calibrate", str(model), *source, "-o", str(tmp_path / "cal"), "--max-pairs", "2"]) == 0
    cal = load_package(tmp_path / "cal").uncertainty
    assert cal is not None and cal.n_images == 2 and cal.data.endswith("p0, p2")  # evenly spread: the first and the last
    assert "calibrated package" in capsys.readouterr().out and (model / "model.json").read_bytes() == before
    assert main(["calibrate", str(model), *source, "-o", str(tmp_path / "cal")]) == 2
    assert "already exists" in capsys.readouterr().err
    trained = package.provenance.model_copy(update={"training_data": TrainingData(split={"train": {"fields": ["p1"], "names": ["p1"]}})})
    model = save_package(replace(package, provenance=trained), tmp_path / "trained_on_p1")
    assert main(["calibrate", str(model), *source, "-o", str(tmp_path / "cal2")]) == 2
    assert "p1: the model trained on this pair" in capsys.readouterr().err and not (tmp_path / "cal2").exists()


def test_cli_enhance_writes_the_uncertainty_and_a_summary(package: ModelPackage, tmp_path: Path, rng: np.random.Generator,
                                                          capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    model = save_package(package, tmp_path / "model")
    src = write_image(tmp_path / "in" / "cell.tif", rng.random((2, 24, 24)).astype(np.float32), "CYX")
    assert main(["enhance", str(model), str(src), "-o", str(tmp_path / "out"), "--uncertainty"]) == 0
    unc = read_image(tmp_path / "out" / "cell.uncertainty.ome.tif")
    assert unc.axes == "CYX" and unc.data.shape == (2, 24, 24) and unc.data.dtype == np.float32
    assert "cell: median uncertainty" in capsys.readouterr().out
    assert main(["enhance", str(model), str(src), "-o", str(tmp_path / "out")]) == 0  # other settings: enhanced again
    assert "wrote 1" in capsys.readouterr().out
    assert main(["enhance", str(model), str(src), "-o", str(tmp_path / "z"), "--consistency", "--format", "zarr"]) == 2
    assert "records no LQ objective_na" in capsys.readouterr().err and not (tmp_path / "z").exists()  # refused before any work
    assert main(["enhance", str(model), str(src), "-o", str(tmp_path / "p"), "--lq-psf", str(src)]) == 2
    assert "add --consistency" in capsys.readouterr().err
