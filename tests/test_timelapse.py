"""Time-lapses (axes with a leading T): read and written with their time increment, enhanced frame by frame with
one normalisation per movie, scored per frame, registered on their time mean, refused where not supported, simulated."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from confocalize.cli import main
from confocalize.config import DataConfig, GeneratorConfig, NormalizationConfig
from confocalize.data import load_pairs
from confocalize.errors import ConfocalizeError
from confocalize.evaluate import evaluate_pairs
from confocalize.io import Image, read_image, write_image
from confocalize.lazyio import open_lazy
from confocalize.metrics import frame_change
from confocalize.package import ModelPackage, build_generator, save_package
from confocalize.pairs import PairPaths
from confocalize.predict import enhance_files, enhance_image, movie_normalizations
from confocalize.register import point_rms, register_pair, synthetic_pair
from confocalize.simulate import SimulationParams, simulate

TINY = GeneratorConfig(depth=2, base_channels=4, residual=False)  # run on PyTorch here: no ONNX graph to build
SIM = dict(size=48, z_range=2.0, z_step=0.5, margin=0.5, n_cells=(2, 2))  # as test_simulate's: a fraction of a second


def _package() -> ModelPackage:
    torch.manual_seed(0)
    package = ModelPackage(build_generator(TINY), TINY, NormalizationConfig())
    package.generator.head.weight.data *= 20  # outputs vary with the input, not only with the bias
    return package


def _movie(rng: np.random.Generator, frames: int = 3, shape: tuple[int, int] = (32, 40)) -> np.ndarray:
    """Smooth blobs; frame t is (t + 1) times as bright as the first, so a shared normalisation keeps them apart."""
    base = ndimage.gaussian_filter(rng.random(shape), 2.0)
    base = (base - base.min()) / np.ptp(base)
    return np.stack([(t + 1) * 1000 * base + 100 for t in range(frames)]).astype(np.uint16)


def test_ome_tiff_round_trip_keeps_tczyx_and_time_increment(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.integers(0, 4000, (3, 2, 4, 16, 20), dtype=np.uint16)
    path = write_image(tmp_path / "m.ome.tif", data, "TCZYX", pixel_size=0.1, z_step=0.5, time_increment=2.5)
    image = read_image(path)
    assert image.axes == "TCZYX" and np.array_equal(image.data, data)
    assert (image.pixel_size, image.z_step, image.time_increment) == (pytest.approx(0.1), 0.5, 2.5)
    lazy = open_lazy(path)
    assert lazy.axes == "TCZYX" and lazy.time_increment == 2.5 and np.array_equal(np.asarray(lazy.data[1]), data[1])


def test_imagej_hyperstack_is_read_as_tczyx_and_round_trips(tmp_path: Path, rng: np.random.Generator) -> None:
    tzcyx = rng.random((3, 4, 2, 16, 20)).astype(np.float32)
    metadata = {"axes": "TZCYX", "finterval": 0.25, "spacing": 0.3, "unit": "um"}
    tifffile.imwrite(tmp_path / "ij.tif", tzcyx, imagej=True, resolution=(10.0, 10.0), metadata=metadata)
    image = read_image(tmp_path / "ij.tif")
    assert image.axes == "TCZYX" and np.array_equal(image.data, tzcyx.transpose(0, 2, 1, 3, 4))
    assert (image.pixel_size, image.z_step, image.time_increment) == (pytest.approx(0.1), 0.3, 0.25)
    path = write_image(tmp_path / "again.ome.tif", image.data, image.axes, image.pixel_size, image.z_step, image.time_increment)
    again = read_image(path)
    assert again.axes == "TCZYX" and np.array_equal(again.data, image.data) and again.time_increment == 0.25


def test_a_single_time_point_is_no_time_lapse(tmp_path: Path) -> None:
    path = write_image(tmp_path / "one.ome.tif", np.ones((1, 3, 8, 8), np.uint16), "TZYX", time_increment=1.0)
    image = read_image(path)
    assert image.axes == "ZYX" and image.time_increment is None


def test_enhance_streams_a_movie_frame_by_frame_with_one_normalisation(tmp_path: Path, rng: np.random.Generator) -> None:
    package = _package()
    movie = _movie(rng)
    path = write_image(tmp_path / "movie.ome.tif", movie, "TYX", pixel_size=0.1, time_increment=1.5)
    calls: list[tuple[int, int]] = []
    enhance_files(package, [path], tmp_path / "out", progress=lambda done, total: calls.append((done, total)), backend="torch")
    out = read_image(tmp_path / "out" / "movie.ome.tif")
    assert out.axes == "TYX" and out.data.shape == movie.shape
    assert (out.pixel_size, out.time_increment) == (pytest.approx(0.1), 1.5)
    assert calls == [(1, 3), (2, 3), (3, 3)]  # progress per frame
    whole = enhance_image(package, read_image(path), backend="torch")  # in memory, all frames at once: the same numbers
    assert whole.axes == "TYX" and whole.time_increment == 1.5
    np.testing.assert_allclose(out.data, whole.data, atol=1e-5)
    frame = Image(movie[1], "YX", 0.1)
    alone = enhance_image(package, frame, backend="torch", normalizations=movie_normalizations(package, read_image(path)))
    np.testing.assert_allclose(out.data[1], alone.data, atol=1e-5)
    # one normalisation for the movie: a brighter frame stays brighter (each frame normalised alone would look alike)
    per_frame = [enhance_image(package, Image(f, "YX", 0.1), backend="torch").data for f in movie]
    assert np.abs(per_frame[2] - per_frame[0]).mean() < 0.1 * np.abs(out.data[2] - out.data[0]).mean()


def test_cli_enhances_a_movie_and_gives_its_uncertainty_as_ome_zarr(tmp_path: Path, rng: np.random.Generator, capsys) -> None:
    model = save_package(_package(), tmp_path / "model")
    path = write_image(tmp_path / "movie.tif", _movie(rng, frames=2), "TYX", time_increment=0.5)
    assert main(["enhance", str(model), str(path), "-o", str(tmp_path / "out"), "--dtype", "uint16", "--backend", "torch"]) == 0
    out = read_image(tmp_path / "out" / "movie.ome.tif")
    assert out.axes == "TYX" and out.data.dtype == np.uint16 and out.time_increment == 0.5
    capsys.readouterr()
    code = main(["enhance", str(model), str(path), "-o", str(tmp_path / "unc"), "--uncertainty", "--backend", "torch"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err and "time-lapse" in err and "add --format zarr" in err
    assert not (tmp_path / "unc").exists()
    assert main(["enhance", str(model), str(path), "-o", str(tmp_path / "unc"), "--uncertainty", "--format", "zarr", "--backend", "torch"]) == 0
    uncertainty = open_lazy(tmp_path / "unc" / "movie.uncertainty.ome.zarr")
    assert uncertainty.axes == "TYX" and uncertainty.data.shape == out.data.shape and float(uncertainty.data.min()) >= 0


def test_chunked_enhance_of_a_movie_into_ome_zarr(tmp_path: Path, rng: np.random.Generator) -> None:
    from confocalize.chunked import enhance_to_zarr

    package = _package()
    path = write_image(tmp_path / "movie.ome.tif", _movie(rng), "TYX", pixel_size=0.1, time_increment=2.0)
    (target,) = enhance_to_zarr(package, [path], tmp_path / "zarr", chunk=16, backend="torch")
    out = open_lazy(target)
    assert out.axes == "TYX" and out.time_increment == 2.0 and out.pixel_size == pytest.approx(0.1)
    np.testing.assert_allclose(np.asarray(out.data), enhance_image(package, read_image(path), backend="torch").data, atol=1e-4)


def test_evaluate_scores_each_frame_and_the_movie_by_its_median(tmp_path: Path, rng: np.random.Generator) -> None:
    hq = _movie(rng).astype(np.float32)
    lq = 0.5 * hq + 50 + rng.normal(0, 20, hq.shape).astype(np.float32)
    pair = PairPaths("m", "m", write_image(tmp_path / "lq.tif", lq, "TYX", time_increment=1.0), write_image(tmp_path / "hq.tif", hq, "TYX"))
    noise = [0.3, 0.02, 0.1]  # per frame, relative to the frame's range: frame 2 holds the median
    generated = np.stack([f + rng.normal(0, n * np.ptp(f), f.shape) for f, n in zip(hq, noise)]).astype(np.float32)
    result = evaluate_pairs([pair], {"m": generated}, tmp_path / "eval")
    frames = result["per_frame"]
    assert [r["frame"] for r in frames] == [0, 1, 2] and [r["name"] for r in frames] == ["m_t0", "m_t1", "m_t2"]
    psnr = [r["generated_vs_hq"]["psnr"] for r in frames]
    assert psnr[1] > psnr[2] > psnr[0]
    assert result["per_image"][0]["generated_vs_hq"]["psnr"] == pytest.approx(psnr[2])
    with (tmp_path / "eval" / "metrics_frames.csv").open() as fh:
        assert [row["name"] for row in csv.DictReader(fh)] == ["m_t0", "m_t1", "m_t2"]


def test_a_movie_pair_registers_on_its_time_mean(rng: np.random.Generator) -> None:
    spots = ndimage.gaussian_filter(rng.random((500, 500)), 2.0)
    base = (255 * np.clip(spots - np.percentile(spots, 70), 0, None) / np.ptp(spots)).astype(np.float32)
    lq, hq, truth = synthetic_pair(base, rng, 0.5, size=128)
    fade = np.array([1.0, 0.8, 0.6], np.float32)[:, None, None]
    lq_movie = replace(lq, data=lq.data[None] * fade, axes="T" + lq.axes)
    hq_movie = replace(hq, data=hq.data[None] * fade, axes="T" + hq.axes)
    reg = register_pair(lq_movie, hq_movie)
    assert point_rms(truth, reg.lq_from_hq, hq.data.shape, lq.data.shape) < 0.5
    assert reg.axes == "TYX" and reg.hq_on_lq.shape == (3, *lq.data.shape)
    np.testing.assert_allclose(reg.hq_on_lq[2], 0.6 * reg.hq_on_lq[0], rtol=1e-4, atol=1e-3)  # one transform for all frames
    with pytest.raises(ConfocalizeError, match="3 vs 1 time points"):
        register_pair(lq_movie, hq)


def test_training_refuses_a_time_lapse_in_one_line(tmp_path: Path, rng: np.random.Generator) -> None:
    movie = _movie(rng, shape=(64, 64))
    pair = PairPaths("m", "m", write_image(tmp_path / "lq.tif", movie, "TYX"), write_image(tmp_path / "hq.tif", movie, "TYX"))
    with pytest.raises(ConfocalizeError, match=r"lq.tif: a time-lapse \(TYX, 3 time points\) cannot be used to train") as info:
        load_pairs([pair], DataConfig(patch_size=32))
    assert "\n" not in str(info.value)


def test_simulate_frames_drift_bleach_and_renew_noise(tmp_path: Path) -> None:
    params = SimulationParams(**SIM, drift=(0.1, 0.0), bleaching=0.2, frame_interval=3.0)
    simulate(tmp_path / "moving", n_fields=1, params=params, frames=3)
    lq, hq, clean = (read_image(tmp_path / "moving" / kind / "field000.ome.tif") for kind in ("lq", "hq", "clean"))
    assert lq.axes == hq.axes == clean.axes == "TYX" and lq.time_increment == 3.0
    assert lq.data.shape == clean.data.shape == (3, 48, 48) and hq.data.shape[0] == 3
    signal = clean.data - (params.hq_offset + params.hq_gain * params.hq_background)  # fluorescence only
    moved = signal[1, :, 1:-4]  # one LQ pixel (0.1 µm) to the right of frame 0, 0.8 times as bright
    expected = 0.8 * signal[0, :, :-5]
    assert np.sqrt(np.mean((moved - expected) ** 2)) < 0.02 * np.sqrt(np.mean(expected**2))
    static = SimulationParams(**SIM)
    simulate(tmp_path / "static", n_fields=1, params=static, frames=2)
    still = read_image(tmp_path / "static" / "lq" / "field000.ome.tif").data.astype(np.float64)
    clean_still = read_image(tmp_path / "static" / "clean" / "field000.ome.tif").data
    assert np.array_equal(clean_still[0], clean_still[1])  # no drift, no bleaching: the same sample
    assert np.std(still[1] - still[0]) > 1  # but the noise is drawn anew


def test_frame_change_compensates_a_known_drift(rng: np.random.Generator) -> None:
    scene = ndimage.gaussian_filter(rng.random((40, 60)), 1.5)
    movie = np.stack([scene[5:35, 10 - 2 * t : 50 - 2 * t] for t in range(3)])  # the sample moves 2 px right per frame
    assert frame_change(movie, (0, 2))["mean"] < 1e-6 < 0.01 < frame_change(movie)["mean"]
    with pytest.raises(ValueError, match="2 or more frames"):
        frame_change(movie[:1])


def test_cli_simulate_frames(tmp_path: Path, capsys) -> None:
    assert main(["simulate", str(tmp_path / "sim"), "--fields", "1", "--size", "32", "--frames", "2", "--drift", "0.1", "0"]) == 0
    assert "time-lapse pairs of 2 frames" in capsys.readouterr().out
    image = read_image(tmp_path / "sim" / "lq" / "field000.ome.tif")
    assert image.axes == "TYX" and image.data.shape == (2, 32, 32) and image.time_increment == 1.0
