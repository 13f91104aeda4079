"""False-structure rate: invented and missed spots and filaments, per method, on every quality track.

Reads a finished ``quality.py --work-dir DIR`` run (its trained models and simulated test pairs,
and the classical parameters it tuned, from ``benchmarks/results/quality.json``), applies every
method to the same held-out test images again and compares the structures each output shows with
those of HQ (:mod:`confocalize.structures`: LoG spots and Sato ridges, thresholds set on HQ,
matched within 3 px). Shares are medians over test images.

    python benchmarks/quality.py --w2s-every 4 4 --work-dir /tmp/qwork
    python benchmarks/structures.py --work-dir /tmp/qwork
    python benchmarks/structures.py --work-dir /tmp/qwork --tracks B   # one track (B: 4 test images, minutes)

Writes ``benchmarks/results/structures.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import RESULTS, architecture, print_table, quiet_lightning, write_results
from confocalize import baselines
from confocalize.evaluate import LQ
from confocalize.io import read_image
from confocalize.package import load_package
from confocalize.pairs import PairPaths
from confocalize.predict import enhance_image
from confocalize.structures import StructureCounts, compare_structures, median_shares
from quality import (
    AVERAGED, CLASSICAL, LEARNED, ORDER, SIM_PARAMS, TUNING_IMAGES, TUNING_MAX_SIZE, Track, averaged_output, clean_test_pairs, dscm_track, tuning_pairs,
    w2s_track,
)  # fmt: skip

SHARES = ("invented_spots", "missed_spots", "invented_filaments", "missed_filaments")


def rebuilt_track(name: str, work: Path, settings: dict[str, Any]) -> tuple[Track, np.ndarray]:
    """Track ``name`` of the quality run as it was (test pairs, training pairs), and its Richardson-Lucy PSF."""
    every = (settings["w2s_every_nth_field"]["train"], settings["w2s_every_nth_field"]["test"])
    if name == "C":
        track = Track("C", "simulated wide-field -> confocal", [], clean_test_pairs(work / "C" / "test"), SIM_PARAMS.lq_pixel_size)
        return track, baselines.widefield_psf(SIM_PARAMS)
    track = w2s_track(settings["quick"], every) if name == "A" else dscm_track(settings["quick"])
    return track, baselines.gaussian_psf(baselines.fit_gaussian_psf(tuning_pairs(track.train, TUNING_IMAGES, TUNING_MAX_SIZE)))


def methods(name: str, work: Path, track_result: dict[str, Any], psf: np.ndarray) -> dict[str, Callable[[PairPaths], np.ndarray]]:
    """Every method of the track, as a function of a test pair: raw LQ, classical (tuned parameters), learned."""
    classical = {"gaussian": baselines.gaussian, "nlm": baselines.nlm, "bm3d": baselines.bm3d,
                 "richardson_lucy": functools.partial(baselines.richardson_lucy, psf=psf)}  # fmt: skip
    out: dict[str, Callable[[PairPaths], np.ndarray]] = {LQ: lambda p: read_image(p.lq).data}
    for method in CLASSICAL:
        params = track_result["classical"][method]["params"]
        out[method] = lambda p, f=classical[method], kw=params: f(read_image(p.lq).data, **kw)
    for method, spec in LEARNED.items():
        with architecture(spec.generator):  # the reference pix2pix is built by its own code
            package = load_package(work / name / "runs" / method / "model")
        out[method] = lambda p, pkg=package: enhance_image(pkg, read_image(p.lq)).data
        if method in AVERAGED:
            out[AVERAGED[method]] = functools.partial(averaged_output, package)
    return {m: out[m] for m in ORDER}


def score_track(name: str, work: Path, quality: dict[str, Any]) -> dict[str, Any]:
    """Median shares and summed counts of every method on the track's test images."""
    track, psf = rebuilt_track(name, work, quality["settings"])
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for method, apply in methods(name, work, quality["tracks"][name], psf).items():
        counts = [compare_structures(apply(p), read_image(p.hq).data) for p in track.test]
        total = sum(counts, StructureCounts())
        results[method] = {"median": median_shares(counts), "total": dict(zip(total.__dataclass_fields__, total.counts(), strict=True))}
    run = quality["tracks"][name]
    return {"n_test_images": len(track.test), "quality_commit": run.get("commit", quality.get("commit")), "methods": results,
            "seconds": time.perf_counter() - start}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True, help="the --work-dir of a finished quality.py run")
    parser.add_argument("--tracks", default="ABC", help="which of the run's tracks, e.g. B")
    args = parser.parse_args(argv)
    quiet_lightning()
    quality = json.loads((RESULTS / "quality.json").read_text())
    doc: dict[str, Any] = {
        "quality_run": {"commit": quality.get("commit"), "date": quality.get("date"), "budget": quality["settings"]["budget"]},
        "method": "confocalize.structures: LoG spots and Sato ridges on images in the metrics' [0, 1] units, thresholds set on HQ "
                  "(0.3 x its 99.5th percentile response), matched within 3 px; shares are medians over test images",
        "tracks": {},
    }  # fmt: skip
    for name in (t for t in quality["tracks"] if t in args.tracks):
        doc["tracks"][name] = summary = score_track(name, args.work_dir, quality)
        rows = [[m, *(_pct(r["median"][k]) for k in SHARES), r["total"]["spots"], r["total"]["filament_px"]]
                for m, r in summary["methods"].items()]  # fmt: skip
        print_table(f"Track {name}: invented / missed structures ({summary['n_test_images']} test images, medians)",
                    ["method", "invented spots", "missed spots", "invented filament", "missed filament", "spots", "filament px"], rows)  # fmt: skip
        print(f"written {write_results('structures', doc)}")
    return doc


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


if __name__ == "__main__":
    main()
