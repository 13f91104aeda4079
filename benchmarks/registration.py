"""Registration benchmark: known transforms on real and simulated images.

Every case hides a known ``lq_from_hq`` (pixel-size ratio 0.25-4, rotation +-15°, flip, shift up to half
the field, +-3 % scale error and shear; wide-field blur, haze and noise on the LQ side) and asks
:func:`confocalize.register.register_pair` to find it. A case is a success when the recovered transform
maps HQ pixels to within ``--tolerance`` LQ pixels RMS of the truth, *refused* when registration raises
:class:`RegistrationError`, and *wrong* when a transform further off is returned (the outcome that
must never happen). Unrelated pairs (HQ from another image) must all be refused. One 2048 x 2048 pair
is timed.

    python benchmarks/registration.py --cases 80 --simulated 20 --unrelated 20
    python benchmarks/registration.py --size 192 --sim-size 128   # smaller fields: less structure, more refusals

prints a summary and writes ``benchmarks/results/registration.json`` (with machine, date and commit).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from common import DATA, write_results
from confocalize.errors import RegistrationError
from confocalize.io import Image, read_image
from confocalize.register import point_rms, register_pair, synthetic_pair
from confocalize.simulate import SimulationParams, random_sample, render_pair


def real_bases(data: Path, rng: np.random.Generator, w2s_count: int = 24) -> dict[str, list[tuple[str, np.ndarray]]]:
    """The STED images and a random sample of W2S 400-frame averages, each named by its file."""
    w2s = sorted(data.glob("w2s_widefield/avg400/*.png"))
    files = {
        "sted": sorted(data.glob("dscm_confocal_sted/*/*_STED.png")),
        "w2s": [w2s[i] for i in rng.choice(len(w2s), min(w2s_count, len(w2s)), replace=False)],
    }
    return {source: [(str(p.relative_to(data)), read_image(p).data) for p in paths] for source, paths in files.items()}


def random_scale(rng: np.random.Generator, low: float = 0.25, high: float = 4.0) -> float:
    """A pixel-size ratio, uniform in log between ``low`` and ``high``."""
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def simulated_pair(rng: np.random.Generator, scale: float, size: int = 256) -> tuple[Image, Image, np.ndarray]:
    """A wide-field/confocal pair from the physical simulator; the smaller image is ``size`` pixels."""
    field = size * max(1.0, scale) * 0.1  # µm across the LQ field
    params = SimulationParams(
        size=int(round(size * max(1.0, scale))),
        lq_pixel_size=0.1,
        hq_pixel_size=0.1 * scale,
        hq_field_ratio=1.0,
        rotation_range=(-15.0, 15.0),
        flip_probability=0.5,
        shift_range=(-field / 4, field / 4),
        object_oversampling=1.0,
        n_cells=(10, 14),  # the object spans about twice the field (shifts, rotations): keep the field populated
    )
    pair = render_pair(*random_sample(params, rng), params, rng)
    return Image(pair.lq, "YX", params.lq_pixel_size), Image(pair.hq, "YX", params.hq_pixel_size), pair.lq_from_hq


def run_case(lq: Image, hq: Image, truth: np.ndarray | None, tolerance: float) -> dict[str, Any]:
    """Register one pair and classify the outcome (``truth`` None: unrelated images, must be refused)."""
    start = time.perf_counter()
    shapes = {"lq_shape": list(lq.data.shape), "hq_shape": list(hq.data.shape)}
    try:
        reg = register_pair(lq, hq)
    except RegistrationError as exc:
        return {"outcome": "refused", "reason": str(exc), "seconds": time.perf_counter() - start, **shapes}
    seconds = time.perf_counter() - start
    quality = {k: v for k, v in reg.quality.items() if isinstance(v, int | float | bool)}
    if truth is None:
        return {"outcome": "wrong", "rms_px": None, "seconds": seconds, "quality": quality, **shapes}
    error = point_rms(truth, reg.lq_from_hq, hq.data.shape, lq.data.shape)
    return {"outcome": "success" if error <= tolerance else "wrong", "rms_px": error, "seconds": seconds, "quality": quality, **shapes}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts, success rate and the error distribution of returned transforms."""
    finite = np.array([r["rms_px"] for r in rows if r.get("rms_px") is not None])
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("success", "wrong", "refused")}
    return {
        "cases": len(rows),
        **counts,
        "success_rate": counts["success"] / max(len(rows), 1),
        "rms_px_median": float(np.median(finite)) if finite.size else None,
        "rms_px_p95": float(np.percentile(finite, 95)) if finite.size else None,
        "rms_px_max": float(finite.max()) if finite.size else None,
        "seconds_median": float(np.median([r["seconds"] for r in rows])) if rows else None,
    }


