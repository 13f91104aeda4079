"""Can I trust this pixel? Uncertainty calibration on tracks A, B, C and the physics-consistency score on C.

For each track the built-in model is enhanced with test-time augmentation (the 8 flips/rotations,
:mod:`confocalize.uncertainty`). The variance model of :mod:`confocalize.calibration` is fitted on
the model's own validation fields (never its training or the test fields), then judged on held-out
test fields: the Spearman correlation of predicted uncertainty and absolute error over each
image's pixels (median over images), next to two simpler predictors (the raw spread, and the output
intensity alone), and a reliability diagram (pixels binned by predicted uncertainty, observed RMS
error per bin) for the full model and for a spread-only scale. Track C also scores the consistency
(:mod:`confocalize.consistency`) of the right model's output, of the two other built-in models'
outputs, of the noise-free truth and of the input itself.

* A: ``w2s-denoise``; validation: the first two validation fields of its own split (all channels), test fields 081-116 (six images).
* B: ``dscm-confocal-sted``; validation Micro_3, test Micro_4, Micro_5, Mito_0, Mito_1 (central
  512² crops, a quarter of the compute).
* C: ``sim-widefield-confocal``; pairs rendered as ``quality.py`` renders them (real HQ images as
  objects, :data:`quality.SIM_PARAMS`); validation objects W2S 021_0 and DSCM Micro_3 (its own
  validation split) and six W2S fields of 001-080 that its split does not name, test objects from
  W2S test fields and DSCM Micro_4, Mito_0; scored against the noise-free confocal rendering.

    python benchmarks/trust.py                    # ~8 min on 2 cores
    python benchmarks/trust.py --write-packages   # also store the fitted calibrations in the built-in models
    python benchmarks/trust.py --quick            # one validation and one test image per track, 256² crops

Writes ``benchmarks/results/trust.json`` and ``benchmarks/results/trust.png``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from common import DATA, RESULTS, print_table, write_results
from confocalize import calibration, consistency
from confocalize.io import read_image, write_image
from confocalize.metrics import compare
from confocalize.package import BUILTIN_DIR, ModelPackage, load_package, save_package
from confocalize.pairs import PairPaths
from confocalize.predict import enhance_image
from confocalize.uncertainty import enhance_with_uncertainty, fit_calibration, outside_calibration
from quality import SIM_PARAMS, clean_test_pairs, dscm_pair, render_objects

MODELS = {"A": "w2s-denoise", "B": "dscm-confocal-sted", "C": "sim-widefield-confocal"}
C_EXTRA_VAL = 6  # W2S objects added to C's two validation fields: with two images the fit weighs the spread on no evidence
CROP = 512  # central crop edge of every image (B's 1000² fields cost four times as much)
QUICK_CROP = 256


def w2s(names: Sequence[str]) -> list[PairPaths]:
    """W2S pairs by ``NNN_C`` name."""
    root = DATA / "w2s_widefield"
    return [PairPaths(n, n[:3], root / "avg1" / f"{n}.png", root / "avg400" / f"{n}.png") for n in names]


def own_validation_fields(package: ModelPackage) -> list[str]:
    """The validation fields of the package's own training split (never its training or test fields)."""
    data = package.provenance.training_data
    if data is None or not data.split.get("val", {}).get("fields"):
        raise SystemExit(f"{package.path}: records no validation fields to calibrate on")
    return data.split["val"]["fields"]


