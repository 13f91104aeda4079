"""Fine-tuning a partner's model against training from scratch, with few training fields and a short budget.

The cooperative-network case: an institute receives a model trained elsewhere and has only a few
pairs of its own. For 1, 2 and 4 (B: 3) training fields (plus one validation field, which picks the
exported checkpoint), each of the same length (``--minutes``, default recipe), we train

    scratch     random weights (``TrainConfig`` defaults)
    finetune    ``train --init-from PARENT``: the parent's generator, a fresh discriminator, the recipe's
                L1 phase first

and score both, the parent as it is, and raw LQ on the same held-out test fields.

B. confocal -> STED (Deep-DSCM). The parent is a partner imaging microtubules: trained here for
   ``--parent-minutes`` on Micro 1-5. The user images mitochondria: fine-tuning fields from Mito 2-5
   (at most 3 training fields and a validation field: only four Mito fields are not test fields),
   test fields Mito 0 and 1.
C. wide-field -> confocal, simulated. The parent is the built-in ``sim-widefield-confocal`` (NA 1.3
   wide-field). The user's wide-field has an NA 1.0 objective and a third of the photons; the objects
   are W2S HQ images of test fields 081-120, which no built-in model saw: fine-tuning fields from
   081-097, test fields 101-116 (scored against the noise-free confocal rendering on the LQ grid).

    python benchmarks/finetune.py                       # ~75 min on 2 cores (5 min per model)
    python benchmarks/finetune.py --minutes 0.2 --parent-minutes 0.2 --quick   # smoke run

Writes ``benchmarks/results/finetune.json`` and ``benchmarks/results/finetune_curves.png``
(validation PSNR against training seconds of every run). Metrics: plain PSNR/SSIM, each image
percentile-normalised (``metrics.NORMALISATION``), data_range 1, medians over test images.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import DATA, RESULTS, learning_curve, median_scores, print_table, quiet_lightning, write_results  # noqa: E402
from confocalize.config import DataConfig, TrainConfig, TrainerConfig  # noqa: E402
from confocalize.io import read_image  # noqa: E402
from confocalize.metrics import NORMALISATION  # noqa: E402
from confocalize.package import ModelPackage, load_package  # noqa: E402
from confocalize.pairs import PairPaths  # noqa: E402
from confocalize.predict import enhance_image  # noqa: E402
from confocalize.train import fit  # noqa: E402
from quality import SIM_PARAMS, _pairs_csv, clean_test_pairs, dscm_pair, registered_pairs, render_objects  # noqa: E402

FIELDS = {"B": (1, 2, 3), "C": (1, 2, 4)}  # training fields per run (B: only four Mito fields are not test fields)
PARENT_C = "sim-widefield-confocal"
USER_OPTICS = SIM_PARAMS.model_copy(update={"lq_na": 1.0, "lq_peak_photons": SIM_PARAMS.lq_peak_photons / 3})
W2S_HQ = DATA / "w2s_widefield" / "avg400"


def track_b(quick: bool) -> tuple[list[PairPaths], list[PairPaths], list[PairPaths]]:
    """Parent training pairs (Micro), the user's fine-tuning pool (Mito 2-5) and test pairs (Mito 0, 1)."""
    parent = [dscm_pair(f"Micro_{i}") for i in ((1, 2) if quick else range(1, 6))]
    return parent, [dscm_pair(f"Mito_{i}") for i in range(2, 6)], [dscm_pair(f"Mito_{i}") for i in ((0,) if quick else (0, 1))]


def track_c(work: Path, quick: bool) -> tuple[list[PairPaths], list[PairPaths]]:
    """The user's simulated pairs (``USER_OPTICS``): the registered fine-tuning pool and the test pairs."""
    def objects(fields: range) -> list[tuple[str, PairPaths]]:
        return [("A", PairPaths(f"{f:03d}_0", f"{f:03d}", W2S_HQ / f"{f:03d}_0.png", W2S_HQ / f"{f:03d}_0.png")) for f in fields]

    root = work / "C"
    render_objects(objects(range(81, 98, 4)), root / "pool", target="hq", seed=[1, 0], params=USER_OPTICS)
    render_objects(objects(range(101, 104 if quick else 117, 3)), root / "test", target="clean", seed=[1, 1], params=USER_OPTICS)
    _, pool = registered_pairs(root / "pool", root / "pairs", DataConfig().patch_size)
    return pool, clean_test_pairs(root / "test")


def train(pairs: list[PairPaths], out: Path, minutes: float, init_from: Path | str | None, val_every: int) -> dict[str, Any]:
    """Default recipe on ``pairs`` for ``minutes``, one field held out for validation; the run's facts."""
    n_fields = len({p.field for p in pairs})
    cfg = TrainConfig(
        output_dir=out, init_from=None if init_from is None else str(init_from),
        data=DataConfig(pairs_csv=_pairs_csv(pairs, out.parent / f"{out.name}_pairs.csv"), val_fraction=1 / n_fields, test_fraction=0.0),
        trainer=TrainerConfig(max_steps=None, max_time_minutes=minutes, val_every_steps=val_every, progress_bar=False),
    )  # fmt: skip
    result = fit(cfg, progress=False)
    return {"model_dir": result.model_dir, "steps": result.steps, "seconds": result.seconds, "split": result.split,
            "curve": learning_curve(out), "load_average": os.getloadavg()}  # fmt: skip


