"""Per-image metrics, medians, a CSV/JSON record and a figure for LQ and generated images against HQ.

Every number comes from :func:`confocalize.metrics.compare` (each image percentile-normalised on
its own, ``data_range=1``), plain and after the affine intensity match. A multi-plane image (a
stack, or several channels) is compared plane by plane (each plane a 2D image): its per-stack score
is the mean over its planes, and the per-slice scores go to ``metrics_slices.csv``; medians are
taken over images. A time-lapse scores each frame so (the mean over the frame's planes), and the
movie's score is the median over its frames. Written into the output folder, each file atomically:

* ``metrics.json``: ``median``, ``median_affine`` (``{"lq_vs_hq": {...}, "generated_vs_hq": {...}}``),
  ``relative_change`` (generated vs LQ, plain medians), ``per_image``, ``normalisation``,
  ``data_range``, ``n_images``. Extra methods (baselines) add ``NAME_vs_hq`` entries beside them.
* ``metrics.csv``: one row per image, every method, plain and affine.
* ``metrics_slices.csv`` (only when some image has several planes): the same, one row per plane,
  named like the training samples (``NAME_c0_z3``; ``NAME_t2_c0_z3`` in a time-lapse).
* ``metrics_frames.csv`` (only for time-lapses): one row per frame (``NAME_t2``), also in
  ``metrics.json`` as ``per_frame`` (each record with its ``frame`` index).
* ``figure.png``: one row per field of view (first image of each; a time-lapse's first frame):
  methods | HQ | error, and the uncertainty when it was computed.
* ``report.html`` (:func:`evaluate_model` only): the page to read and send (:mod:`confocalize.report`):
  these numbers and the figure with the model's provenance, its training curves and the pairs' overlays.

With uncertainty maps (``evaluate --uncertainty``), ``metrics.json`` gains ``uncertainty``: per image
the Spearman correlation of the uncertainty with the absolute error over its pixels (errors in the
model's output units, :mod:`confocalize.calibration`), its median uncertainty and RMS error, and the
median Spearman over images.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from confocalize import calibration, metrics
from confocalize.config import NormalizationConfig
from confocalize.errors import ConfocalizeError
from confocalize.io import atomic_write, read_image, write_image, write_json
from confocalize.package import ModelPackage
from confocalize.pairs import PairPaths
from confocalize.predict import DEFAULT_BATCH, DEFAULT_TILE, Progress, enhance_image
from confocalize.report import GENERATED, LQ, method_label, run_folder, write_report
from confocalize.stacks import as_czyx
from confocalize.uncertainty import enhance_with_uncertainty

VARIANTS = ("plain", "affine")  # the two results of metrics.compare

Scores = dict[str, dict[str, float]]  # variant ("plain"/"affine") -> metric -> value


@dataclass(frozen=True)
class _Panel:
    """One figure row: a plane of each method and of HQ, with the image's plain scores."""

    name: str
    field: str
    planes: dict[str, np.ndarray]
    hq: np.ndarray
    scores: dict[str, Scores]
    pixel_size: float | None
    uncertainty: np.ndarray | None = None  # the generated image's uncertainty plane, output units


