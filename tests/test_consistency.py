"""Physics consistency: the output re-imaged through the LQ optics against the input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from confocalize import consistency
from confocalize.cli import main
from confocalize.config import GeneratorConfig, NormalizationConfig, SystemDescription
from confocalize.errors import ConfocalizeError
from confocalize.io import Image, read_image, write_image
from confocalize.package import ModelPackage, build_generator, load_package, save_package
from confocalize.predict import enhance_image, predict_array
from confocalize.simulate import SimulationParams, random_sample, render_pair

TINY = GeneratorConfig(depth=2, base_channels=4, residual=False)  # untrained: random output, not the input
PSF = consistency.gaussian_psf(1.5)


def _scene(rng: np.random.Generator, noise: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """An object (sparse bright points on a dim background) and its noisy image through :data:`PSF`."""
    obj = np.full((96, 96), 10.0)
    obj[rng.integers(8, 88, 40), rng.integers(8, 88, 40)] += 400.0
    return obj, ndimage.convolve(obj, PSF, mode="reflect") + rng.normal(0, noise, obj.shape)


def test_noise_level_is_robust_to_structure(rng: np.random.Generator) -> None:
    obj, image = _scene(rng, noise=3.0)
    assert consistency.noise_level(image) == pytest.approx(3.0, rel=0.1)


def test_a_consistent_output_scores_the_noise_level_and_a_planted_spot_shows(rng: np.random.Generator) -> None:
    obj, image = _scene(rng)
    assert consistency.check(obj, "YX", image, "YX", PSF, "x").score == pytest.approx(1.0, abs=0.25)
    planted = obj.copy()
    planted[30, 61] += 400.0
    result = consistency.check(planted, "YX", image, "YX", PSF, "x")
    y, x = np.unravel_index(np.argmax(np.abs(result.residual)), result.residual.shape)
    assert abs(y - 30) <= 1 and abs(x - 61) <= 1 and result.residual[y, x] < -5  # the input lacks the spot
    assert result.residual.shape == obj.shape and result.residual.dtype == np.float32


def test_the_right_model_is_consistent_and_wrong_ones_are_not() -> None:
    params = SimulationParams(size=128)
    rng = np.random.default_rng([0, 128])
    sim = render_pair(*random_sample(params, rng), params, rng)
    right = load_package("sim-widefield-confocal")
    psf = consistency.gaussian_psf(consistency.optics_sigma_um(right.provenance.lq_system, "model") / params.lq_pixel_size)
    lq = Image(sim.lq, "YX", params.lq_pixel_size)

    def score(output: np.ndarray) -> float:
        return consistency.check(output, "YX", sim.lq, "YX", psf, "field").score

    truth, good = score(sim.hq_clean), score(enhance_image(right, lq).data)
    assert good < 1.3 * truth  # as consistent as the noise-free confocal truth itself
    assert score(enhance_image(load_package("dscm-confocal-sted"), lq).data) > 1.1 * good  # STED-like sharpening invents
    torch.manual_seed(0)
    untrained = predict_array(build_generator(TINY).eval(), (sim.lq[None] - 100.0).astype(np.float32) / 500)[0]
    assert score(untrained) > 1.5 * good


def test_psf_sources_and_their_errors(tmp_path: Path) -> None:
    stack = np.stack([0.5 * PSF, PSF, 0.2 * PSF]).astype(np.float32)
    np.testing.assert_allclose(consistency.read_psf(write_image(tmp_path / "psf.tif", stack, "ZYX")), PSF, rtol=1e-5)
    with pytest.raises(ConfocalizeError, match="not a PSF"):
        consistency.read_psf(write_image(tmp_path / "bad.tif", -PSF.astype(np.float32), "YX"))
    with pytest.raises(ConfocalizeError, match="--lq-psf"):
        consistency.optics_sigma_um(SystemDescription(objective_na=1.4), "model")
    assert consistency.optics_sigma_um(SystemDescription(objective_na=1.0, emission_nm=500), "m") == pytest.approx(0.105)


def test_cli_consistency_needs_optics_or_a_psf(tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    model = save_package(ModelPackage(build_generator(TINY), TINY, NormalizationConfig()), tmp_path / "model")
    src = write_image(tmp_path / "in" / "cell.tif", _scene(rng)[1].astype(np.float32), "YX", pixel_size=0.1)
    assert main(["enhance", str(model), str(src), "-o", str(tmp_path / "out"), "--consistency"]) == 2
    err = capsys.readouterr().err
    assert "records no LQ objective_na" in err and "--lq-psf" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    psf = write_image(tmp_path / "psf.tif", PSF.astype(np.float32), "YX")
    assert main(["enhance", str(model), str(src), "-o", str(tmp_path / "out"), "--consistency", "--lq-psf", str(psf)]) == 0
    assert read_image(tmp_path / "out" / "cell.consistency.ome.tif").data.shape == (96, 96)
    assert "cell: consistency" in capsys.readouterr().out


def test_lazy_residual_equals_the_whole_image_check_across_chunks(rng: np.random.Generator) -> None:
    """Chunks of 40 px (the background filter reaches ~60 px): every plane's map and the score as in memory."""
    import dask.array as da

    scenes = [_scene(rng) for _ in range(2)]
    output = np.stack([np.pad(obj, ((0, 54), (0, 74)), mode="reflect") for obj, _ in scenes]).astype(np.float32)
    lq = np.stack([np.pad(image, ((0, 54), (0, 74)), mode="reflect") for _, image in scenes]).astype(np.float32)
    output[1, 100:104, 140:144] += 300.0  # an invented spot in a chunk far from the first
    expected = consistency.check(output, "ZYX", lq, "ZYX", PSF, "stack")
    lazy = consistency.lazy_residual(da.from_array(output, chunks=(1, 40, 40)), da.from_array(lq, chunks=(1, 40, 40)), PSF, "stack")
    assert lazy.shape == output.shape and lazy.dtype == np.float32
    result = lazy.compute(scheduler="synchronous")
    np.testing.assert_allclose(result, expected.residual, atol=1e-4)
    assert consistency.rms(lazy) == pytest.approx(expected.score, rel=1e-5)
    assert result[1, 100:104, 140:144].min() < -5  # the invented spot, at its place


