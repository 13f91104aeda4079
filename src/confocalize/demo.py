"""The whole chain on the embedded default: simulate -> register -> train -> enhance -> evaluate."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from confocalize.config import DataConfig, ProvenanceConfig, TrainConfig, TrainerConfig
from confocalize.data import read_split
from confocalize.errors import ConfocalizeError
from confocalize.evaluate import evaluate_model
from confocalize.package import load_package
from confocalize.pairs import collect_pairs, match_by_name, register_folder
from confocalize.register import RegistrationOptions
from confocalize.simulate import SimulationParams, simulate, systems
from confocalize.train import fit

StageProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its outputs, its metrics and how long it took."""

    output_dir: Path
    metrics: dict
    metrics_path: Path
    figure_path: Path
    seconds: float


def demo_config(output_dir: Path, pairs_dir: Path, minutes: float | None, seed: int, steps: int | None = None) -> TrainConfig:
    """Training settings of the demo: the default generator, discriminator and recipe, and a
    budget of ``minutes`` or ``steps`` (whichever ends first; a step budget does not depend on the speed or load of the machine)."""
    return TrainConfig(
        output_dir=output_dir / "run",
        data=DataConfig(pairs_dir=pairs_dir, val_fraction=0.2, test_fraction=0.2),
        trainer=TrainerConfig(max_steps=steps, max_time_minutes=minutes, val_every_steps=100, seed=seed, progress_bar=False),
        provenance=ProvenanceConfig(**dict(zip(("lq_system", "hq_system"), systems(SimulationParams()), strict=True))),
    )


def run_demo(
    output_dir: str | os.PathLike = "demo-output",
    minutes: float | None = 5.0,
    n_fields: int = 10,
    seed: int = 0,
    progress: StageProgress | None = None,
    steps: int | None = None,
) -> DemoResult:
    """Run the chain end to end and write ``metrics.json`` and ``figure.png`` into ``output_dir``
    (training for ``minutes`` or ``steps``, whichever ends first)."""
    start = time.perf_counter()
    out = Path(output_dir)
    report = progress or (lambda stage, done, total: None)

    sim_dir = out / "simulated"
    simulate(sim_dir, n_fields=n_fields, seed=seed, progress=lambda d, t: report("simulate", d, t))
    pairs_dir = out / "pairs"
    records = register_folder(
        match_by_name(sim_dir / "lq", sim_dir / "hq"), pairs_dir, RegistrationOptions(),
        progress=lambda d, t: report("register", d, t),
    )
    if sum(r.status == "ok" for r in records) < 3:
        raise ConfocalizeError(f"{pairs_dir}: fewer than 3 simulated pairs registered; see {pairs_dir / 'pairs.json'}")

    report("train", 0, 1)
    shutil.rmtree(out / "run", ignore_errors=True)  # the demo always trains afresh
    result = fit(demo_config(out, pairs_dir, minutes, seed, steps))
    report("train", 1, 1)

    test_names = {p.name for p in read_split(result.output_dir / "split.json")["test"]}
    test_pairs = [p for p in collect_pairs(pairs_dir=pairs_dir) if p.name in test_names]
    metrics = evaluate_model(
        load_package(result.model_dir), test_pairs, out, progress=lambda d, t: report("enhance + evaluate", d, t)
    )
    return DemoResult(out, metrics, out / "metrics.json", out / "figure.png", time.perf_counter() - start)
