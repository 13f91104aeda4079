"""Multi-channel images and z-stacks: channels separate or joint, 2.5D context, enhance and evaluate per slice."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from confocalize.config import DataConfig, parse_config
from confocalize.data import load_pairs, sample_channels
from confocalize.errors import ConfocalizeError
from confocalize.evaluate import evaluate_pairs
from confocalize.io import Image, read_image, write_image
from confocalize.metrics import compare
from confocalize.normalize import sampled_normalization
from confocalize.package import load_package, save_package
from confocalize.pairs import PairPaths
from confocalize.predict import enhance_image, predict_array
from confocalize.stacks import context_indices, model_groups, network_input
from confocalize.train import fit


def write_pairs(root: Path, shape: tuple[int, ...], axes: str, n_fields: int = 4) -> list[PairPaths]:
    """LQ = blurred + noisy HQ per plane, one pair per field, in ``root/lq`` and ``root/hq``."""
    rng = np.random.default_rng(0)
    pairs = []
    for f in range(n_fields):
        hq = gaussian_filter(rng.random(shape), [0] * (len(shape) - 2) + [1, 1]) * 1000
        lq = gaussian_filter(hq, [0] * (len(shape) - 2) + [2, 2]) + rng.normal(0, 5, shape)
        name = f"{f:03d}_0"
        lq_path = write_image(root / "lq" / f"{name}.tif", lq.astype(np.float32), axes, pixel_size=0.2, z_step=0.5)
        hq_path = write_image(root / "hq" / f"{name}.tif", hq.astype(np.float32), axes, pixel_size=0.2, z_step=0.5)
        pairs.append(PairPaths(name, f"{f:03d}", lq_path, hq_path))
    return pairs


def tiny_run(root: Path, **data: Any) -> Any:
    """Train a tiny GAN for 2 steps on ``root/lq`` and ``root/hq`` with these data settings."""
    config = parse_config({
        "output_dir": str(root / "run"),
        "data": {"lq_dir": str(root / "lq"), "hq_dir": str(root / "hq"), "field_pattern": r"^(\d+)_",
                 "patch_size": 16, "batch_size": 2, "patches_per_epoch": 4, **data},
        "generator": {"depth": 2, "base_channels": 4},
        "discriminator": {"base_channels": 4, "n_layers": 1},
        "trainer": {"max_steps": 2, "val_every_steps": 2, "progress_bar": False},
    })  # fmt: skip
    return fit(config)


def test_context_planes_are_clamped_at_the_stack_ends() -> None:
    assert context_indices(0, 4, 1) == [0, 0, 1]
    assert context_indices(3, 4, 2) == [1, 2, 3, 3, 3]
    assert context_indices(0, 1, 1) == [0, 0, 0]
    czyx = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    x = network_input(czyx, [0, 1], 2, 1)  # channel by channel: c0 z1..z3 (clamped), then c1
    np.testing.assert_array_equal(x, czyx[[0, 0, 0, 1, 1, 1], [1, 2, 2, 1, 2, 2]])


def test_model_groups_follow_the_model_channels() -> None:
    assert model_groups(3, 1, 0, "x") == [[0], [1], [2]]
    assert model_groups(3, 3, 0, "x") == [[0, 1, 2]]
    assert model_groups(2, 6, 1, "x") == [[0, 1]]  # joint 2.5D: 2 channels x 3 planes
    assert model_groups(2, 3, 1, "x") == [[0], [1]]
    with pytest.raises(ConfocalizeError, match="x: has 2 channel"):
        model_groups(2, 4, 1, "x")


def test_config_keys_for_channels_and_context() -> None:
    assert DataConfig().channels == "separate" and DataConfig().context_slices == 0
    with pytest.raises(ConfocalizeError, match="data.channels"):
        parse_config({"data": {"channels": "together"}})
    with pytest.raises(ConfocalizeError, match="data.context_slices"):
        parse_config({"data": {"context_slices": -1}})


def test_joint_samples_hold_all_channels_and_context_adds_planes(tmp_path: Path) -> None:
    cyx = write_pairs(tmp_path / "cyx", (2, 24, 20), "CYX", n_fields=1)
    joint = load_pairs(cyx, DataConfig(patch_size=16, channels="joint"))
    assert [s.name for s in joint] == ["000_0"] and joint[0].lq.shape == joint[0].hq.shape == (2, 24, 20)
    assert sample_channels(joint) == (2, 2)
    separate = load_pairs(cyx, DataConfig(patch_size=16))
    np.testing.assert_array_equal(separate[1].lq[0], joint[0].lq[1])  # the same normalisation either way
    zyx = write_pairs(tmp_path / "zyx", (3, 24, 20), "ZYX", n_fields=1)
    stack = load_pairs(zyx, DataConfig(patch_size=16, context_slices=1))
    assert [s.name for s in stack] == ["000_0_z0", "000_0_z1", "000_0_z2"] and sample_channels(stack) == (3, 1)
    np.testing.assert_array_equal(stack[0].lq[0], stack[0].lq[1])  # z=-1 repeats z=0
    np.testing.assert_array_equal(stack[1].lq[2], stack[2].lq[1])  # plane 2 is after plane 1 and at the centre of 2
    with pytest.raises(ConfocalizeError, match="context_slices"):
        load_pairs(cyx, DataConfig(patch_size=16, context_slices=1))
    with pytest.raises(ConfocalizeError, match="joint"):
        sample_channels(joint + separate)


def test_joint_training_makes_a_multichannel_model(tmp_path: Path) -> None:
    write_pairs(tmp_path, (2, 32, 32), "CYX")
    result = tiny_run(tmp_path, channels="joint")
    package = load_package(result.model_dir)
    assert (package.in_channels, package.out_channels, package.context_slices) == (2, 2, 0)
    image = Image(np.random.default_rng(1).random((2, 40, 36), dtype=np.float32), "CYX")
    assert enhance_image(package, image).data.shape == (2, 40, 36)
    assert "context_slices" not in json.loads((result.model_dir / "model.json").read_text())  # 2D packages as before


def test_25d_training_and_enhance_feed_neighbouring_planes(tmp_path: Path) -> None:
    write_pairs(tmp_path, (4, 32, 32), "ZYX")
    result = tiny_run(tmp_path, context_slices=1)
    package = load_package(result.model_dir)
    assert (package.in_channels, package.out_channels, package.context_slices) == (3, 1, 1)
    save_package(package, tmp_path / "copy.zip")
    assert load_package(tmp_path / "copy.zip").context_slices == 1
    stack = np.random.default_rng(2).gamma(2.0, 100.0, (4, 40, 36)).astype(np.float32)
    out = enhance_image(package, Image(stack, "ZYX", z_step=0.5))
    n = package.normalization
    normalised = sampled_normalization(stack, n.low, n.high, n.input_window).apply(stack)[None]
    for z in range(4):
        expected = predict_array(package.generator, network_input(normalised, [0], z, 1))[0]
        np.testing.assert_allclose(out.data[z], expected, atol=1e-6)
    assert enhance_image(package, Image(stack[0], "YX")).data.shape == (40, 36)  # a single plane is its own context


def test_evaluate_scores_each_slice_and_each_stack(tmp_path: Path) -> None:
    pairs = write_pairs(tmp_path, (3, 32, 32), "ZYX", n_fields=2)
    rng = np.random.default_rng(3)
    hq = {p.name: read_image(p.hq).data for p in pairs}
    predictions = {name: h + rng.normal(0, 50, h.shape).astype(np.float32) for name, h in hq.items()}
    result = evaluate_pairs(pairs, predictions, tmp_path / "eval")
    with (tmp_path / "eval" / "metrics_slices.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [f"{p.name}_z{z}" for p in pairs for z in range(3)]
    first = [compare(predictions[pairs[0].name][z], hq[pairs[0].name][z])["plain"]["ssim"] for z in range(3)]
    assert [float(r["generated_vs_hq_ssim"]) for r in rows[:3]] == pytest.approx(first)
    assert result["per_image"][0]["generated_vs_hq"]["ssim"] == pytest.approx(np.mean(first))  # the stack: mean of slices