def test_cli_zarr_consistency_map_of_a_time_lapse(tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]) -> None:
    """``--format zarr --consistency`` takes a TIFF time-lapse: the map of each frame is that of the frame enhanced on its own."""
    from confocalize.lazyio import open_lazy

    torch.manual_seed(0)
    model = save_package(ModelPackage(build_generator(TINY), TINY, NormalizationConfig()), tmp_path / "model")
    movie = np.stack([_scene(rng)[1] for _ in range(3)]).astype(np.float32)
    src = write_image(tmp_path / "in" / "cell.tif", movie, "TYX", pixel_size=0.1)
    psf = write_image(tmp_path / "psf.tif", PSF.astype(np.float32), "YX")
    args = ["enhance", str(model), str(src), "-o", str(tmp_path / "out"), "--format", "zarr", "--consistency", "--lq-psf", str(psf)]
    assert main([*args, "--backend", "torch"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cell.consistency.ome.zarr", "cell.ome.zarr"]
    output = open_lazy(tmp_path / "out" / "cell.ome.zarr").data.compute()
    stored = open_lazy(tmp_path / "out" / "cell.consistency.ome.zarr")
    assert stored.axes == "TYX" and stored.pixel_size == pytest.approx(0.1)
    expected = consistency.check(output, "ZYX", movie, "ZYX", PSF, "cell")  # frame by frame, as planes
    np.testing.assert_allclose(stored.data.compute(), expected.residual, atol=1e-4)
    printed = " ".join(capsys.readouterr().out.split())
    assert f"cell: consistency {expected.score:.2f} x noise" in printed and "each with its consistency map" in printed