def time_large(sted: list[tuple[str, np.ndarray]], rng: np.random.Generator, size: int, tolerance: float) -> dict[str, Any]:
    """One ``size`` x ``size`` pair at equal pixel sizes, HQ from a STED image enlarged to fit."""
    name, base = sted[0]
    big = ndimage.zoom(base.astype(np.float32), max(1.0, 1.25 * size / min(base.shape)), order=1)
    lq, hq, truth = synthetic_pair(big, rng, 1.0, size=size)
    return {"base": name, **run_case(lq, hq, truth, tolerance)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a summary and write the JSON results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=80, help="real-image cases (half STED, half W2S)")
    parser.add_argument("--simulated", type=int, default=20, help="physically simulated cases")
    parser.add_argument("--unrelated", type=int, default=20, help="pairs of different images (must be refused)")
    parser.add_argument("--size", type=int, default=256, help="pixels across the smaller image of a real-image pair")
    parser.add_argument("--sim-size", type=int, default=256, help="pixels across the smaller image of a simulated pair (simulate's default field)")
    parser.add_argument("--large", type=int, default=2048, help="edge of the timed large pair (0: skip)")
    parser.add_argument("--tolerance", type=float, default=0.5, help="LQ pixels RMS for a success")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    bases = real_bases(DATA, rng)
    groups: dict[str, list[dict[str, Any]]] = {"real_sted": [], "real_w2s": [], "simulated": [], "unrelated": []}
    for i in range(args.cases):
        source = ("sted", "w2s")[i % 2]
        name, base = bases[source][rng.integers(len(bases[source]))]
        scale = random_scale(rng)
        groups[f"real_{source}"].append({"base": name, "scale": scale, **run_case(*synthetic_pair(base, rng, scale, size=args.size), args.tolerance)})
    for _ in range(args.simulated):
        scale = random_scale(rng)
        groups["simulated"].append({"scale": scale, **run_case(*simulated_pair(rng, scale, args.sim_size), args.tolerance)})
    every = bases["sted"] + bases["w2s"]
    for _ in range(args.unrelated):
        (name_a, a), (name_b, b) = (every[i] for i in rng.choice(len(every), 2, replace=False))
        scale = random_scale(rng)
        lq, _, _ = synthetic_pair(a, rng, scale, size=args.size)
        _, hq, _ = synthetic_pair(b, rng, scale, size=args.size)
        groups["unrelated"].append({"lq_base": name_a, "hq_base": name_b, "scale": scale, **run_case(lq, hq, None, args.tolerance)})
    results: dict[str, Any] = {
        "settings": vars(args),
        "summary": {group: summarise(rows) for group, rows in groups.items()},
        "large": time_large(bases["sted"], rng, args.large, args.tolerance) if args.large else None,
        "cases": groups,
    }
    print_summary(results)
    write_results("registration", results)
    return results


def print_summary(results: dict[str, Any]) -> None:
    """One line per group and one for the large pair."""
    for group, s in results["summary"].items():
        if not s["cases"]:
            continue
        errors = f"RMS median {s['rms_px_median']:.3f} px, p95 {s['rms_px_p95']:.3f} px" if s["rms_px_median"] is not None and group != "unrelated" else ""
        print(
            f"{group:9s} {s['cases']:3d} cases: {s['success']} success ({s['success_rate']:.0%}), {s['wrong']} wrong, "
            f"{s['refused']} refused; {errors}; median {s['seconds_median']:.2f} s/pair"
        )
    large = results["large"]
    if large:
        print(f"large {large['lq_shape']} LQ / {large['hq_shape']} HQ: {large['outcome']}, {large['seconds']:.1f} s")


if __name__ == "__main__":
    main()