def evaluate_pairs(
    pairs: Sequence[PairPaths],
    predictions: Mapping[str, np.ndarray] | None,
    out_dir: str | os.PathLike,
    lq_pixel_size: float | None = None,
    figure_fields: int = 4,
    baselines: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    uncertainties: Mapping[str, np.ndarray] | None = None,
    normalization: NormalizationConfig | None = None,
) -> dict[str, Any]:
    """Score LQ, generated (``predictions`` by pair name) and optional ``baselines`` against HQ.

    Arrays must have the pair's LQ/HQ shape. Without ``predictions`` only LQ (and the baselines)
    are scored. ``lq_pixel_size`` (µm) sizes the figure's scale bar for files without metadata.
    ``uncertainties`` (by pair name, the predictions' shape) are ranked against the predictions'
    errors in output units, HQ normalised with ``normalization`` (the package's).
    Writes ``metrics.json``, ``metrics.csv`` and ``figure.png`` into ``out_dir``; returns the JSON dict.
    """
    if not pairs:
        raise ConfocalizeError("no pairs to evaluate; check the pairs source (and --split)")
    sources = {**({GENERATED: predictions} if predictions is not None else {}), **(baselines or {})}
    methods = [LQ, *sources]
    per_image: list[dict[str, Any]] = []
    per_slice: list[dict[str, Any]] = []
    per_frame: list[dict[str, Any]] = []
    panels: list[_Panel] = []
    ranked: list[dict[str, Any]] = []
    for pair in pairs:
        lq = read_image(pair.lq, pixel_size=lq_pixel_size)
        hq = read_image(pair.hq).data
        images = {LQ: lq.data, **{method: _lookup(arrays, pair, method) for method, arrays in sources.items()}}
        plane_scores = {method: _plane_scores(image, hq, pair, method) for method, image in images.items()}
        n_frames = lq.data.shape[0] if lq.axes.startswith("T") else 1
        frame_scores = {method: [_reduce(f, np.mean) for f in _split(s, n_frames)] for method, s in plane_scores.items()}
        scores = {method: _reduce(f, np.median) for method, f in frame_scores.items()}  # one frame: its own scores
        per_image.append(_image_record(pair, scores))
        if n_frames > 1:
            for t in range(n_frames):
                record = _image_record(replace(pair, name=f"{pair.name}_t{t}"), {m: f[t] for m, f in frame_scores.items()})
                per_frame.append({**record, "frame": t})
        for i, label in enumerate(_plane_labels(lq.axes, lq.data.shape)):
            per_slice.append(_image_record(replace(pair, name=pair.name + label), {m: s[i] for m, s in plane_scores.items()}))
        unc = _lookup(uncertainties, pair, "uncertainty") if uncertainties is not None else None
        if unc is not None:
            ranked.append(_ranking(pair.name, unc, images[GENERATED], hq, lq.axes, normalization or NormalizationConfig()))
        if len(panels) < figure_fields and pair.field not in {p.field for p in panels}:
            planes = {m: _display_plane(a, lq.axes) for m, a in images.items()}
            shown = _middle_plane(unc, lq.axes) if unc is not None else None
            panels.append(_Panel(pair.name, pair.field, planes, _display_plane(hq, lq.axes), scores, lq.pixel_size, shown))
    result = _summary(per_image, methods)
    if per_frame:
        result["per_frame"] = per_frame
    if ranked:
        result["uncertainty"] = {"per_image": ranked, "median_spearman": float(np.nanmedian([r["spearman"] for r in ranked]))}
    out = Path(out_dir)
    write_json(out / "metrics.json", result)
    _write_csv(out / "metrics.csv", per_image, methods)
    if len(per_slice) > len(per_image):
        _write_csv(out / "metrics_slices.csv", per_slice, methods)
    if per_frame:
        _write_csv(out / "metrics_frames.csv", per_frame, methods)
    if panels:
        _write_figure(out / "figure.png", panels)
    return result


def evaluate_model(
    package: ModelPackage,
    pairs: Sequence[PairPaths],
    out_dir: str | os.PathLike,
    tile: int = DEFAULT_TILE,
    batch_size: int = DEFAULT_BATCH,
    lq_pixel_size: float | None = None,
    save_generated: bool = True,
    figure_fields: int = 4,
    progress: Progress | None = None,
    uncertainty: bool = False,
) -> dict[str, Any]:
    """Enhance each pair's LQ with ``package``, :func:`evaluate_pairs` the results and write ``report.html``.

    The report shows the package's training curves when it is still in its run folder (``RUN/model``).
    With ``save_generated`` the generated images go to ``out_dir/generated/NAME.ome.tif``.
    With ``uncertainty`` each is the mean over the 8 flips/rotations, scored with its uncertainty
    (saved as ``generated/NAME.uncertainty.ome.tif``; see :mod:`confocalize.uncertainty`).
    ``progress(done, total)`` counts the pairs enhanced plus one final step for the evaluation.
    """
    predictions: dict[str, np.ndarray] = {}
    uncertainties: dict[str, np.ndarray] = {}
    total = len(pairs) + 1
    for done, pair in enumerate(pairs, start=1):
        lq = read_image(pair.lq, pixel_size=lq_pixel_size)
        outputs = {"": enhance_image(package, lq, tile, batch_size)} if not uncertainty else {}
        if uncertainty:
            enhanced = enhance_with_uncertainty(package, lq, tile, batch_size)
            outputs = {"": enhanced.image, ".uncertainty": enhanced.uncertainty}
            uncertainties[pair.name] = enhanced.uncertainty.data
        predictions[pair.name] = outputs[""].data
        for suffix, image in outputs.items() if save_generated else ():
            path = Path(out_dir) / "generated" / f"{pair.name}{suffix}.ome.tif"
            write_image(path, image.data, image.axes, image.pixel_size, image.z_step, image.time_increment)
        if progress is not None:
            progress(done, total)
    result = evaluate_pairs(pairs, predictions, out_dir, lq_pixel_size, figure_fields,
                            uncertainties=uncertainties if uncertainty else None, normalization=package.normalization)  # fmt: skip
    write_report(out_dir, package, run_dir=run_folder(package), evaluation=result, figure=Path(out_dir) / "figure.png",
                 pairs={"evaluated": pairs})  # fmt: skip
    if progress is not None:
        progress(total, total)
    return result