def enhanced(package: ModelPackage, test: list[PairPaths]) -> dict[str, Any]:
    """Median PSNR/SSIM of ``package`` on the test pairs."""
    return median_scores({p.name: enhance_image(package, read_image(p.lq)).data for p in test}, test)


def run_track(name: str, parent: Path | str, pool: list[PairPaths], test: list[PairPaths], args: argparse.Namespace,
              work: Path) -> dict[str, Any]:  # fmt: skip
    """Scratch and fine-tuned runs for each number of training fields; parent as is; raw LQ."""
    fields = sorted({p.field for p in pool})
    result: dict[str, Any] = {
        "parent": str(parent), "pool_fields": fields, "test_fields": sorted({p.field for p in test}),
        "lq": median_scores({p.name: read_image(p.lq).data for p in test}, test),
        "parent_as_is": enhanced(load_package(parent), test), "runs": {},
    }  # fmt: skip
    for n in [n for n in FIELDS[name] if n < len(fields)]:
        chosen = fields[: n + 1]  # n training fields and one validation field
        for init in ("scratch", "finetune"):
            run = train([p for p in pool if p.field in chosen], work / name / f"{init}_{n}", args.minutes,
                        parent if init == "finetune" else None, args.val_every)  # fmt: skip
            run["test"] = enhanced(load_package(run.pop("model_dir")), test)
            result["runs"][f"{init}_{n}"] = {"init": init, "train_fields": n, **run}
            print(f"track {name} {init} {n} field(s): {run['steps']} steps, test PSNR {run['test']['psnr']:.2f} SSIM {run['test']['ssim']:.3f}",
                  flush=True)  # fmt: skip
    return result


def plot(tracks: dict[str, Any], path: Path) -> Path:
    """Validation PSNR against training seconds: fine-tuned (solid) and scratch (dashed), per number of fields."""
    fig, axes = plt.subplots(1, len(tracks), figsize=(6 * len(tracks), 4), squeeze=False)
    for ax, (name, track) in zip(axes[0], tracks.items(), strict=True):
        for key, run in track["runs"].items():
            curve = run["curve"]
            style = "-" if run["init"] == "finetune" else "--"
            color = f"C{FIELDS[name].index(run['train_fields'])}"
            ax.plot([c["seconds"] / 60 for c in curve], [c["psnr"] for c in curve], style, color=color, marker=".", label=key)
        ax.set(title=f"track {name}: validation field of each run", xlabel="training minutes", ylabel="validation PSNR (dB)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train the B parent, run both tracks, print the table, write the JSON and the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time of every scratch and fine-tuned run")
    parser.add_argument("--parent-minutes", type=float, default=10.0, help="training wall time of track B's parent")
    parser.add_argument("--val-every", type=int, default=50, help="validation (a curve point) every this many generator steps")
    parser.add_argument("--tracks", default="BC")
    parser.add_argument("--quick", action="store_true", help="fewer parent and test fields")
    parser.add_argument("--work-dir", type=Path, default=None, help="folder for the runs (default: temporary)")
    args = parser.parse_args(argv)
    quiet_lightning()
    start, load_at_start = time.perf_counter(), os.getloadavg()
    tracks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="confocalize-finetune-") as tmp:
        work = args.work_dir or Path(tmp)
        if "B" in args.tracks:
            parent_pairs, pool, test = track_b(args.quick)
            parent = train(parent_pairs, work / "B" / "parent", args.parent_minutes, None, args.val_every)
            tracks["B"] = run_track("B", parent["model_dir"], pool, test, args, work)
            tracks["B"]["parent_run"] = {k: v for k, v in parent.items() if k != "model_dir"}
        if "C" in args.tracks:
            tracks["C"] = run_track("C", PARENT_C, *track_c(work, args.quick), args, work)
    rows = []
    for name, track in tracks.items():
        rows += [[name, "raw LQ", "", "", f"{track['lq']['psnr']:.2f}", f"{track['lq']['ssim']:.3f}"],
                 [name, "parent as is", "", "", f"{track['parent_as_is']['psnr']:.2f}", f"{track['parent_as_is']['ssim']:.3f}"]]  # fmt: skip
        rows += [[name, r["init"], r["train_fields"], r["steps"], f"{r['test']['psnr']:.2f}", f"{r['test']['ssim']:.3f}"] for r in track["runs"].values()]
    print_table(f"fine-tuning vs scratch, {args.minutes:g} min per run", ["track", "model", "fields", "steps", "PSNR", "SSIM"], rows)
    doc = {
        "settings": {"minutes": args.minutes, "parent_minutes": args.parent_minutes, "val_every": args.val_every, "quick": args.quick,
                     "user_optics_c": {"lq_na": USER_OPTICS.lq_na, "lq_peak_photons": USER_OPTICS.lq_peak_photons},
                     "normalisation": NORMALISATION, "data_range": 1.0, "load_average_at_start": load_at_start},
        "tracks": tracks, "figure": plot(tracks, RESULTS / "finetune_curves.png"), "seconds": time.perf_counter() - start,
    }  # fmt: skip
    print(f"written {write_results('finetune', doc)}")
    return doc


if __name__ == "__main__":
    main()
