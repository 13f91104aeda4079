"""Plain progress lines of a training run, for output that is not a terminal (a log file, a SLURM job).

A live progress bar writes nothing useful into a file; :class:`TrainingLog` prints one line at each
validation, one at least every ``every_s`` seconds in between, and a last one when training ends:
generator step, steps per second, the latest losses, the latest validation PSNR/SSIM and the time
left of the budget.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

import lightning as L
from lightning.pytorch.callbacks import Callback

LOSSES = ("train/g_l1", "train/g_adv", "train/d_loss")


class TrainingLog(Callback):
    """Print progress lines to ``stream`` (stderr by default); rank 0 only."""

    def __init__(self, max_steps: int | None, every_s: float = 120.0, stream: IO[str] | None = None) -> None:
        self.max_steps, self.every_s = max_steps, every_s
        self.stream = stream
        self._last_time = 0.0
        self._last_step = 0

    def _print(self, trainer: L.Trainer, module: Any, event: str) -> None:
        if not trainer.is_global_zero:
            return
        now, step = time.monotonic(), module.generator_steps
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_time, self._last_step = now, step
        metrics = trainer.callback_metrics
        parts = [f"train {event}: step {step}" + (f"/{self.max_steps}" if self.max_steps else ""), f"{rate:.2f} steps/s"]
        parts += [f"{name.split('/')[-1]} {float(metrics[name]):.4g}" for name in LOSSES if name in metrics]
        if "val/psnr" in metrics:
            parts.append(f"val PSNR {float(metrics['val/psnr']):.2f} dB SSIM {float(metrics['val/ssim']):.3f}")
        progress, elapsed = module.progress(), module.train_seconds()
        if 0 < progress < 1:
            parts.append(f"{elapsed * (1 - progress) / progress / 60:.1f} min left of the budget")
        print(", ".join(parts), file=self.stream or sys.stderr, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_time, self._last_step = time.monotonic(), pl_module.generator_steps  # type: ignore[attr-defined]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if time.monotonic() - self._last_time >= self.every_s:
            self._print(trainer, pl_module, "progress")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._print(trainer, pl_module, "validation")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._print(trainer, pl_module, "finished")
