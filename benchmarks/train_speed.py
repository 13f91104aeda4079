"""Training throughput: where a training step's time goes, and what the memory layout changes.

Trains the default recipe (TrainConfig defaults: patches, batch, generator, discriminator) for a
fixed number of generator steps on a smaller copy of W2S (every 4th training field), validating
only at the end, once per setting and repeat, the settings' order alternating between repeats.
A callback times every step inside Lightning (batch start to batch end: forward, backward,
optimizer steps, EMA, logging and the guards) and the gap between steps (the next batch from the
data loader, the epoch ends, checkpoints). The same generator's forward, L1 loss, backward and
Adam step on a batch of the same shape, outside Lightning (the two layouts' steps interleaved), is
the compute floor: the share of a step above it is overhead; the same step of the channels_last
generator under ``torch.compile`` (interleaved with them) and its compile time say what compiling
would buy. Settings:

* ``channels_last``: the default (``trainer.channels_last``: weights in NHWC memory);
* ``nchw``: PyTorch's default layout;
* ``health_every_step``: channels_last, the NaN/collapse checks read back after every step
  (a host synchronisation per step) instead of every ``health_check_every_steps``.

    python benchmarks/train_speed.py               # ~10 min on 2 cores
    python benchmarks/train_speed.py --quick       # a smoke run

Writes ``benchmarks/results/train_speed.json``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from common import print_table, quiet_lightning, write_results
from confocalize.config import DataConfig, GeneratorConfig, TrainConfig, TrainerConfig
from confocalize.package import build_generator
from confocalize.train import Pix2Pix, fit
from quality import _pairs_csv, w2s_track

SETTINGS: dict[str, dict[str, Any]] = {
    "channels_last": {},
    "nchw": {"channels_last": False},
    "health_every_step": {"health_check_every_steps": 1},
}
WARMUP_STEPS = 5  # steps left out of the medians (allocator and thread-pool warm-up)


class StepTimer(Callback):
    """Seconds of every training step (by phase of the recipe) and of every gap between two steps."""

    def __init__(self) -> None:
        self.steps: dict[str, list[float]] = {"fidelity": [], "adversarial": []}
        self.gaps: list[float] = []
        self._start = self._end = 0.0
        self._phase = ""

    def on_train_batch_start(self, trainer: Any, module: Pix2Pix, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._end:
            self.gaps.append(now - self._end)
        self._start = now
        self._phase = "fidelity" if module.progress() < module.cfg.loss.fidelity_fraction else "adversarial"

    def on_train_batch_end(self, trainer: Any, module: Pix2Pix, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._end = time.perf_counter()
        self.steps[self._phase].append(self._end - self._start)


def compute_floors(generator: GeneratorConfig, patch: int, batch: int, repeats: int) -> tuple[dict[str, float], float]:
    """Median seconds of the generator's forward, L1 loss, backward and Adam step on one batch outside
    Lightning, per memory layout and for channels_last under ``torch.compile``, the three interleaved so that
    drift of the machine hits all; and the seconds of the compiled net's first step (compiling it)."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, 1, patch, patch), torch.randn(batch, 1, patch, patch)
    nets = {}
    for layout in ("channels_last", "nchw", "channels_last_compiled"):
        net = build_generator(generator.model_copy(update={"residual": True}))
        net = net if layout == "nchw" else net.to(memory_format=torch.channels_last)
        nets[layout] = (torch.compile(net) if layout.endswith("compiled") else net, torch.optim.Adam(net.parameters(), lr=1e-3))

    def step(layout: str) -> float:
        net, opt = nets[layout]
        start = time.perf_counter()
        loss = torch.nn.functional.l1_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="confocalize-inductor-") as cache, mock.patch.dict(os.environ, {"TORCHINDUCTOR_CACHE_DIR": cache}):
        compile_seconds = step("channels_last_compiled")  # compiled from scratch: no cache of an earlier run
    times: dict[str, list[float]] = {layout: [] for layout in nets}
    for i in range(WARMUP_STEPS + repeats):
        for layout in list(nets)[:: 1 if i % 2 == 0 else -1]:
            times[layout].append(step(layout))
    return {layout: float(np.median(t[WARMUP_STEPS:])) for layout, t in times.items()}, compile_seconds


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="generator steps per run (the recipe's adversarial phase is among them, from loss.fidelity_fraction on)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, the settings' order alternating")
    parser.add_argument("--quick", action="store_true", help="three fields, 12 steps, one repeat")
    args = parser.parse_args(argv)
    steps, repeats = (12, 1) if args.quick else (args.steps, args.repeats)
    quiet_lightning()
    load_at_start = os.getloadavg()
    track = w2s_track(args.quick, every=(4, 4))
    defaults = TrainConfig()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="confocalize-train-speed-") as tmp:
        csv_path = _pairs_csv(track.train, Path(tmp) / "train_pairs.csv")
        for r in range(repeats):
            for name in list(SETTINGS)[:: 1 if r % 2 == 0 else -1]:
                timer = StepTimer()
                cfg = TrainConfig(
                    output_dir=Path(tmp) / f"{name}_{r}", data=DataConfig(pairs_csv=csv_path, val_fraction=0.1, test_fraction=0.0),
                    trainer=TrainerConfig(max_steps=steps, val_every_steps=steps, progress_bar=False, calibrate_uncertainty=0, **SETTINGS[name]),
                )  # fmt: skip
                result = fit(cfg, progress=False, callbacks=[timer])
                runs[name].append({"steps": result.steps, "fit_seconds": result.seconds, "step_seconds": timer.steps, "gap_seconds": timer.gaps,
                                   "load_average": os.getloadavg()})  # fmt: skip
                print(f"{name} #{r}: {result.steps} steps in {result.seconds:.0f} s", flush=True)
    d = defaults.data
    floors, compile_seconds = compute_floors(defaults.generator, d.patch_size, d.batch_size, 6 if args.quick else 40)
    summary = {}
    for name, rs in runs.items():
        fidelity = [t for run in rs for t in run["step_seconds"]["fidelity"][WARMUP_STEPS:]]
        adversarial = [t for run in rs for t in run["step_seconds"]["adversarial"]]
        gaps = [t for run in rs for t in run["gap_seconds"][WARMUP_STEPS:]]
        floor = floors["nchw" if name == "nchw" else "channels_last"]
        fid, gap = _median(fidelity), float(np.mean(gaps)) if gaps else None
        per_step = None if fid is None or gap is None else fid + gap
        summary[name] = {"fidelity_step_s": fid, "adversarial_step_s": _median(adversarial), "gap_mean_s": gap, "gap_median_s": _median(gaps),
                         "gap_max_s": max(gaps) if gaps else None, "compute_floor_s": floor,
                         "share_above_floor": None if per_step is None else 1 - floor / per_step}  # fmt: skip
    rows = [[n, f"{s['fidelity_step_s']:.3f}", f"{s['adversarial_step_s']:.3f}" if s["adversarial_step_s"] else "-", f"{s['gap_mean_s']:.3f}",
             f"{s['compute_floor_s']:.3f}", f"{s['share_above_floor']:.0%}"] for n, s in summary.items()]  # fmt: skip
    print_table(f"Training step seconds ({d.patch_size}² x {d.batch_size}, medians over {repeats} runs of {steps} steps)",
                ["setting", "fidelity step", "adversarial step", "gap (mean)", "fwd+bwd+Adam floor", "above the floor"], rows)  # fmt: skip
    doc = {
        "settings": {"steps": steps, "repeats": repeats, "warmup_steps": WARMUP_STEPS, "patch_size": d.patch_size, "batch_size": d.batch_size,
                     "generator": defaults.generator.model_dump(), "threads": torch.get_num_threads(), "load_average_at_start": load_at_start,
                     "data": f"W2S every 4th training field of 001-080 ({len(track.train)} images), val 10% of them"},
        "summary": summary, "floors": floors, "compile_seconds": compile_seconds, "runs": runs,
    }  # fmt: skip
    print(f"written {write_results('train_speed', doc)}")
    return doc


if __name__ == "__main__":
    main()
