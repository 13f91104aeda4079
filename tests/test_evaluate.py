"""metrics.json keeps its agreed shape; medians are over images; CSV, figure and the model path work."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from confocalize import metrics
from confocalize.config import GeneratorConfig, NormalizationConfig
from confocalize.errors import ConfocalizeError
from confocalize.evaluate import evaluate_model, evaluate_pairs
from confocalize.io import read_image, write_image
from confocalize.package import ModelPackage, build_generator
from confocalize.pairs import PairPaths
from confocalize.report import table_rows

BLOCK = {"lq_vs_hq", "generated_vs_hq"}
TOP_KEYS = {"median", "median_affine", "relative_change", "per_image", "normalisation", "data_range", "n_images"}
NOISE = {"a": 0.30, "b": 0.02, "c": 0.10}  # generated = HQ + noise of this level; the median is c's


def _blobs(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    img = np.zeros(shape[-2:])
    for _ in range(6):
        cy, cx = rng.uniform(0, shape[-2]), rng.uniform(0, shape[-1])
        img += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 20.0)
    return np.broadcast_to(img, shape).astype(np.float32)


def _pairs(tmp_path, rng, shape=(32, 40)) -> tuple[list[PairPaths], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Three pairs on disk (LQ = blurred-ish HQ + offset), with HQ arrays and noisy predictions."""
    pairs, hqs, preds = [], {}, {}
    for i, (name, noise) in enumerate(NOISE.items()):
        hq = _blobs(rng, shape)
        lq = 0.5 * hq + 0.2 + rng.normal(0, 0.05, shape).astype(np.float32)
        axes = "YX" if len(shape) == 2 else "ZYX"
        lq_path = write_image(tmp_path / "lq" / f"{name}.ome.tif", lq, axes, pixel_size=0.1)
        hq_path = write_image(tmp_path / "hq" / f"{name}.ome.tif", hq, axes, pixel_size=0.1)
        pairs.append(PairPaths(name, f"field{i % 2}", lq_path, hq_path))
        hqs[name] = hq
        preds[name] = hq + rng.normal(0, noise, shape).astype(np.float32)
    return pairs, hqs, preds


def test_metrics_json_has_exactly_the_agreed_shape(tmp_path, rng):
    pairs, _, preds = _pairs(tmp_path, rng)
    result = evaluate_pairs(pairs, preds, tmp_path / "out")
    assert set(result) == TOP_KEYS
    for key in ("median", "median_affine"):
        assert set(result[key]) == BLOCK
        assert all(set(v) == set(metrics.METRIC_NAMES) for v in result[key].values())
    assert set(result["relative_change"]) == set(metrics.METRIC_NAMES)
    for record in result["per_image"]:
        assert set(record) == {"name", "field", "lq_vs_hq", "generated_vs_hq", "affine"}
        assert set(record["affine"]) == BLOCK
    assert result["normalisation"] == metrics.NORMALISATION and result["data_range"] == 1 and result["n_images"] == 3
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == result


def test_medians_are_over_images(tmp_path, rng):
    pairs, hqs, preds = _pairs(tmp_path, rng)
    result = evaluate_pairs(pairs, preds, tmp_path / "out")
    expected = {name: metrics.compare(preds[name], hqs[name]) for name in NOISE}
    for record in result["per_image"]:
        assert record["generated_vs_hq"] == pytest.approx(expected[record["name"]]["plain"])
        assert record["affine"]["generated_vs_hq"] == pytest.approx(expected[record["name"]]["affine"])
    assert result["median"]["generated_vs_hq"] == pytest.approx(expected["c"]["plain"])  # middle noise level
    for metric in metrics.METRIC_NAMES:
        lq = np.median([r["lq_vs_hq"][metric] for r in result["per_image"]])
        gen = result["median"]["generated_vs_hq"][metric]
        assert result["median"]["lq_vs_hq"][metric] == pytest.approx(lq)
        assert result["relative_change"][metric] == pytest.approx((gen - lq) / abs(lq))


def test_generated_equal_to_hq_scores_perfectly(tmp_path, rng):
    pairs, hqs, _ = _pairs(tmp_path, rng)
    result = evaluate_pairs(pairs, hqs, tmp_path / "out")
    perfect = result["median"]["generated_vs_hq"]
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["mse"] == 0.0 and perfect["psnr"] == np.inf
    assert result["median"]["lq_vs_hq"]["ssim"] < 0.99


def test_csv_and_figure_are_written(tmp_path, rng):
    pairs, _, preds = _pairs(tmp_path, rng)
    out = tmp_path / "out"
    evaluate_pairs(pairs, preds, out, baselines={"gaussian": {p.name: preds[p.name] * 0.9 for p in pairs}})
    with (out / "metrics.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == list(NOISE)
    assert {"lq_vs_hq_ssim", "generated_vs_hq_psnr", "generated_vs_hq_affine_nrmse", "gaussian_vs_hq_mse"} <= set(rows[0])
    assert (out / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stacks_score_the_mean_over_planes(tmp_path, rng):
    pairs, hqs, preds = _pairs(tmp_path, rng, shape=(2, 24, 24))
    result = evaluate_pairs(pairs[:1], preds, tmp_path / "out")
    name = pairs[0].name
    planes = [metrics.compare(preds[name][z], hqs[name][z])["plain"]["mse"] for z in range(2)]
    assert result["per_image"][0]["generated_vs_hq"]["mse"] == pytest.approx(np.mean(planes))


def test_shape_mismatch_and_missing_prediction_are_user_errors(tmp_path, rng):
    pairs, _, preds = _pairs(tmp_path, rng)
    with pytest.raises(ConfocalizeError, match="shape"):
        evaluate_pairs(pairs, {**preds, "a": preds["a"][:-1]}, tmp_path / "out")
    with pytest.raises(ConfocalizeError, match="no generated image"):
        evaluate_pairs(pairs, {"a": preds["a"]}, tmp_path / "out")


def test_table_rows_follow_the_study_layout(tmp_path, rng):
    pairs, _, preds = _pairs(tmp_path, rng)
    header, rows = table_rows(evaluate_pairs(pairs, preds, tmp_path / "out"))
    assert header == ["metric", "LQ vs HQ", "generated vs HQ", "relative change"]
    assert [r[0] for r in rows] == ["MSE", "SSIM", "PSNR", "NRMSE"] and rows[1][3].endswith("%")


def test_evaluate_model_enhances_and_saves_generated_images(tmp_path, rng):
    pairs, _, _ = _pairs(tmp_path, rng)
    cfg = GeneratorConfig(depth=2, base_channels=4, residual=False)
    torch.manual_seed(0)
    package = ModelPackage(build_generator(cfg), cfg, NormalizationConfig())
    calls = []
    result = evaluate_model(package, pairs, tmp_path / "out", progress=lambda d, t: calls.append((d, t)))
    assert result["n_images"] == 3 and calls[-1] == (4, 4)
    generated = read_image(tmp_path / "out" / "generated" / "a.ome.tif")
    assert generated.data.shape == (32, 40) and generated.pixel_size == pytest.approx(0.1)
    assert (tmp_path / "out" / "figure.png").is_file() and (tmp_path / "out" / "report.html").is_file()
