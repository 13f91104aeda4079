"""The new user's run: ``confocalize train`` with default settings for a wall-time budget on W2S.

Issue 11's target, tried as a user would: the command line (not the Python API), default settings,
``--minutes 30`` on 2 cores, trained on W2S fields 001-080 (all channels; the CLI holds out its own
validation fields among them), then scored on the official test fields 081-120 against a Gaussian
and BM3D whose parameters are tuned on training images only (``confocalize.baselines``). BM3D is
slow (seconds per image), so it is scored on a subset: every ``--bm3d-every``-th test field, one
channel of each, the channels taken in turn (W2S's three channels differ: the model wins on channel 0
and loses SSIM on channel 2 in the quality run, so a one-channel subset would flatter or wrong it);
the model and the Gaussian are scored on that subset too, and on every test image. On the subset the
model is also compared with BM3D image by image (median of the differences, images won).

    python benchmarks/train_budget.py                     # ~40 min on 2 cores
    python benchmarks/train_budget.py --minutes 0.3 --test-every 20 --quick   # smoke run

Writes ``benchmarks/results/train_budget.json`` (settings, load average, steps, learning curve,
medians). Metrics: plain PSNR/SSIM, each image percentile-normalised (``metrics.NORMALISATION``),
data_range 1, medians over images.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common import learning_curve, machine, median_scores, per_image_scores, print_table, write_results
from confocalize import baselines
from confocalize.io import read_image
from confocalize.metrics import NORMALISATION
from confocalize.pairs import PairPaths
from confocalize.package import load_package
from confocalize.predict import enhance_image
from quality import TUNING_IMAGES, TUNING_MAX_SIZE, _pairs_csv, classical_methods, paired, tuning_pairs, tuning_subset, w2s_track


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train through the CLI, enhance the test fields, score against tuned Gaussian and BM3D."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="confocalize train --minutes")
    parser.add_argument("--test-every", type=int, default=1, help="every n-th test field of 081-120")
    parser.add_argument("--bm3d-every", type=int, default=2, help="BM3D on one image of every n-th scored test field (channels in turn)")
    parser.add_argument("--quick", action="store_true", help="training fields 001-003 only, small tuning grids")
    parser.add_argument("--work-dir", type=Path, default=None, help="folder for the run (default: temporary)")
    args = parser.parse_args(argv)
    track = w2s_track(args.quick)
    test = [p for p in track.test if (int(p.field) - 81) % args.test_every == 0]
    subset = bm3d_subset(test, args.bm3d_every)
    with tempfile.TemporaryDirectory(prefix="confocalize-train-budget-") as tmp:
        work = args.work_dir or Path(tmp)
        csv_path = _pairs_csv(track.train, work / "train_pairs.csv")
        run = work / "run"
        command = [str(Path(sys.executable).with_name("confocalize")), "train", "--pairs-csv", str(csv_path),
                   "--minutes", f"{args.minutes:g}", "-o", str(run)]  # fmt: skip
        before = machine()
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        train_wall = time.perf_counter() - start
        load_after = os.getloadavg()
        package = load_package(run / "model")
        model = {p.name: enhance_image(package, read_image(p.lq)).data for p in test}
        tuning = tuning_pairs(track.train, 2 if args.quick else TUNING_IMAGES, TUNING_MAX_SIZE)
        methods = classical_methods(None, args.quick)
        subsets = {name: tuning_subset(name, tuning, args.quick) for name in ("gaussian", "bm3d")}
        gaussian, bm3d = (baselines.tune(*methods[name], pairs) for name, pairs in subsets.items())
        lq = {p.name: read_image(p.lq).data for p in test}
        blurred = {n: baselines.gaussian(x, **gaussian.params) for n, x in lq.items()}
        denoised = {p.name: baselines.bm3d(lq[p.name], **bm3d.params) for p in subset}
        curve = learning_curve(run)
        provenance = package.provenance.training
    on_subset = {name: per_image_scores(outputs, subset) for name, outputs in (("lq", lq), ("gaussian", blurred), ("bm3d", denoised), ("default", model))}
    medians = {
        "all": {"n_images": len(test), "lq": median_scores(lq, test), "gaussian": median_scores(blurred, test), "default": median_scores(model, test)},
        "bm3d_subset": {"n_images": len(subset), **{name: {m: float(np.median(v)) for m, v in s.items()} for name, s in on_subset.items()}},
    }  # fmt: skip
    by_image = {name: on_subset[name] for name in ("default", "bm3d")}
    vs_bm3d = paired({name: {"per_image": s} for name, s in by_image.items()}, "default", "bm3d")
    target_met = all(medians["all"]["default"][m] > medians["all"]["gaussian"][m] for m in ("psnr", "ssim"))
    doc = {
        "command": " ".join(command[1:]), "minutes": args.minutes, "train_wall_seconds": train_wall,
        "steps": provenance.steps if provenance else None, "machine_before": before, "load_average_after_training": load_after,
        "train_fields": sorted({p.field for p in track.train}), "test_fields": sorted({p.field for p in test}),
        "subset_names": [p.name for p in subset], "subset_rule": f"one in {args.bm3d_every} of the scored test fields, one image each, the channels in turn", "normalisation": NORMALISATION, "data_range": 1.0,
        "gaussian": {"params": gaussian.params, "tuning_images": len(subsets["gaussian"])},
        "bm3d": {"params": bm3d.params, "tuning_images": len(subsets["bm3d"])},
        "curve": curve, "medians": medians, "per_image_bm3d_subset": by_image, "default_minus_bm3d_by_image": vs_bm3d,
        "target": {"description": "default beats the tuned Gaussian in median PSNR and SSIM on every test image", "met": target_met},
    }  # fmt: skip
    rows = [[group, name, f"{v['psnr']:.2f}", f"{v['ssim']:.3f}"] for group, d in medians.items() for name, v in d.items() if name != "n_images"]
    print_table(f"confocalize train --minutes {args.minutes:g} (steps {doc['steps']}), W2S test fields", ["images", "method", "PSNR", "SSIM"], rows)
    print(f"target (beat the Gaussian on PSNR and SSIM): {'met' if target_met else 'NOT met'}")
    print(f"default - bm3d image by image: {vs_bm3d['psnr']:+.2f} dB, {vs_bm3d['ssim']:+.3f} SSIM, "
          f"higher SSIM on {vs_bm3d['ssim_higher']} of {len(subset)}")
    print(f"written {write_results('train_budget', doc)}")
    return doc


def bm3d_subset(test: Sequence[PairPaths], every: int) -> list[PairPaths]:
    """Every ``every``-th field of ``test`` (in field order), one image each, the channels (the names'
    ``_C`` suffixes) taken in turn."""
    fields = sorted({p.field for p in test})[::every]
    channels = sorted({p.name.rsplit("_", 1)[1] for p in test})
    wanted = {f"{field}_{channels[i % len(channels)]}" for i, field in enumerate(fields)}
    return [p for p in test if p.name in wanted]


if __name__ == "__main__":
    main()