def _ranking(name: str, uncertainty: np.ndarray, generated: np.ndarray, hq: np.ndarray, axes: str,
             normalization: NormalizationConfig) -> dict[str, Any]:
    """How one image's uncertainty ranks its errors: Spearman, median uncertainty, RMS error (output units)."""
    error = calibration.absolute_error(generated, hq, axes, normalization)
    return {"name": name, "spearman": calibration.spearman(uncertainty, error), "median_uncertainty": float(np.median(uncertainty)),
            "rms_error": float(np.sqrt(np.mean(np.square(error, dtype=np.float64))))}  # fmt: skip


def _lookup(arrays: Mapping[str, np.ndarray], pair: PairPaths, method: str) -> np.ndarray:
    if pair.name not in arrays:
        raise ConfocalizeError(f"{pair.lq}: no {method} image for pair '{pair.name}'; enhance every pair before evaluating")
    return np.asarray(arrays[pair.name])


def _plane_scores(image: np.ndarray, hq: np.ndarray, pair: PairPaths, method: str) -> list[Scores]:
    """``compare`` per 2D plane: ``[{"plain": {...}, "affine": {...}}, ...]``."""
    if image.shape != hq.shape:
        raise ConfocalizeError(
            f"{pair.hq}: shape {hq.shape} differs from the {method} image's {image.shape}; use registered pairs on one grid"
        )
    return [metrics.compare(p, t) for p, t in zip(_planes(image), _planes(hq))]


def _reduce(scores: list[Scores], reduce: Callable[[list[float]], Any]) -> Scores:
    """Each metric reduced over ``scores`` (planes or frames; ``np.mean``, ``np.median``), plain and affine."""
    return {v: {m: float(reduce([s[v][m] for s in scores])) for m in metrics.METRIC_NAMES} for v in VARIANTS}


def _split(planes: list[Scores], n_frames: int) -> list[list[Scores]]:
    """The planes of each frame (:func:`_planes` order is frame by frame)."""
    per_frame = len(planes) // n_frames
    return [planes[t * per_frame : (t + 1) * per_frame] for t in range(n_frames)]


def _plane_labels(axes: str, shape: tuple[int, ...]) -> list[str]:
    """Name suffixes of the planes in :func:`_planes` order: ``_c0_z0``, ``_c0_z1``, ... (``""`` for a 2D image;
    ``_t0_c0_z0`` ... in a time-lapse)."""
    sizes = {ax: shape[axes.index(ax)] if ax in axes else 0 for ax in "TCZ"}
    ts = [f"_t{t}" for t in range(sizes["T"])] or [""]
    cs = [f"_c{c}" for c in range(sizes["C"])] or [""]
    zs = [f"_z{z}" for z in range(sizes["Z"])] or [""]
    return [t + c + z for t in ts for c in cs for z in zs]


def _planes(data: np.ndarray) -> np.ndarray:
    return data.reshape(-1, *data.shape[-2:])


def _display_plane(data: np.ndarray, axes: str) -> np.ndarray:
    """The middle plane of the first channel, in the metric's [0, 1] units."""
    return metrics.to_unit_range(_middle_plane(data, axes))


