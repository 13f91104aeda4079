"""Training end to end on a tiny pairs set: run folder, L1-only mode, resume, config errors."""

from __future__ import annotations

import csv
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from confocalize.config import TrainConfig, parse_config
from confocalize.errors import ConfocalizeError
from confocalize.guards import StopRequest
from confocalize.io import write_image
from confocalize.package import load_package
from confocalize.train import fit, ssim_torch


def write_tiny_pairs(root: Path, n_fields: int = 4, per_field: int = 2, size: int = 40) -> None:
    """LQ = blurred + noisy HQ, W2S-style names (``000_0``) in ``root/lq`` and ``root/hq``."""
    rng = np.random.default_rng(0)
    for f in range(n_fields):
        for i in range(per_field):
            hq = gaussian_filter(rng.random((size, size)), 1.0) * 1000
            lq = gaussian_filter(hq, 2.0) + rng.normal(0, 5, hq.shape)
            write_image(root / "lq" / f"{f:03d}_{i}.tif", lq.astype(np.float32), "YX", pixel_size=0.2)
            write_image(root / "hq" / f"{f:03d}_{i}.tif", hq.astype(np.float32), "YX", pixel_size=0.2)


def tiny_config(root: Path, out: str, **sections: dict[str, Any]) -> TrainConfig:
    """A tiny model for a few steps; ``sections`` update the defaults section by section."""
    raw: dict[str, dict[str, Any]] = {
        "data": {"lq_dir": str(root / "lq"), "hq_dir": str(root / "hq"), "field_pattern": r"^(\d+)_",
                 "patch_size": 32, "batch_size": 2, "patches_per_epoch": 4},
        "generator": {"depth": 2, "base_channels": 4},
        "discriminator": {"base_channels": 4, "n_layers": 2},
        "trainer": {"max_steps": 3, "val_every_steps": 2, "log_every_steps": 1, "progress_bar": False},
    }  # fmt: skip
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_config({"output_dir": str(root / out), **raw})


