"""Ship the quality benchmark's default models as built-in packages (``confocalize models``).

Each track's default model of a finished ``quality.py --work-dir DIR`` run is copied into
``src/confocalize/models/NAME/`` with what a user needs to judge it: the two systems, the training
data and its licence, the training run (steps, minutes, hardware, the benchmark command) and its
held-out scores from ``benchmarks/results/quality.json`` beside the best classical method's.

    python benchmarks/ship_models.py --work-dir /tmp/qwork
    python benchmarks/ship_models.py --work-dir /tmp/qwork --tracks BC   # keep w2s-denoise
    python benchmarks/ship_models.py --w2s-run /tmp/tbwork/run   # w2s-denoise from train_budget.py's 30-min run

``--w2s-run`` ships the model of a ``train_budget.py --work-dir DIR`` run (``DIR/run``) as ``w2s-denoise``
instead, with its scores from ``benchmarks/results/train_budget.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from common import DEFAULT, REPO, RESULTS
from confocalize.config import SystemDescription
from confocalize.package import BUILTIN_DIR, TrainingData, TrainingRun, load_package, save_package
from confocalize.simulate import SimulationParams, systems

SIM = SimulationParams()
BUILTINS: dict[str, dict[str, Any]] = {
    "A": {
        "name": "w2s-denoise",
        "lq": SystemDescription(modality="wide-field, single frame", notes="W2S (Zhou et al. 2020), 8-bit export, per-image contrast"),
        "hq": SystemDescription(modality="wide-field, 400-frame average"),
        "data": "W2S avg1 -> avg400 (shared/data/w2s_widefield)",
        "licence": "none stated by the W2S authors (IVRL/w2s); the 8-bit copy comes from a GPL-3.0 repository",
    },
    "B": {
        "name": "dscm-confocal-sted",
        "lq": SystemDescription(modality="confocal", notes="Deep-DSCM demo data (Chen et al.), 8-bit"),
        "hq": SystemDescription(modality="STED"),
        "data": "Deep-DSCM confocal -> STED demo fields (shared/data/dscm_confocal_sted)",
        "licence": "MIT (Deep-DSCM, Copyright (c) 2025 Qinglin Chen)",
    },
    "C": {
        "name": "sim-widefield-confocal",
        "lq": systems(SIM)[0],
        "hq": systems(SIM)[1],
        "data": "pairs simulated from the HQ images of W2S and Deep-DSCM training fields, registered by confocalize register",
        "licence": "derived from W2S (none stated) and Deep-DSCM (MIT) images",
    },
}  # fmt: skip


def scores(track: dict[str, Any]) -> dict[str, Any]:
    """The default model's held-out medians beside the raw LQ and the best classical method's."""
    methods = track["methods"]
    best = track["comparisons"]["best_classical"]["psnr"][0]
    pick = {"default": methods[DEFAULT]["median"], "raw LQ": methods["lq"]["median"], best: methods[best]["median"]}
    n = track["n_test_images"]
    return {f"{who} (median of {n} test images)": f"PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}" for who, m in pick.items()}


def ship(work: Path, quality: dict[str, Any], tracks: str = "ABC") -> list[Path]:
    """Write the built-in packages of ``tracks`` from the run in ``work``; return their folders."""
    written = []
    settings, machine = quality["settings"], quality["machine"]
    for t, spec in BUILTINS.items():
        if t not in tracks:
            continue
        track = quality["tracks"][t]
        package = load_package(work / t / "runs" / DEFAULT / "model")
        info = track["learned"][DEFAULT]
        hardware = machine["gpu"] or f"{machine['logical_cores']}-core {machine['cpu']} (torch {machine['torch']})"
        command = (f"python benchmarks/quality.py --minutes-per-model {settings['minutes_per_model']:g} "
                   f"--w2s-every {settings['w2s_every_nth_field']['train']} {settings['w2s_every_nth_field']['test']} "
                   f"--val-every {settings['val_every']} (commit {track.get('commit', quality['commit'])})")  # fmt: skip
        old = package.provenance.training_data
        data = TrainingData(source={"data": spec["data"]}, n_pairs=old.n_pairs, n_fields=old.n_fields, split=old.split,
                            lq_pixel_sizes_um=old.lq_pixel_sizes_um) if old else None  # fmt: skip
        package.provenance = package.provenance.model_copy(update={
            "lq_system": spec["lq"], "hq_system": spec["hq"], "training_data": data, "data_licence": spec["licence"],
            "training": TrainingRun(steps=info["steps"], seconds=info["fit_seconds"], hardware=hardware, command=command,
                                    scores=scores(track)),
        })  # fmt: skip
        target = BUILTIN_DIR / spec["name"]
        shutil.rmtree(target, ignore_errors=True)
        written.append(save_package(package, target))
        print(f"{spec['name']}: {target.relative_to(REPO)}, sha256 {load_package(target).sha256}")
    return written


def ship_w2s_run(run: Path, budget: dict[str, Any]) -> Path:
    """Write ``w2s-denoise`` from the run folder of ``train_budget.py`` (``budget``: its results)."""
    spec, package = BUILTINS["A"], load_package(run / "model")
    medians = budget["medians"]
    scores = {f"{who} (median of {group['n_images']} {label})": f"PSNR {group[who]['psnr']:.2f} dB, SSIM {group[who]['ssim']:.3f}"
              for label, group in (("test images, fields 081-120", medians["all"]), ("test images, BM3D subset", medians["bm3d_subset"]))
              for who in group if who != "n_images"}  # fmt: skip
    run_info = package.provenance.training
    assert run_info is not None, "train records its run"
    command = f"python benchmarks/train_budget.py (commit {budget['commit']}): confocalize {budget['command']}"
    data = package.provenance.training_data
    package.provenance = package.provenance.model_copy(update={
        "lq_system": spec["lq"], "hq_system": spec["hq"], "data_licence": spec["licence"],
        "training_data": data.model_copy(update={"source": {"data": f"{spec['data']}, fields 001-080"}}) if data else None,
        "training": run_info.model_copy(update={"command": command, "scores": scores}),
    })  # fmt: skip
    target = BUILTIN_DIR / spec["name"]
    shutil.rmtree(target, ignore_errors=True)
    save_package(package, target)
    print(f"{spec['name']}: {target.relative_to(REPO)}, sha256 {load_package(target).sha256}")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--work-dir", type=Path, help="the --work-dir of a finished quality.py run")
    source.add_argument("--w2s-run", type=Path, help="the run folder of a finished train_budget.py run")
    parser.add_argument("--tracks", default="ABC", help="with --work-dir: ship these tracks' models only (e.g. BC keeps w2s-denoise)")
    args = parser.parse_args(argv)
    if args.w2s_run:
        ship_w2s_run(args.w2s_run, json.loads((RESULTS / "train_budget.json").read_text()))
    else:
        ship(args.work_dir, json.loads((RESULTS / "quality.json").read_text()), args.tracks)


if __name__ == "__main__":
    main()
