"""The training recipe: budget progress, schedules, EMA export, fidelity phase, signal-weighted patches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from confocalize.config import LossConfig, OptimConfig
from confocalize.data import PairedPatches, PairImages, PatchOrigins
from confocalize.errors import ConfocalizeError
from confocalize.package import load_package
from confocalize.recipe import adversarial_ramp, budget_progress, ema_decay, lr_factor
from confocalize.train import fit
from test_train import logged, tiny_config, write_tiny_pairs


def test_progress_is_the_larger_share_of_steps_and_time() -> None:
    assert budget_progress(50, 100) == 0.5
    assert budget_progress(10, 100, elapsed_s=30, max_seconds=60) == 0.5
    assert budget_progress(90, 100, elapsed_s=30, max_seconds=60) == 0.9
    assert budget_progress(200, 100) == 1.0
    assert budget_progress(10**6, None, elapsed_s=15, max_seconds=60) == 0.25  # a time budget without a step cap


def test_learning_rate_warms_up_then_decays_to_its_end_value() -> None:
    optim = OptimConfig(warmup_fraction=0.1, final_lr_fraction=0.05)
    factors = [lr_factor(p, optim) for p in np.linspace(0, 1, 101)]
    peak = int(np.argmax(factors))
    assert factors[0] < 0.05 and factors[peak] == pytest.approx(1.0) and peak == 10
    assert all(a <= b for a, b in zip(factors[:peak], factors[1 : peak + 1], strict=True))  # rising
    assert all(a >= b for a, b in zip(factors[peak:], factors[peak + 1 :], strict=False))  # then falling
    assert factors[-1] == pytest.approx(0.05)
    assert lr_factor(0.7, OptimConfig(schedule="constant")) == 1.0


def test_adversarial_weight_is_off_in_the_fidelity_phase_then_ramps_in() -> None:
    loss = LossConfig(fidelity_fraction=0.5, adv_ramp_fraction=0.2)
    assert [adversarial_ramp(p, loss) for p in (0.0, 0.49, 0.5, 0.6, 0.7, 1.0)] == pytest.approx([0, 0, 0, 0.5, 1, 1])
    assert adversarial_ramp(0.9, LossConfig(adv_weight=0)) == 0
    assert adversarial_ramp(0.0, LossConfig(fidelity_fraction=0, adv_ramp_fraction=0)) == 1


def test_ema_decay_warms_up() -> None:
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 90) == pytest.approx(0.91)
    assert ema_decay(0.999, 10**6) == 0.999


def _sample(hq: np.ndarray) -> PairImages:
    return PairImages("a", "a", hq[None].astype(np.float32), hq[None].astype(np.float32))


def test_patch_origins_keep_only_patches_with_signal() -> None:
    hq = np.zeros((40, 50), dtype=np.float32)
    hq[30, 7] = 1.0  # one bright pixel: only patches covering it qualify
    origins = PatchOrigins([_sample(hq)], patch_size=8, signal=0.4)
    mask = origins.masks[0]
    brute = np.array([[hq[y : y + 8, x : x + 8].max() >= 0.4 for x in range(43)] for y in range(33)])
    np.testing.assert_array_equal(mask, brute)
    rng = np.random.default_rng(0)
    for _ in range(50):
        _, y, x = origins.draw(rng)
        assert y <= 30 < y + 8 and x <= 7 < x + 8
    patches = PairedPatches([_sample(hq)], 8, 20, augment=False, origins=origins)
    assert all(patches[i][1].max() == 1.0 for i in range(len(patches)))


def test_patch_origins_prefer_images_with_signal_and_refuse_all_background() -> None:
    empty, full = np.zeros((16, 16), np.float32), np.ones((16, 16), np.float32)
    origins = PatchOrigins([_sample(empty), _sample(full)], patch_size=8, signal=0.4)
    assert origins.weights.tolist() == [0.0, 1.0]
    assert PatchOrigins([_sample(empty), _sample(full)], patch_size=8).weights.tolist() == [0.5, 0.5]
    with pytest.raises(ConfocalizeError, match="lower data.patch_signal"):
        PatchOrigins([_sample(empty)], patch_size=8, signal=0.4)


def test_fidelity_phase_then_gan_and_the_package_holds_the_ema_weights(tmp_path: Path) -> None:
    write_tiny_pairs(tmp_path)
    config = tiny_config(tmp_path, "run", trainer={"max_steps": 6, "val_every_steps": 3}, loss={"fidelity_fraction": 0.5})
    result = fit(config)
    rows = [r for r in logged(tmp_path / "run", 0) if r["train/g_l1"]]
    assert [bool(r["train/d_loss"]) for r in rows] == [False] * 3 + [True] * 3  # no discriminator in the first half
    lrs = [float(r["train/lr"]) for r in rows]
    assert lrs[-1] < lrs[1] <= config.optim.lr  # cosine decay over the budget
    val = [r for r in logged(tmp_path / "run", 0) if r["val/ssim"]]
    assert [float(r["time/generator_steps"]) for r in val] == [3, 6] and all(float(r["time/train_seconds"]) > 0 for r in val)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    exported = load_package(result.model_dir).generator.state_dict()
    name = "head.weight"
    assert torch.equal(exported[name], ckpt[f"generator_ema.module.{name}"])
    assert not torch.equal(exported[name], ckpt[f"generator.{name}"])  # the average, not the last weights


def test_resume_refuses_a_config_that_adds_or_drops_the_ema(tmp_path: Path) -> None:
    write_tiny_pairs(tmp_path)
    fit(tiny_config(tmp_path, "run", loss={"adv_weight": 0}))
    changed = tiny_config(tmp_path, "run", loss={"adv_weight": 0}, optim={"ema_decay": 0}, trainer={"max_steps": 5})
    with pytest.raises(ConfocalizeError, match="other generator/discriminator settings"):
        fit(changed, resume=tmp_path / "run")
