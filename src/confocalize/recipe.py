"""The training recipe as functions of budget progress: learning-rate schedule and adversarial ramp.

A run's budget is ``trainer.max_steps`` generator steps or ``trainer.max_time_minutes`` of wall time,
whichever ends first, so progress is the larger of the two shares spent. Every schedule depends on
progress alone: a run cut short by its time limit still warms up, decays its learning rate to the
end value and completes its adversarial phase, and a resumed run picks up where it stopped (the
step count and Lightning's timer travel in the checkpoint).
"""

from __future__ import annotations

import math

from confocalize.config import LossConfig, OptimConfig


def budget_progress(steps: int, max_steps: int | None, elapsed_s: float = 0.0, max_seconds: float | None = None) -> float:
    """Share of the budget spent, in [0, 1]: the larger of the step share and the time share
    (a budget without ``max_steps`` or ``max_seconds`` has no share of that kind)."""
    shares = [0.0]
    if max_steps:
        shares.append(steps / max_steps)
    if max_seconds:
        shares.append(elapsed_s / max_seconds)
    return min(1.0, max(shares))


def lr_factor(progress: float, optim: OptimConfig) -> float:
    """Multiplier of the peak learning rates at ``progress``: linear warm-up, then cosine decay (or constant)."""
    if optim.schedule == "constant":
        return 1.0
    warmup = optim.warmup_fraction
    if progress < warmup:
        return max(progress / warmup, 0.01)  # the first step already learns a little
    decay = (progress - warmup) / (1.0 - warmup)
    end = optim.final_lr_fraction
    return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, decay)))


def adversarial_ramp(progress: float, loss: LossConfig) -> float:
    """Share of ``adv_weight`` in force at ``progress``: 0 in the fidelity phase, then a linear ramp to 1."""
    if loss.adv_weight == 0 or progress < loss.fidelity_fraction:
        return 0.0
    if loss.adv_ramp_fraction == 0:
        return 1.0
    return min(1.0, (progress - loss.fidelity_fraction) / loss.adv_ramp_fraction)


def ema_decay(decay: float, n_updates: int) -> float:
    """EMA decay after ``n_updates`` averaged updates: ``min(decay, (1 + n) / (10 + n))``.

    Early on the average follows the weights closely (a short run is not dominated by its random
    initialisation); later it averages over about ``1 / (1 - decay)`` steps.
    """
    return min(decay, (1.0 + n_updates) / (10.0 + n_updates))
