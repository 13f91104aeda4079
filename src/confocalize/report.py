"""``report.html``: one self-contained page to read and send after ``train`` or ``evaluate``.

``train.fit`` writes it into the run folder after exporting the model; ``evaluate.evaluate_model``
into its output folder, beside ``metrics.json`` and ``figure.png``. Its sections, each where its
material exists:

* evaluation: the medians in the study's form (LQ vs HQ, generated vs HQ and the relative change;
  plain and after the affine intensity match), the normalisation and data range, one row per image
  (the numbers of ``metrics.json``) and the evaluation's ``figure.png`` (methods, HQ, error maps);
* training curves: the losses and the validation PSNR/SSIM against generator steps, from the run's
  ``logs/csv/version_*/metrics.csv`` (an evaluation finds them when the model is still ``RUN/model``);
* data and split by field: where the training pairs came from, their counts and pixel sizes, the
  fields and pairs of each set, and for an evaluation the fields it scored (with a warning when one
  of them was used in training);
* registration overlays of the pairs used (``PAIRS_DIR/overlays/NAME.png``), one per field, at most
  :data:`MAX_OVERLAYS`, shrunk to :data:`THUMBNAIL` pixels;
* model: the package hash and provenance (``package.package_summary``: network, LQ/HQ systems,
  training run, lineage, validation metrics, uncertainty calibration);
* settings: the run's full training config, as the package records it.

Images are embedded as base64 PNG and the page loads nothing else (no scripts, fonts, style sheets
or links), so it can be mailed as it is; every text from files and settings is HTML-escaped. The
study's text tables (:func:`table_rows`, printed by the CLI) live here too.
"""

from __future__ import annotations

import base64
import csv
import html
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path
from string import Template
from typing import Any

from confocalize import __version__, metrics
from confocalize.io import atomic_write
from confocalize.package import ModelPackage, content_sha256, package_summary
from confocalize.pairs import PairPaths, overlay_path

REPORT = "report.html"
LQ = "lq"  # the method names of metrics.json ("lq_vs_hq", "generated_vs_hq")
GENERATED = "generated"
TABLE_LABELS = {"mse": "MSE", "ssim": "SSIM", "psnr": "PSNR", "nrmse": "NRMSE"}
_FORMATS = {"mse": "{:.3g}", "ssim": "{:.3f}", "psnr": "{:.2f} dB", "nrmse": "{:.3f}"}
MAX_OVERLAYS = 12
THUMBNAIL = 256  # pixels, the longer edge of an embedded overlay

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font-family: "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; background: #fff;
       max-width: 1150px; margin: 1.5em auto; padding: 0 1.2em; line-height: 1.45; }