def track_pairs(track: str, quick: bool, work: Path) -> dict[str, list[PairPaths]]:
    """Validation and test pairs of ``track`` (C: rendered into ``work``)."""
    if track == "A":
        test = [f"{f:03d}_{f % 3}" for f in range(81, 121, 7)]
        val = own_validation_fields(load_package(MODELS["A"]))[:2]
        return {"val": w2s([f"{val[0]}_0"] if quick else [f"{f}_{c}" for f in val for c in range(3)]),
                "test": w2s(test[:1] if quick else test)}  # fmt: skip
    if track == "B":
        test = ["Micro_4"] if quick else ["Micro_4", "Micro_5", "Mito_0", "Mito_1"]
        return {"val": [dscm_pair("Micro_3")], "test": [dscm_pair(n) for n in test]}
    own = [("A", w2s(["021_0"])[0]), ("B", dscm_pair("Micro_3"))]  # the validation split of MODELS["C"]
    objects = {
        "val": own[:1] if quick else own + [("A", p) for p in w2s(unseen_w2s_fields(load_package(MODELS["C"]), C_EXTRA_VAL))],
        "test": [("A", p) for p in w2s(["091_1"] if quick else ["081_0", "091_1", "101_2", "111_0"])]
        + ([] if quick else [("B", dscm_pair("Micro_4")), ("B", dscm_pair("Mito_0"))]),
    }  # fmt: skip
    pairs = {}
    for split, items in objects.items():
        render_objects(items, work / "C" / split, target="clean", seed=[7, int(split == "test")])
        pairs[split] = clean_test_pairs(work / "C" / split)
    return pairs