def _middle_plane(data: np.ndarray, axes: str) -> np.ndarray:
    """The middle plane of the first channel (of the first frame of a time-lapse)."""
    if axes.startswith("T"):
        data, axes = data[0], axes[1:]
    czyx = as_czyx(data, axes)
    return czyx[0, czyx.shape[1] // 2]


def _image_record(pair: PairPaths, scores: dict[str, Scores]) -> dict[str, Any]:
    return {
        "name": pair.name,
        "field": pair.field,
        **{f"{m}_vs_hq": s["plain"] for m, s in scores.items()},
        "affine": {f"{m}_vs_hq": s["affine"] for m, s in scores.items()},
    }


def _summary(per_image: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Medians over images (plain and affine), the relative change and the per-image records."""
    keys = [f"{m}_vs_hq" for m in methods]
    median = {k: _median([r[k] for r in per_image]) for k in keys}
    median_affine = {k: _median([r["affine"][k] for r in per_image]) for k in keys}
    change = metrics.relative_change(median[f"{LQ}_vs_hq"], median[f"{GENERATED}_vs_hq"]) if GENERATED in methods else {}
    return {
        "median": median,
        "median_affine": median_affine,
        "relative_change": change,
        "per_image": per_image,
        "normalisation": metrics.NORMALISATION,
        "data_range": metrics.DATA_RANGE,
        "n_images": len(per_image),
    }


def _median(records: list[dict[str, float]]) -> dict[str, float]:
    return {m: float(np.median([r[m] for r in records])) for m in metrics.METRIC_NAMES}


def _write_csv(path: Path, per_image: list[dict[str, Any]], methods: list[str]) -> None:
    """One row per image: name, field, then ``METHOD_vs_hq[_affine]_METRIC`` for every method."""
    rows = [_csv_row(record, methods) for record in per_image]
    with atomic_write(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _csv_row(record: dict[str, Any], methods: list[str]) -> dict[str, Any]:
    row = {"name": record["name"], "field": record["field"]}
    for key in (f"{m}_vs_hq" for m in methods):
        row |= {f"{key}_{metric}": value for metric, value in record[key].items()}
        row |= {f"{key}_affine_{metric}": value for metric, value in record["affine"][key].items()}
    return row


def _write_figure(path: Path, panels: list[_Panel]) -> None:
    """One row per panel: each method, HQ, and |generated (else LQ) - HQ|, scores in the titles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(panels[0].planes)
    shown = GENERATED if GENERATED in methods else LQ
    with_uncertainty = panels[0].uncertainty is not None
    n_cols = len(methods) + 2 + with_uncertainty
    fig = Figure(figsize=(3 * n_cols, 3.2 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), n_cols, squeeze=False)
    for row, panel in zip(axes, panels):
        for ax, method in zip(row, methods):
            plain = panel.scores[method]["plain"]
            ax.imshow(panel.planes[method], cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"{method_label(method)}\nSSIM {plain['ssim']:.3f}  PSNR {plain['psnr']:.1f} dB", fontsize=9)
        hq_ax, error_ax = row[len(methods)], row[len(methods) + 1]
        hq_ax.imshow(panel.hq, cmap="gray", vmin=0, vmax=1)
        hq_ax.set_title("HQ", fontsize=9)
        error = error_ax.imshow(np.abs(panel.planes[shown] - panel.hq), cmap="magma", vmin=0, vmax=0.5)
        error_ax.set_title(f"|{method_label(shown)} - HQ|", fontsize=9)
        fig.colorbar(error, ax=error_ax, shrink=0.8)
        if panel.uncertainty is not None:
            spread = row[-1].imshow(panel.uncertainty, cmap="magma", vmin=0, vmax=float(np.percentile(panel.uncertainty, 99.5)) or 1)
            row[-1].set_title("uncertainty (output units)", fontsize=9)
            fig.colorbar(spread, ax=row[-1], shrink=0.8)
        row[0].set_ylabel(panel.name if panel.field == panel.name else f"{panel.name} (field {panel.field})", fontsize=9)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        if panel.pixel_size:
            _scale_bar(hq_ax, panel.hq.shape, panel.pixel_size)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _scale_bar(ax: Any, shape: tuple[int, ...], pixel_size: float) -> None:
    """A white bar of a round length (1, 2 or 5 x 10^k µm) of at most a fifth of the image width."""
    height, width = shape
    target = width * pixel_size / 5
    length = max(v for v in (s * 10.0 ** np.floor(np.log10(target)) for s in (1, 2, 5)) if v <= target)
    x0, y = 0.05 * width, 0.92 * height
    ax.plot([x0, x0 + length / pixel_size], [y, y], color="white", linewidth=3)
    ax.text(x0, y - 0.03 * height, f"{length:g} µm", color="white", fontsize=8)