h1 { font-size: 1.6em; margin: 0 0 0.2em; }
h2 { font-size: 1.25em; border-bottom: 2px solid #d0d7de; padding-bottom: 0.15em; margin: 1.8em 0 0.6em; }
h3 { font-size: 1.02em; margin: 1.2em 0 0.3em; }
p { margin: 0.4em 0; }
.meta, figcaption, .note { color: #57606a; font-size: 0.88em; }
code { font-family: Consolas, "DejaVu Sans Mono", monospace; font-size: 0.88em; overflow-wrap: anywhere; }
nav a { margin-right: 1.1em; color: #0969da; text-decoration: none; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-size: 0.88em; }
th, td { border: 1px solid #d0d7de; padding: 0.22em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f5f7; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.list { max-width: 720px; overflow-wrap: anywhere; }
td.value { overflow-wrap: anywhere; }
img { max-width: 100%; height: auto; }
figure { margin: 0.4em 0 1.2em; }
.grid { display: flex; flex-wrap: wrap; gap: 14px; }
.grid figure { width: 240px; margin: 0; }
.grid img { width: 240px; image-rendering: pixelated; border: 1px solid #d0d7de; }
.warn { background: #fff8e6; border-left: 4px solid #d4a72c; padding: 0.4em 0.8em; }
.columns { display: flex; flex-wrap: wrap; gap: 0 2.5em; }
.columns > div { max-width: 540px; }
details > summary { cursor: pointer; color: #0969da; margin: 0.4em 0; }
</style>
</head>
<body>
$body
</body>
</html>
""")


def write_report(
    out_dir: str | os.PathLike,
    package: ModelPackage,
    *,
    run_dir: str | os.PathLike | None = None,
    evaluation: Mapping[str, Any] | None = None,
    figure: str | os.PathLike | None = None,
    pairs: Mapping[str, Sequence[PairPaths]] | None = None,
) -> Path:
    """Write ``out_dir/report.html`` atomically and return its path.

    ``run_dir`` is the training run folder (its curves); ``evaluation`` the dict that
    :func:`confocalize.evaluate.evaluate_pairs` returns, with ``figure`` its ``figure.png``;
    ``pairs`` the pairs used, by set (``{"train": [...], "val": [...]}`` or ``{"evaluated": [...]}``),
    whose registration overlays are shown.
    """
    kind = "evaluation" if evaluation is not None else "training"
    package_hash = package.sha256 or content_sha256(package)
    summary = package_summary(package)
    summary["package"]["sha256"] = package_hash
    sections = [
        *([_evaluation_section(evaluation, figure)] if evaluation is not None else []),
        _curves_section(run_dir),
        _data_section(summary.pop("training_data"), package, evaluation),
        _overlays_section(pairs or {}),
        _model_section(summary),
        _settings_section(package),
    ]
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    model = str(package.path) if package.path else "in memory"
    header = (
        f"<h1>confocalize {kind} report</h1>\n"
        f'<p class="meta">model <code>{_esc(model)}</code> &middot; package sha256 <code>{package_hash}</code><br>'
        f"written {written} by confocalize {_esc(__version__)}</p>\n"
        "<nav>" + "".join(f'<a href="#{anchor}">{_esc(title)}</a>' for anchor, title, _ in sections) + "</nav>"
    )
    body = "\n".join([header, *(f'<section id="{anchor}">\n<h2>{_esc(title)}</h2>\n{content}\n</section>'
                                for anchor, title, content in sections)])  # fmt: skip
    path = Path(out_dir) / REPORT
    with atomic_write(path) as tmp:
        tmp.write_text(_PAGE.substitute(title=_esc(f"confocalize {kind} report"), body=body), encoding="utf-8")
    return path


def run_folder(package: ModelPackage) -> Path | None:
    """The training run folder of a package that is still where ``train`` wrote it (``RUN/model``), else None."""
    if package.path is None:
        return None
    run = Path(package.path).parent
    return run if (run / "logs" / "csv").is_dir() else None


def read_run_log(run_dir: str | os.PathLike) -> list[dict[str, float]]:
    """Every row of a run's CSV logs (``logs/csv/version_*/metrics.csv``: the first start, then each
    resume), as numbers; empty cells are left out."""
    logs = (Path(run_dir) / "logs" / "csv").glob("version_*/metrics.csv")
    rows: list[dict[str, float]] = []
    for log in sorted(logs, key=lambda p: int(p.parent.name.removeprefix("version_") or 0)):
        with log.open(newline="") as fh:
            rows += [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(fh)]
    return rows


def method_label(method: str) -> str:
    """How a method of ``metrics.json`` is named in tables and figures."""
    return "LQ" if method == LQ else method


def format_metric(metric: str, value: float | None) -> str:
    """A metric value as the tables print it (``n/a`` when missing: null in ``metrics.json``)."""
    return "n/a" if value is None else _FORMATS[metric].format(value)


def table_rows(result: Mapping[str, Any], key: str = "median") -> tuple[list[str], list[list[str]]]:
    """Header and rows (MSE, SSIM, PSNR, NRMSE) of ``result[key]``: one column per method, then the relative change."""
    block = result[key]
    header = ["metric", *(f"{method_label(name.removesuffix('_vs_hq'))} vs HQ" for name in block)]
    generated = block.get(f"{GENERATED}_vs_hq")
    change = metrics.relative_change(block[f"{LQ}_vs_hq"], generated) if generated is not None else None
    if change is not None:
        header.append("relative change")
    rows = []
    for metric in metrics.METRIC_NAMES:
        row = [TABLE_LABELS[metric], *(format_metric(metric, values[metric]) for values in block.values())]
        if change is not None:
            row.append("n/a" if change[metric] is None else f"{change[metric]:+.1%}")
        rows.append(row)
    return header, rows


# --- sections: (anchor, title, HTML) --------------------------------------------------------------


def _evaluation_section(result: Mapping[str, Any], figure: str | os.PathLike | None) -> tuple[str, str, str]:
    """Medians in the study's form, the normalisation, one row per image and the evaluation figure."""
    parts = [
        f"<p>Medians over {result['n_images']} image(s). Normalisation: {_esc(result['normalisation'])}. "
        "PSNR in dB; NRMSE is RMSE over the target's RMS.</p>",
        "<h3>Medians</h3>",
        _median_table(result, "median"),
        "<h3>Medians after a least-squares affine intensity match to HQ</h3>",
        _median_table(result, "median_affine"),
    ]
    if "uncertainty" in result:
        block = result["uncertainty"]
        parts.append(f"<p>Uncertainty: median Spearman correlation of the uncertainty with |generated - HQ| "
                     f"{_text(block['median_spearman'])} over {len(block['per_image'])} image(s).</p>")  # fmt: skip
    parts += ["<h3>Per image</h3>", _per_image_table(result)]
    if figure is not None and Path(figure).is_file():
        parts += ["<h3>Side by side</h3>",
                  f"<figure>{_img(Path(figure).read_bytes(), 'evaluation figure')}<figcaption>One row per field of view: "
                  "each method, HQ, and |generated - HQ| in the metric's [0, 1] units (the evaluation's "
                  f"<code>{_esc(Path(figure).name)}</code>).</figcaption></figure>"]  # fmt: skip
    return "evaluation", "Evaluation", "\n".join(parts)


def _median_table(result: Mapping[str, Any], key: str) -> str:
    header, rows = table_rows(result, key)
    return _table(header, rows, css=key.replace("_", "-"), numeric=range(1, len(header)))


def _per_image_table(result: Mapping[str, Any]) -> str:
    """Name, field, then every metric of every method; each number's exact value in ``data-value``."""
    keys = list(result["median"])
    names = metrics.METRIC_NAMES
    groups = "".join(f'<th colspan="{len(names)}">{_esc(method_label(k.removesuffix("_vs_hq")))} vs HQ</th>' for k in keys)
    head = (f'<tr><th rowspan="2">image</th><th rowspan="2">field</th>{groups}</tr>\n'
            "<tr>" + "".join(f"<th>{TABLE_LABELS[m]}</th>" for _ in keys for m in names) + "</tr>")  # fmt: skip
    rows = []
    for record in result["per_image"]:
        cells = "".join(_number_cell(m, record[k][m]) for k in keys for m in names)
        rows.append(f"<tr><td>{_esc(record['name'])}</td><td>{_esc(record['field'])}</td>{cells}</tr>")
    return f'<table class="per-image">\n<thead>{head}</thead>\n<tbody>\n' + "\n".join(rows) + "\n</tbody>\n</table>"


def _number_cell(metric: str, value: float | None) -> str:
    exact = "null" if value is None else repr(float(value))
    return f'<td class="n" data-value="{exact}">{_esc(format_metric(metric, value))}</td>'


def _curves_section(run_dir: str | os.PathLike | None) -> tuple[str, str, str]:
    """Losses and validation scores against generator steps, from the run's CSV logs."""
    if run_dir is None:
        return "curves", "Training curves", '<p class="note">No training logs beside this model (it is not in its run folder).</p>'
    logs = Path(run_dir) / "logs" / "csv"
    rows = read_run_log(run_dir)
    if not any(k.startswith("train/") for r in rows for k in r):
        return "curves", "Training curves", f'<p class="note">No training logs in <code>{_esc(logs)}</code>.</p>'
    caption = (f"From <code>{_esc(logs)}</code> ({sum('val/psnr' in r for r in rows)} validation(s)). Validation "
               "scores are on central crops of the validation fields, under the evaluation's normalisation.")  # fmt: skip
    return "curves", "Training curves", f"<figure>{_img(_curves_png(rows), 'training curves')}<figcaption>{caption}</figcaption></figure>"


def _curves_png(rows: list[dict[str, float]]) -> bytes:
    """Three panels: the logged training losses (log scale where all are positive), validation PSNR and SSIM."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, psnr_ax, ssim_ax = fig.subplots(1, 3)
    losses = sorted({k for r in rows for k in r if k.startswith(("train/g_", "train/d_"))})  # not the logged schedules
    for key in losses:
        steps, values = zip(*[(r["step"], r[key]) for r in rows if key in r and "step" in r])
        loss_ax.plot(steps, values, lw=1, marker="." if len(steps) < 30 else None, label=key.removeprefix("train/"))
    if all(r[k] > 0 for r in rows for k in losses if k in r):
        loss_ax.set_yscale("log")
    loss_ax.legend(fontsize=8)
    val = [r for r in rows if "val/psnr" in r]
    val_steps = [r.get("time/generator_steps", r.get("step", 0.0)) for r in val]
    psnr_ax.plot(val_steps, [r["val/psnr"] for r in val], "o-", color="tab:blue")
    ssim_ax.plot(val_steps, [r["val/ssim"] for r in val], "o-", color="tab:green")
    for ax, title in ((loss_ax, "training losses"), (psnr_ax, "validation PSNR (dB)"), (ssim_ax, "validation SSIM")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("generator step", fontsize=9)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _data_section(sources: Mapping[str, Any], package: ModelPackage, evaluation: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """Where the training pairs came from, the fields and pairs of each set, and for an evaluation the fields it scored."""
    data = package.provenance.training_data
    split = data.split if data is not None else {}
    known = [[k, _text(v)] for k, v in sources.items() if v is not None]
    parts = ["<h3>Training pairs</h3>", _table(None, known, css="sources")] if known else []
    rows = [[name, str(len(part.get("fields", []))), str(len(part.get("names", []))), ", ".join(part.get("fields", []))]
            for name, part in split.items()]  # fmt: skip
    parts += ["<h3>Split by field</h3>", '<p class="note">Sets are split by field of view, never by image or patch: no field is in two sets.</p>']
    if evaluation is not None:
        scored = sorted({r["field"] for r in evaluation["per_image"]})
        rows.append(["evaluated here", str(len(scored)), str(len(evaluation["per_image"])), ", ".join(scored)])
        seen = sorted(set(scored) & {f for name in ("train", "val") for f in split.get(name, {}).get("fields", [])})
        if seen:
            parts.append(f'<p class="warn">Field(s) used in training were scored here: {_esc(", ".join(seen))}. '
                         "Scores on them overstate what the model does on new fields.</p>")  # fmt: skip
    if rows:
        parts.append(_table(["set", "fields", "pairs", "field ids"], rows, css="split", numeric=(1, 2), wrapped=(3,)))
    else:
        parts.append('<p class="note">The package records no training data.</p>')
    return "data", "Data and split by field", "\n".join(parts)


def _overlays_section(pairs: Mapping[str, Sequence[PairPaths]]) -> tuple[str, str, str]:
    """Thumbnails of the registration overlays of the pairs used, one per field."""
    found = [(name, pair, path) for name, group in pairs.items() for pair in group if (path := overlay_path(pair)) is not None]
    if not found:
        text = ("No registration overlays: these pairs were given already registered (<code>--lq</code>/<code>--hq</code> "
                "folders or a CSV), not made by <code>confocalize register</code>.")  # fmt: skip
        return "overlays", "Registration overlays", f'<p class="note">{text}</p>'
    shown: dict[str, tuple[str, PairPaths, Path]] = {}
    for name, pair, path in found:
        if pair.field not in shown and len(shown) < MAX_OVERLAYS:
            shown[pair.field] = (name, pair, path)
    tiles = []
    for name, pair, path in shown.values():
        caption = f"{pair.name} (field {pair.field}, {name})" if pair.field != pair.name else f"{pair.name} ({name})"
        tiles.append(f"<figure>{_img(_thumbnail(path), 'overlay ' + pair.name)}<figcaption>{_esc(caption)}</figcaption></figure>")
    folders = sorted({str(path.parent) for _, _, path in found})
    intro = (f"<p>Magenta: LQ; green: HQ registered onto the LQ grid; white or grey where they agree. {len(shown)} of "
             f"{len(found)} overlay(s) shown, one per field; all are in <code>{_esc(', '.join(folders))}</code>.</p>")  # fmt: skip
    return "overlays", "Registration overlays", intro + '\n<div class="grid">\n' + "\n".join(tiles) + "\n</div>"


def _model_section(summary: Mapping[str, Mapping[str, Any]]) -> tuple[str, str, str]:
    """The package's identity and provenance, as ``confocalize info`` shows them (``package.package_summary``)."""
    titles = {"package": "Package", "network": "Network", "lq_system": "LQ system", "hq_system": "HQ system",
              "training_run": "Training run", "lineage": "Lineage",
              "metrics": "Metrics recorded in the package", "uncertainty_calibration": "Uncertainty calibration"}  # fmt: skip
    blocks = []
    for key, content in summary.items():
        items = [(k, v) for k, v in _flatten(content) if v is not None]
        if items:
            blocks.append(f"<div><h3>{_esc(titles.get(key, key))}</h3>\n{_table(None, [[k, _text(v)] for k, v in items])}</div>")
    note = ('<p class="note">The package hash identifies the content (<code>sha256sum model.json weights.safetensors | sha256sum</code>); '
            "it is no signature: a recipient compares it with the hash the sender gives.</p>")  # fmt: skip
    return "model", "Model and provenance", note + '\n<div class="columns">\n' + "\n".join(blocks) + "\n</div>"


def _settings_section(package: ModelPackage) -> tuple[str, str, str]:
    """The run's full training config, folded."""
    config = package.provenance.config
    if not config:
        return "settings", "Settings", '<p class="note">The package records no training config.</p>'
    rows = [[k, _text(v)] for k, v in _flatten(config)]
    table = _table(["setting", "value"], rows, css="settings", wrapped=(1,))
    return "settings", "Settings", f"<details><summary>All {len(rows)} training settings of the run</summary>\n{table}\n</details>"


# --- HTML pieces ----------------------------------------------------------------------------------


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{_esc(alt)}">'


def _thumbnail(path: Path) -> bytes:
    """An overlay PNG shrunk to at most THUMBNAIL pixels on its longer edge."""
    from PIL import Image as PILImage

    with PILImage.open(path) as image:
        rgb = image.convert("RGB")
    rgb.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = BytesIO()
    rgb.save(buffer, format="PNG")
    return buffer.getvalue()


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[str]], *, css: str = "", numeric: Sequence[int] = (),
           wrapped: Sequence[int] = ()) -> str:  # fmt: skip
    """A table of plain texts (escaped here); ``numeric`` columns right-aligned, ``wrapped`` ones long lists.
    Without a header it is a key-value table, whose values break anywhere (hashes, paths, commands)."""

    def cell(i: int, text: str) -> str:
        cls = "n" if i in numeric else "list" if i in wrapped else "value" if header is None and i > 0 else ""
        return f'<td class="{cls}">{_esc(text)}</td>' if cls else f"<td>{_esc(text)}</td>"

    head = "<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr></thead>\n" if header else ""
    body = "\n".join("<tr>" + "".join(cell(i, text) for i, text in enumerate(row)) + "</tr>" for row in rows)
    attribute = f' class="{css}"' if css else ""
    return f"<table{attribute}>\n{head}<tbody>\n{body}\n</tbody>\n</table>"


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested mappings as ``("a.b.c", value)`` pairs, in order; lists stay values."""
    if not isinstance(obj, Mapping):
        return [(prefix, obj)]
    items: list[tuple[str, Any]] = []
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        items += _flatten(value, name) if isinstance(value, Mapping) and value else [(name, value)]
    return items


def _text(value: Any) -> str:
    """A setting or provenance value in words: numbers to 4 significant digits, lists joined."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(v) for v in value) or "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_text(v)}" for k, v in value.items()) or "-"
    return str(value)