def unseen_w2s_fields(package: ModelPackage, n: int) -> list[str]:
    """``n`` W2S images of 001-080 (``NNN_C``, the channels in turn) that no split of ``package`` names as a
    track-A object (``A_NNN_C``): the model never trained or validated on them."""
    data = package.provenance.training_data
    named = {f.split("_")[1] for part in (data.split.values() if data else []) for f in part.get("fields", []) if f.startswith("A_")}
    free = [f for f in range(1, 81) if f"{f:03d}" not in named]
    return [f"{f:03d}_{i % 3}" for i, f in enumerate(free[:: max(1, len(free) // n)][:n])]


def cropped(pairs: Sequence[PairPaths], edge: int, out: Path) -> list[PairPaths]:
    """The central ``edge``² crop of each pair (LQ and HQ on one grid), written to ``out``."""
    result = []
    for p in pairs:
        lq, hq = read_image(p.lq), read_image(p.hq)
        y0, x0 = (max(0, (n - edge) // 2) for n in lq.data.shape[-2:])
        crop = (slice(y0, y0 + edge), slice(x0, x0 + edge))
        result.append(replace(p, lq=write_image(out / "lq" / f"{p.name}.tif", lq.data[crop], "YX", lq.pixel_size),
                              hq=write_image(out / "hq" / f"{p.name}.tif", hq.data[crop], "YX", hq.pixel_size)))  # fmt: skip
    return result


def tta(package: ModelPackage, pairs: Sequence[PairPaths]) -> dict[str, list[np.ndarray]]:
    """Raw spread, test-time-augmented mean, its absolute error and the plain output's, per pair."""
    raw = replace(package, uncertainty=None)
    out: dict[str, list[np.ndarray]] = {"spread": [], "mean": [], "error": [], "plain_error": [], "psnr_gain": []}
    for p in pairs:
        lq, hq = read_image(p.lq), read_image(p.hq).data
        result = enhance_with_uncertainty(raw, lq)
        plain = enhance_image(raw, lq).data
        out["spread"].append(result.uncertainty.data)
        out["mean"].append(result.image.data)
        out["error"].append(calibration.absolute_error(result.image.data, hq, "YX", package.normalization))
        out["plain_error"].append(calibration.absolute_error(plain, hq, "YX", package.normalization))
        out["psnr_gain"].append(compare(result.image.data, hq)["plain"]["psnr"] - compare(plain, hq)["plain"]["psnr"])
    return out


def run_track(track: str, quick: bool, work: Path) -> tuple[dict[str, Any], ModelPackage, dict[str, Any]]:
    """Calibrate on validation, judge on test; the summary, the calibrated package and arrays for the figure."""
    start = time.perf_counter()
    package = load_package(MODELS[track])
    pairs = {split: cropped(ps, QUICK_CROP if quick else CROP, work / track / split) for split, ps in track_pairs(track, quick, work).items()}
    val, test = tta(package, pairs["val"]), tta(package, pairs["test"])
    cal = fit_calibration(val["spread"], val["mean"], val["error"], data=f"{'fields it never trained on' if track == 'C' else 'validation fields of its training split'}: {', '.join(p.name for p in pairs['val'])} (central {QUICK_CROP if quick else CROP}² crops)")
    scale_only = calibration.fit(val["spread"], val["mean"], val["error"], terms=("spread",))
    predicted = [calibration.calibrated(s.copy(), m, cal.scale, cal.signal, cal.floor) for s, m in zip(test["spread"], test["mean"])]
    scaled = [calibration.calibrated(s.copy(), m, **scale_only) for s, m in zip(test["spread"], test["mean"])]
    per_image = [
        {"name": p.name, "spearman": calibration.spearman(u, e), "spearman_raw_spread": calibration.spearman(s, e),
         "spearman_intensity": calibration.spearman(np.maximum(m, 0), e), "spearman_vs_plain_output": calibration.spearman(u, pe),
         "median_uncertainty": float(np.median(u)), "outside_calibration": bool(outside_calibration(replace(package, uncertainty=cal), float(np.median(u)))),
         "rms_error": float(np.sqrt(np.mean(np.square(e, dtype=np.float64)))), "tta_psnr_gain_db": g}
        for p, u, s, m, e, pe, g in zip(pairs["test"], predicted, test["spread"], test["mean"], test["error"], test["plain_error"], test["psnr_gain"])
    ]  # fmt: skip
    table, table_scaled = calibration.reliability(predicted, test["error"]), calibration.reliability(scaled, test["error"])
    summary = {
        "model": MODELS[track], "val_images": [p.name for p in pairs["val"]], "test_images": [p.name for p in pairs["test"]],
        "calibration": cal.model_dump(), "spread_only_scale": scale_only["scale"],
        "median": {k: float(np.nanmedian([r[k] for r in per_image])) for k in
                   ("spearman", "spearman_raw_spread", "spearman_intensity", "spearman_vs_plain_output", "tta_psnr_gain_db")},
        "target_spearman_0_5_met": bool(np.nanmedian([r["spearman"] for r in per_image]) >= 0.5),
        "reliability": table, "calibration_error": calibration.calibration_error(table),
        "reliability_spread_only": table_scaled, "calibration_error_spread_only": calibration.calibration_error(table_scaled),
        "outside_calibration_fraction": float(np.mean([r["outside_calibration"] for r in per_image])), "per_image": per_image,
    }  # fmt: skip
    if track == "C":
        summary["consistency"] = consistency_scores(package, pairs["test"], test["mean"])
    summary["seconds"] = time.perf_counter() - start
    example = {"error": test["error"][0], "uncertainty": predicted[0], "name": pairs["test"][0].name}
    return summary, replace(package, uncertainty=cal), example


def consistency_scores(right: ModelPackage, pairs: Sequence[PairPaths], means: Sequence[np.ndarray]) -> dict[str, Any]:
    """Consistency score per test image of the right model's (TTA) output, the other built-ins', the truth and the input."""
    psf = consistency.gaussian_psf(consistency.optics_sigma_um(right.provenance.lq_system, right.provenance.lq_system.modality or "") / SIM_PARAMS.lq_pixel_size)
    wrong = {name: load_package(name) for name in (MODELS["A"], MODELS["B"])}
    scores: dict[str, list[float]] = {"right model (sim-widefield-confocal)": [], **{f"wrong model ({n})": [] for n in wrong},
                                      "noise-free confocal truth": [], "the LQ input itself": []}  # fmt: skip
    for p, mean in zip(pairs, means):
        lq = read_image(p.lq)
        outputs = [mean, *(enhance_image(pkg, lq).data for pkg in wrong.values()), read_image(p.hq).data, lq.data.astype(np.float32)]
        for key, output in zip(scores, outputs):
            scores[key].append(consistency.check(output, "YX", lq.data, "YX", psf, p.name).score)
    return {"per_image": scores, "median": {k: float(np.median(v)) for k, v in scores.items()}, "psf_sigma_px": consistency._psf_sigma(psf)}


def figure(results: dict[str, Any], examples: dict[str, Any], path: Path) -> Path:
    """Reliability diagrams per track (top) and one test image's |error| beside its uncertainty (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 9), constrained_layout=True, squeeze=False)
    for col, (track, r) in enumerate(results.items()):
        ax = axes[0][col]
        for key, label in (("reliability", "variance model (shipped)"), ("reliability_spread_only", "spread x one scale")):
            ax.plot([b["predicted_rms"] for b in r[key]], [b["observed_rms"] for b in r[key]], marker="o", label=label)
        top = max(b[k] for key in ("reliability", "reliability_spread_only") for b in r[key] for k in ("predicted_rms", "observed_rms"))
        ax.plot([0, top], [0, top], "k--", lw=1, label="calibrated")
        ax.set_xlabel("predicted uncertainty (RMS per bin, output units)")
        ax.set_ylabel("observed RMS error")
        ax.set_title(f"Track {track} ({r['model']}): test Spearman {r['median']['spearman']:.2f}", fontsize=10)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        ex = examples[track]
        vmax = float(np.percentile(ex["error"], 99))
        axes[1][col].imshow(np.concatenate([ex["error"], ex["uncertainty"]], axis=1), cmap="magma", vmin=0, vmax=vmax)
        axes[1][col].set_title(f"{ex['name']}: |error| (left) and uncertainty (right), same scale", fontsize=9)
        axes[1][col].axis("off")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one validation and one test image per track, 256² crops")
    parser.add_argument("--tracks", default="ABC")
    parser.add_argument("--write-packages", action="store_true", help="store each fitted calibration in its built-in model")
    args = parser.parse_args(argv)
    if args.write_packages and args.quick:
        parser.error("--write-packages needs the full run, not --quick")
    start = time.perf_counter()
    results: dict[str, Any] = {}
    examples: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="confocalize-trust-") as tmp:
        for track in args.tracks:
            results[track], calibrated, examples[track] = run_track(track, args.quick, Path(tmp))
            if args.write_packages:
                save_package(calibrated, BUILTIN_DIR / MODELS[track])
    rows = [[t, r["model"], f"{r['median']['spearman']:.3f}", f"{r['median']['spearman_raw_spread']:.3f}",
             f"{r['median']['spearman_intensity']:.3f}", f"{r['calibration']['scale']:.2f}", f"{r['spread_only_scale']:.2f}",
             f"{r['calibration_error']:.2f} / {r['calibration_error_spread_only']:.2f}", f"{r['median']['tta_psnr_gain_db']:+.2f}",
             f"{r['outside_calibration_fraction']:.0%}"] for t, r in results.items()]  # fmt: skip
    print_table("Uncertainty vs |error| on held-out test images (median over images)",
                ["track", "model", "Spearman", "raw spread", "intensity only", "scale", "spread-only scale",
                 "calib. error model / spread-only", "TTA PSNR gain dB", "flagged"], rows)  # fmt: skip
    if "C" in results:
        med = results["C"]["consistency"]["median"]
        print_table("Consistency score on track C test images (RMS residual / noise, median)", ["output", "score"],
                    [[k, f"{v:.2f}"] for k, v in med.items()])  # fmt: skip
    path = figure(results, examples, RESULTS / "trust.png")
    doc = {"settings": {"quick": args.quick, "crop": QUICK_CROP if args.quick else CROP, "wrote_packages": args.write_packages},
           "tracks": results, "figure": path, "seconds": time.perf_counter() - start}  # fmt: skip
    print(f"written {write_results('trust', doc)} and {path}")
    return doc


if __name__ == "__main__":
    main()