def logged(run: Path, version: int) -> list[dict[str, str]]:
    with (run / "logs" / "csv" / f"version_{version}" / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    root = tmp_path_factory.mktemp("pairs")
    write_tiny_pairs(root)
    return root, fit(tiny_config(root, "gan", loss={"fidelity_fraction": 0.5}))  # the adversarial phase begins within the 3 steps


def test_fit_writes_the_run_folder(gan_run: tuple[Path, Any]) -> None:
    root, result = gan_run
    run = root / "gan"
    assert result.output_dir == run and result.steps == 3
    for name in ("config.yaml", "split.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "logs/csv/version_0/metrics.csv"):
        assert (run / name).is_file(), name
    split = json.loads((run / "split.json").read_text())
    assert [len(split[s]["fields"]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert result.split["test"]["fields"] == split["test"]["fields"]
    rows = logged(run, 0)
    assert {"train/g_l1", "train/g_adv", "train/d_loss", "val/ssim", "val/psnr"} <= set(rows[0])
    assert [int(r["step"]) for r in rows if r["train/g_l1"]] == [0, 1, 2]
    assert sum(1 for r in rows if r["val/ssim"]) == 2  # after step 2 and at the end (step 3)
    package = load_package(result.model_dir)
    assert package.metrics["val"]["ssim"] == pytest.approx(result.best_val["ssim"])
    assert result.best_val["ssim"] == pytest.approx(max(float(r["val/ssim"]) for r in rows if r["val/ssim"]))
    assert package.lq_pixel_size == pytest.approx(0.2)
    assert package.provenance.training_data.split["val"]["fields"] == split["val"]["fields"]
    assert package.generator(torch.zeros(1, 1, 24, 24)).shape == (1, 1, 24, 24)
    # residual "auto" was decided from the pairs (LQ = a blur of HQ: not the target up to noise) and recorded
    assert package.generator_config.residual is False
    assert "residual: false" in (run / "config.yaml").read_text()
    # enhance --uncertainty comes calibrated, on the validation images (never test ones)
    val_names = [p["name"] for p in split["val"]["pairs"]]
    assert package.uncertainty is not None and package.uncertainty.n_images == len(val_names)
    assert all(name in package.uncertainty.data for name in val_names)


def test_last_checkpoint_follows_every_validation_even_without_a_new_best(tmp_path: Path) -> None:
    """A residual net whose zero head cannot move (rate 1e-30) returns its input: no validation beats the first,
    and last.ckpt must still move on."""
    write_tiny_pairs(tmp_path)
    config = tiny_config(tmp_path, "flat", generator={"depth": 2, "base_channels": 4, "residual": True}, loss={"adv_weight": 0},
                         optim={"lr": 1e-30, "ema_decay": 0}, trainer={"max_steps": 3, "val_every_steps": 1})  # fmt: skip
    fit(config)
    steps = {name: torch.load(tmp_path / "flat" / "checkpoints" / name, weights_only=True)["global_step"] for name in ("last.ckpt", "best.ckpt")}
    assert steps == {"last.ckpt": 3, "best.ckpt": 1}


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # the run folder was copied
def test_resume_continues_to_max_steps(gan_run: tuple[Path, Any]) -> None:
    root, _ = gan_run
    shutil.copytree(root / "gan", root / "resumed")
    config = tiny_config(root, "resumed", trainer={"max_steps": 5})
    with pytest.raises(ConfocalizeError, match="already holds a training run"):
        fit(config)
    result = fit(config, resume=root / "resumed")
    assert result.steps == 5
    assert torch.load(root / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10  # G and D steps
    validated = [float(r["time/generator_steps"]) for r in logged(root / "resumed", 1) if r["val/ssim"]]
    assert validated == [4.0, 5.0]  # continued after step 3, not from an earlier checkpoint


def test_resume_refuses_foreign_or_corrupt_checkpoints(gan_run: tuple[Path, Any]) -> None:
    root, _ = gan_run
    wider = tiny_config(root, "gan", generator={"base_channels": 8})
    with pytest.raises(ConfocalizeError, match="other generator/discriminator settings"):
        fit(wider, resume=root / "gan" / "checkpoints" / "last.ckpt")
    broken = root / "broken.ckpt"
    broken.write_bytes((root / "gan" / "checkpoints" / "last.ckpt").read_bytes()[:500])
    with pytest.raises(ConfocalizeError, match="broken.ckpt: not a readable checkpoint"):
        fit(wider, resume=broken)


def test_l1_only_mode_has_no_discriminator(tmp_path: Path) -> None:
    write_tiny_pairs(tmp_path, n_fields=3, per_field=1)
    config = tiny_config(tmp_path, "l1", loss={"adv_weight": 0.0, "ssim_weight": 1.0}, trainer={"max_steps": 2})
    result = fit(config)
    assert result.steps == 2
    state = torch.load(tmp_path / "l1" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state and not any(k.startswith("discriminator.") for k in state)
    rows = logged(tmp_path / "l1", 0)
    assert "train/g_ssim" in rows[0] and "train/d_loss" not in rows[0]
    load_package(result.model_dir)


def test_unknown_config_key_is_a_one_line_error() -> None:
    with pytest.raises(ConfocalizeError, match=r"trainer\.max_stepz.*unknown key"):
        parse_config({"trainer": {"max_stepz": 3}})


def test_torch_ssim_matches_scikit_image() -> None:
    rng = np.random.default_rng(0)
    a = gaussian_filter(rng.random((48, 48)), 2)
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    ours = ssim_torch(torch.tensor(a)[None, None], torch.tensor(b)[None, None]).item()
    reference = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ours == pytest.approx(reference, abs=1e-6)


def test_fit_needs_validation_fields(tmp_path: Path) -> None:
    with pytest.raises(ConfocalizeError, match="val_fraction"):
        fit(tiny_config(tmp_path, "run", data={"val_fraction": 0.0}))


def test_a_stop_request_ends_the_run_after_the_current_step_and_exports(tmp_path: Path) -> None:
    write_tiny_pairs(tmp_path)
    stop = threading.Event()
    stop.set()  # pressed before the first step ends
    result = fit(tiny_config(tmp_path, "stopped", trainer={"max_steps": 50}), callbacks=[StopRequest(stop)])
    assert result.steps == 1
    assert load_package(result.model_dir).metrics["val"]["ssim"] == pytest.approx(result.best_val["ssim"])


class _MemoryFormats(Callback):
    """Records, at every training batch, whether all 4D weights of the generator and its EMA copy are channels_last."""

    def __init__(self) -> None:
        self.seen: list[bool] = []

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
        weights = [p for p in module.parameters() if p.dim() == 4 and p.shape[1] > 1]  # one channel: both layouts coincide
        self.seen.append(all(w.is_contiguous(memory_format=torch.channels_last) for w in weights))


def test_channels_last_changes_the_memory_layout_not_the_model(tmp_path: Path) -> None:
    write_tiny_pairs(tmp_path, n_fields=3, per_field=1)
    formats = {layout: _MemoryFormats() for layout in (True, False)}
    results = {layout: fit(tiny_config(tmp_path, f"channels_last_{layout}", generator={"base_channels": 8},
                                       trainer={"max_steps": 2, "channels_last": layout}), callbacks=[formats[layout]])
               for layout in (True, False)}  # fmt: skip
    assert formats[True].seen == [True, True] and formats[False].seen == [False, False]
    ours, theirs = (load_package(results[layout].model_dir).generator.state_dict() for layout in (True, False))
    for name, value in theirs.items():  # same seed, same data: the layout must not change what is learned
        torch.testing.assert_close(ours[name], value, rtol=1e-4, atol=1e-5, msg=name)
