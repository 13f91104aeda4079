"""The ``confocalize`` command line: parse, call the API, print. No logic lives here."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from confocalize.config import TrainConfig
    from confocalize.package import ModelPackage
    from confocalize.trust import TrustedEnhancer

from confocalize import __version__
from confocalize.errors import ConfocalizeError

console = Console(stderr=True)
out = Console()

ProgressCallback = Callable[[int, int], None]


PLAIN_PROGRESS_EVERY_S = 30.0


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[ProgressCallback]:
    """A rich progress bar driven by ``callback(done, total)``; plain lines when stderr is not a terminal."""
    if not console.is_terminal:
        yield _plain_progress(description)
        return
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _plain_progress(description: str) -> ProgressCallback:
    """``callback(done, total)`` printing ``description: done/total`` at most every 30 s, and at the end."""
    start = last = time.monotonic()

    def update(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if done >= total or now - last >= PLAIN_PROGRESS_EVERY_S:
            last = now
            print(f"{description}: {done}/{total} after {now - start:.0f} s", file=sys.stderr, flush=True)

    return update


def _print_rows(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    table = Table(title=title, show_header=any(header))
    for name in header:
        table.add_column(str(name), overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    out.print(table)


# --- sub-commands -------------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> None:
    from confocalize.simulate import SimulationParams, simulate

    movie = {"drift": tuple(args.drift), "bleaching": args.bleaching} if args.frames > 1 else {}
    params = SimulationParams(**({"size": args.size} if args.size else {}), **movie)
    with progress_bar("simulate") as bar:
        simulate(args.output, n_fields=args.fields, params=params, seed=args.seed, progress=bar, frames=args.frames)
    what = f"time-lapse pairs of {args.frames} frames" if args.frames > 1 else "pairs"
    out.print(f"wrote {args.fields} wide-field/confocal {what} and truth.json to {args.output}")


def cmd_register(args: argparse.Namespace) -> None:
    from confocalize.pairs import match_by_name, read_pairs_csv, register_folder, summary_rows
    from confocalize.register import RegistrationOptions

    if args.pairs_csv:
        pairs = read_pairs_csv(args.pairs_csv)
    elif args.lq_dir and args.hq_dir:
        pairs = match_by_name(args.lq_dir, args.hq_dir)
    else:
        raise ConfocalizeError("give LQ_DIR and HQ_DIR, or --pairs-csv FILE")
    options = RegistrationOptions(beads=args.beads, min_overlap=args.min_overlap)
    with progress_bar("register") as bar:
        records = register_folder(
            pairs, args.output, options, field_pattern=args.field_pattern,
            lq_pixel_size=args.lq_pixel_size, hq_pixel_size=args.hq_pixel_size, progress=bar,
        )
    header, rows = summary_rows(records)
    _print_rows(f"registration of {len(records)} pairs -> {args.output}", header, rows)
    ok = sum(r.status == "ok" for r in records)
    if ok == 0:
        raise ConfocalizeError(f"{args.output}: no pair could be registered; see the reasons above and the overlays folder")


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The config file (or defaults) with the command-line options laid over it."""
    from confocalize.config import TrainConfig, load_config, parse_config

    base = load_config(args.config) if args.config else TrainConfig()
    raw = base.model_dump(exclude_unset=True)  # what the user set stays marked as set (--init-from inherits the rest)
    for section in ("data", "trainer", "provenance"):
        raw.setdefault(section, {})
    for side in ("lq_system", "hq_system"):
        raw["provenance"].setdefault(side, {})
    overrides = {
        "data": {"pairs_dir": args.pairs_dir, "lq_dir": args.lq, "hq_dir": args.hq, "pairs_csv": args.pairs_csv,
                 "field_pattern": args.field_pattern, "lq_pixel_size": args.lq_pixel_size},
        "trainer": {"max_steps": args.steps, "max_time_minutes": args.minutes, "devices": args.devices,
                    "num_nodes": args.num_nodes, "strategy": args.strategy, "accelerator": args.accelerator},
    }
    for section, values in overrides.items():
        raw[section].update({k: v for k, v in values.items() if v is not None})
    if args.minutes is not None and args.steps is None and "max_steps" not in base.trainer.model_fields_set:
        raw["trainer"]["max_steps"] = None  # --minutes alone: the wall time is the budget, not the default step count
    for side in ("lq_system", "hq_system"):
        raw["provenance"][side].update(_key_values(getattr(args, side), f"--{side.replace('_', '-')}"))
    if args.output is not None:
        raw["output_dir"] = args.output
    if args.init_from is not None:
        raw["init_from"] = args.init_from
    return parse_config(raw, source="command line")


def _key_values(items: Sequence[str] | None, option: str) -> dict[str, str]:
    """``KEY=VALUE`` options as a mapping (the config validates keys and values)."""
    pairs: dict[str, str] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfocalizeError(f"{option} {item!r}: expected KEY=VALUE, e.g. {option} objective_na=1.4")
        pairs[key.strip()] = value.strip()
    return pairs


def cmd_train(args: argparse.Namespace) -> None:
    from confocalize.report import REPORT
    from confocalize.train import fit

    cfg = _train_config(args)
    result = fit(cfg, resume=args.resume)
    out.print(f"model written to {result.model_dir} (best validation: "
              + ", ".join(f"{k} {v:.4g}" for k, v in result.best_val.items()) + f"); report: {result.output_dir / REPORT}")


def cmd_enhance(args: argparse.Namespace) -> None:
    from confocalize.package import load_package
    from confocalize.predict import enhance_files

    if args.lq_psf and not args.consistency:
        raise ConfocalizeError("--lq-psf is the PSF of the consistency check; add --consistency")
    package = load_package(args.model)
    if args.dask or args.format == "zarr" or args.workers or args.scheduler:
        _enhance_chunked(args, package)
        return
    enhancer = _trusted_enhancer(args, package)
    with progress_bar("enhance") as bar:
        summary = enhance_files(
            package, args.inputs, args.output, dtype=args.dtype, pixel_size=args.pixel_size, axes=args.axes,
            tile=args.tile, progress=bar, resample=args.resample, keep_going=args.keep_going, enhancer=enhancer,
            backend=args.backend, precision=args.precision,
        )
    for report in enhancer.reports if enhancer else ():
        out.print(report.line(), highlight=False, soft_wrap=True)
    if summary.failed:
        _print_rows("not enhanced", ["file", "reason"], [[f.path, f.reason] for f in summary.failed])
    out.print(f"{summary.describe()}; outputs in {args.output}")
    if summary.failed:
        raise ConfocalizeError(
            f"{len(summary.failed)} file(s) failed (listed above), the others were enhanced; fix or remove them and "
            "re-run: complete outputs are skipped"
        )


def _trusted_enhancer(args: argparse.Namespace, package: ModelPackage) -> TrustedEnhancer | None:
    """``--uncertainty``/``--consistency``: the enhancer that adds their maps; ``None`` without them."""
    from confocalize.trust import TrustedEnhancer

    if not (args.uncertainty or args.consistency):
        return None
    return TrustedEnhancer(package, args.uncertainty, args.consistency, args.lq_psf, args.tile, resample=args.resample)


def _enhance_chunked(args: argparse.Namespace, package: ModelPackage) -> None:
    """``enhance --format zarr`` or ``--dask``: chunk by chunk into OME-Zarr, in this process or on a dask cluster."""
    from confocalize.chunked import dask_client, enhance_to_zarr
    from confocalize.trust import consistency_psf, stored_reports

    flags = (("--resample", args.resample), ("--keep-going", args.keep_going))
    unsupported = [flag for flag, on in flags if on]
    if unsupported:
        raise ConfocalizeError(f"{', '.join(unsupported)}: not available with --format zarr or --dask; enhance those files without")
    if (args.workers or args.scheduler) and not args.dask:
        raise ConfocalizeError("--workers and --scheduler choose the dask cluster; add --dask")
    psf = consistency_psf(package, args.lq_psf) if args.consistency else None  # refused before any work
    cluster = dask_client(args.workers, args.scheduler) if args.dask else contextlib.nullcontext()
    with cluster as client, progress_bar("enhance") as bar:
        written = enhance_to_zarr(
            package, args.inputs, args.output, client=client, dtype=args.dtype, pixel_size=args.pixel_size,
            axes=args.axes, tile=args.tile, chunk=args.chunk, progress=bar, backend=args.backend, uncertainty=args.uncertainty,
            consistency=psf, precision=args.precision,
        )  # fmt: skip
    reports = stored_reports(package, written)
    for report in reports:
        out.print(report.line(), highlight=False, soft_wrap=True)
    maps = [name for name, on in (("uncertainty", args.uncertainty), ("consistency", args.consistency)) if on]
    n_outputs = len(written) // (1 + len(maps))
    out.print(f"wrote {n_outputs} OME-Zarr image(s) to {args.output}" + (f", each with its {' and '.join(maps)} map" if maps else ""))


def cmd_info(args: argparse.Namespace) -> None:
    from confocalize.package import load_package, package_summary

    summary = package_summary(load_package(args.package))
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=2) + "\n")
        return
    for section, values in summary.items():
        title = section.replace("_", " ")
        if values and all(isinstance(v, dict) for v in values.values()):  # a table such as the metrics
            columns = list(dict.fromkeys(k for row in values.values() for k in row))
            _print_rows(title, ["", *columns], [[name, *(row.get(c, "") for c in columns)] for name, row in values.items()])
        else:
            _print_rows(title, ["", ""], [[k, v] for k, v in values.items() if v is not None] or [["(not recorded)", ""]])


def cmd_export(args: argparse.Namespace) -> None:
    from confocalize.export import export_bioimageio, export_onnx
    from confocalize.io import read_image
    from confocalize.package import load_package, save_package

    if not (args.zip or args.bioimageio or args.onnx):
        raise ConfocalizeError("nothing to export; give --zip, --bioimageio and/or --onnx with an output path")
    package = load_package(args.package)
    if args.zip:
        out.print(f"model package: {save_package(package, args.zip)}")
    if args.onnx:
        out.print(f"ONNX model: {export_onnx(package, args.onnx)}")
    if args.bioimageio:
        sample = read_image(args.sample) if args.sample else None
        path = export_bioimageio(package, args.bioimageio, sample=sample, authors=args.author or (), license=args.license)
        out.print(f"bioimage.io model: {path}")


def cmd_models(args: argparse.Namespace) -> None:
    from confocalize.package import builtin_names, load_package

    names = builtin_names()
    if not names:
        out.print("no built-in models in this installation")
        return
    for name in names:
        pkg = load_package(name)
        prov, run = pkg.provenance, pkg.provenance.training
        data = prov.training_data.source if prov.training_data else {}
        rows = [
            ["LQ -> HQ", f"{prov.lq_system.modality or '?'} -> {prov.hq_system.modality or '?'}"],
            ["LQ pixel size", f"{pkg.lq_pixel_size} µm" if pkg.lq_pixel_size else "not recorded"],
            ["channels in -> out", f"{pkg.in_channels} -> {pkg.out_channels}"],
            ["training data", ", ".join(f"{k} {v}" for k, v in data.items()) or "not recorded"],
            ["data licence", prov.data_licence or "not recorded"],
            ["training", f"{run.steps} steps, {run.seconds / 60:.1f} min on {run.hardware}" if run else "not recorded"],
            *([[f"score {k}", v] for k, v in run.scores.items()] if run else []),
        ]
        _print_rows(f"{name}  (give this name wherever a model package is asked for)", ["", ""], rows)


def _given_pairs(args: argparse.Namespace) -> list:
    """The pairs of ``_add_pair_source``'s options, only those of ``--split``'s ``--split-set`` when given."""
    from confocalize.data import read_split
    from confocalize.pairs import collect_pairs

    pairs = collect_pairs(pairs_dir=args.pairs_dir, lq_dir=args.lq, hq_dir=args.hq, pairs_csv=args.pairs_csv,
                          field_pattern=args.field_pattern)
    if args.split:
        held_out = {p.name for p in read_split(args.split)[args.split_set]}
        pairs = [p for p in pairs if p.name in held_out]
        if not pairs:
            raise ConfocalizeError(f"{args.split}: none of its '{args.split_set}' pairs are in the given data")
    return pairs


def cmd_evaluate(args: argparse.Namespace) -> None:
    from confocalize.evaluate import evaluate_model
    from confocalize.package import load_package
    from confocalize.report import REPORT

    pairs = _given_pairs(args)
    package = load_package(args.model)
    with progress_bar("evaluate") as bar:
        result = evaluate_model(package, pairs, args.output, lq_pixel_size=args.lq_pixel_size, progress=bar,
                                uncertainty=args.uncertainty)  # fmt: skip
    _print_metrics(result, f"median over {result['n_images']} held-out images")
    if "per_frame" in result:
        rows = [[r["name"], *(f"{r[f'{m}_vs_hq'][k]:{f}}" for k, f in (("psnr", ".2f"), ("ssim", ".3f")) for m in ("lq", "generated"))]
                for r in result["per_frame"]]  # fmt: skip
        _print_rows("time-lapses frame by frame (a movie's score above is the median over its frames)",
                    ["frame", "LQ PSNR", "generated PSNR", "LQ SSIM", "generated SSIM"], rows)  # fmt: skip
    if "uncertainty" in result:
        block = result["uncertainty"]
        rows = [[r["name"], f"{r['spearman']:.3f}", f"{r['median_uncertainty']:.4f}", f"{r['rms_error']:.4f}"] for r in block["per_image"]]
        kind = "calibrated" if package.uncertainty else "raw spread: the model has no calibration"
        _print_rows(f"uncertainty vs |error| ({kind}): median Spearman {block['median_spearman']:.3f}",
                    ["image", "Spearman", "median uncertainty", "RMS error"], rows)  # fmt: skip
    out.print(f"metrics: {Path(args.output) / 'metrics.json'}  figure: {Path(args.output) / 'figure.png'}  report: {Path(args.output) / REPORT}")


def cmd_calibrate(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from confocalize.package import load_package, save_package
    from confocalize.uncertainty import calibrate, calibration_pairs

    if args.output.exists():
        raise ConfocalizeError(f"{args.output}: already exists; give a new path for the calibrated package (the model given is never changed)")
    package = load_package(args.model)
    pairs = calibration_pairs(package, _given_pairs(args), args.max_pairs)
    names = ", ".join(p.name for p in pairs)
    with progress_bar("calibrate") as bar:
        cal = calibrate(package, pairs, data=f"held-out pairs given to confocalize calibrate: {names}", lq_pixel_size=args.lq_pixel_size, progress=bar)
    path = save_package(replace(package, uncertainty=cal), args.output)
    old = package.uncertainty
    fields = (("images", "n_images", "d"), ("scale (spread)", "scale", ".3f"), ("signal", "signal", ".5f"), ("floor", "floor", ".4f"),
              ("Spearman on its calibration images", "spearman", ".3f"), ("flag above median uncertainty", "median_p95", ".4f"))  # fmt: skip
    rows = [[label, *("" if c is None or getattr(c, key) is None else format(getattr(c, key), spec) for c in (cal, old))]
            for label, key, spec in fields]  # fmt: skip
    _print_rows(f"uncertainty calibration on {len(pairs)} held-out pair(s)", ["", "new", "the model's own" if old else "(it had none)"], rows)
    out.print(f"calibrated package: {path}")


def cmd_demo(args: argparse.Namespace) -> None:
    from confocalize.demo import run_demo
    from confocalize.report import REPORT

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        minutes = args.minutes if args.minutes is not None or args.steps is not None else 5.0
        result = run_demo(args.output, minutes=minutes, n_fields=args.fields, seed=args.seed, progress=report, steps=args.steps)
    _print_metrics(result.metrics, f"confocalize demo: median over {result.metrics['n_images']} held-out fields")
    out.print(f"wall time {result.seconds / 60:.1f} min; metrics: {result.metrics_path}; figure: {result.figure_path}; "
              f"report: {result.output_dir / REPORT}")


def _print_metrics(result: dict, title: str) -> None:
    from confocalize.report import table_rows

    header, rows = table_rows(result)
    _print_rows(title, header, rows)
    out.print(f"[dim]normalisation: {result['normalisation']}[/dim]")


# --- parser -------------------------------------------------------------------------------------


def _add_pair_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("pairs_dir", nargs="?", type=Path, help="pairs folder made by 'confocalize register'")
    p.add_argument("--lq", type=Path, help="folder of already-registered LQ images (matched to --hq by name)")
    p.add_argument("--hq", type=Path, help="folder of already-registered HQ images")
    p.add_argument("--pairs-csv", type=Path, help="CSV with columns lq,hq[,field] of already-registered pairs")
    p.add_argument("--field-pattern", help=r"regex whose first group is the field-of-view id, e.g. '^(\d+)_'")
    p.add_argument("--lq-pixel-size", type=float, help="LQ pixel size in µm for files without metadata")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per step of the chain."""
    parser = argparse.ArgumentParser(prog="confocalize", description="Wide-field to confocal enhancement with a conditional GAN.")
    parser.add_argument("--version", action="version", version=f"confocalize {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate wide-field/confocal pairs of synthetic cells (the embedded default data)")
    p.add_argument("output", type=Path)
    p.add_argument("--fields", type=int, default=8, help="fields of view (default 8)")
    p.add_argument("--size", type=int, help="LQ image edge in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=1, help="time points per field: >1 writes time-lapses (TYX)")
    p.add_argument("--drift", type=float, nargs=2, default=(0.0, 0.0), metavar=("X", "Y"),
                   help="with --frames: sample motion per frame in µm (default 0 0: a static sample)")
    p.add_argument("--bleaching", type=float, default=0.01, help="with --frames: fraction of fluorescence lost per frame (default 0.01)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("register", help="register LQ/HQ pairs from two microscopes into a pairs folder")
    p.add_argument("lq_dir", nargs="?", type=Path)
    p.add_argument("hq_dir", nargs="?", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="pairs folder to write")
    p.add_argument("--pairs-csv", type=Path, help="CSV with columns lq,hq instead of matching names")
    p.add_argument("--lq-pixel-size", type=float, help="µm, for LQ files without metadata")
    p.add_argument("--hq-pixel-size", type=float, help="µm, for HQ files without metadata")
    p.add_argument("--field-pattern", help="regex whose first group is the field-of-view id")
    p.add_argument("--beads", action="store_true", help="fit the transform to matched bright point sources")
    p.add_argument("--min-overlap", type=float, default=0.3, help="refuse pairs overlapping less (fraction)")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("train", help="train a model on a pairs folder (or registered folders)")
    _add_pair_source(p)
    p.add_argument("--config", type=Path, help="YAML with settings (see config.py)")
    p.add_argument("-o", "--output", type=Path, help="run folder (default from config: runs/latest)")
    p.add_argument("--steps", type=int, help="generator steps")
    p.add_argument("--minutes", type=float, help="stop after this wall time; without --steps it is the whole budget (no step cap)")
    p.add_argument("--resume", type=Path, help="checkpoint to continue from (e.g. RUN/checkpoints/last.ckpt)")
    p.add_argument("--init-from", metavar="PACKAGE", help="fine-tune: start from this model's generator (folder, .zip or built-in name)")
    p.add_argument("--accelerator", help="cpu, gpu or auto")
    p.add_argument("--devices", help="number of devices/processes per node")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--strategy", help="auto, ddp, ddp_spawn, ...")
    for side, example in (("lq", "modality=wide-field"), ("hq", "objective_na=1.4")):
        p.add_argument(
            f"--{side}-system", action="append", metavar="KEY=VALUE",
            help=f"describe the {side.upper()} microscope for the package (repeatable), e.g. {example}; keys: "
            "modality, microscope, objective_na, magnification, immersion, pixel_size_um, excitation_nm, emission_nm, "
            "pinhole_au, detector, institute, notes",
        )  # fmt: skip
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("enhance", help="enhance images (files or folders) with a trained model")
    p.add_argument("model", type=Path, help="model package: folder, .zip or built-in name (confocalize models)")
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--dtype", choices=["float32", "uint16"], default="float32")
    p.add_argument("--pixel-size", type=float, help="µm, for inputs without metadata")
    p.add_argument("--axes", help="override the axes of the inputs (YX, ZYX, CYX, CZYX; a leading T for a time-lapse, e.g. TYX)")
    p.add_argument("--tile", type=int, default=1024, help="tile edge in pixels, halo included (memory vs speed)")
    p.add_argument(
        "--backend", choices=["auto", "torch", "onnxruntime"], default="auto",
        help="inference engine: auto (ONNX Runtime on the CPU when installed, else PyTorch), torch or onnxruntime",
    )  # fmt: skip
    p.add_argument(
        "--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
        help="fp32 (default); bf16/fp16: PyTorch autocast (with auto: PyTorch), for GPUs; benchmarks/precision.py "
        "measures its effect on quality and speed",
    )  # fmt: skip
    p.add_argument("--resample", action="store_true", help="enhance on the model's pixel size and resample back")
    p.add_argument(
        "--keep-going", action=argparse.BooleanOptionalAction, default=None,
        help="skip files that cannot be enhanced, list them and exit 2 at the end (default: on for folders)",
    )  # fmt: skip
    p.add_argument(
        "--format", choices=["tiff", "zarr"], default="tiff",
        help="tiff: NAME.ome.tif; zarr: NAME.ome.zarr, streamed chunk by chunk (images larger than memory, Zarr inputs)",
    )  # fmt: skip
    p.add_argument("--dask", action="store_true", help="chunk by chunk on a dask cluster, into OME-Zarr (local or --scheduler)")
    p.add_argument("--workers", type=int, help="with --dask: processes of the local cluster (default: one per CPU core)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="with --dask: a running dask scheduler, e.g. tcp://host:8786")
    p.add_argument("--chunk", type=int, help="zarr/dask: chunk edge in pixels (default: the tile less twice the halo)")
    p.add_argument(
        "--uncertainty", action="store_true",
        help="write NAME.uncertainty.ome.tif (with --format zarr or --dask: NAME.uncertainty.ome.zarr), the calibrated "
        "per-pixel uncertainty (8x the compute); the output is then the mean over the 8 flips/rotations of the input",
    )  # fmt: skip
    p.add_argument(
        "--consistency", action="store_true",
        help="write NAME.consistency.ome.tif (zarr/dask: .ome.zarr): the output re-imaged through the LQ microscope minus "
        "the input, in noise units (needs the model's recorded LQ optics or --lq-psf)",
    )  # fmt: skip
    p.add_argument("--lq-psf", type=Path, metavar="FILE", help="with --consistency: the LQ PSF image at the input's sampling")
    p.set_defaults(func=cmd_enhance)

    p = sub.add_parser("info", help="check a model package and print its systems, training data and metrics")
    p.add_argument("package", type=Path, help="model package: folder, .zip or built-in name (confocalize models)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="write a model package as one .zip, a bioimage.io model or ONNX")
    p.add_argument("package", type=Path, help="model package: folder, .zip or built-in name (confocalize models)")
    p.add_argument("--zip", type=Path, metavar="OUT.zip", help="the package as one file, to send to a partner")
    p.add_argument("--bioimageio", type=Path, metavar="OUT.zip", help="bioimage.io model (state dict + TorchScript)")
    p.add_argument("--onnx", type=Path, metavar="OUT.onnx", help="ONNX model; input: normalised (N, C, H, W) float32")
    p.add_argument("--sample", type=Path, help="LQ image whose centre becomes the bioimage.io test and cover image")
    p.add_argument("--author", action="append", help="bioimage.io author name (repeatable)")
    p.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the bioimage.io model (default CC-BY-4.0)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("models", help="list the model packages that ship with confocalize")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("evaluate", help="score a model on held-out pairs against the raw LQ")
    p.add_argument("model", type=Path, help="model package: folder, .zip or built-in name (confocalize models)")
    _add_pair_source(p)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--split", type=Path, help="split.json of a training run: evaluate only its held-out pairs")
    p.add_argument("--split-set", default="test", choices=["train", "val", "test"])
    p.add_argument("--uncertainty", action="store_true",
                   help="enhance with uncertainty (8 flips/rotations) and report how it ranks the errors (Spearman per image)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("calibrate", help="fit a model's uncertainty on your own held-out pairs; writes a new package")
    p.add_argument("model", type=Path, help="model package: folder, .zip or built-in name (confocalize models)")
    _add_pair_source(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="the calibrated package (folder or .zip; must not exist)")
    p.add_argument("--split", type=Path, help="split.json of the model's training run: calibrate on its --split-set pairs only")
    p.add_argument("--split-set", default="val", choices=["val", "test"])
    p.add_argument("--max-pairs", type=int, default=16, help="pairs used at most, evenly spread over those given (all are held in memory)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("demo", help="simulate -> register -> train -> enhance -> evaluate on the embedded default")
    p.add_argument("-o", "--output", type=Path, default=Path("demo-output"))
    p.add_argument("--minutes", type=float, default=None, help="training wall-time budget (default 5 without --steps)")
    p.add_argument("--steps", type=int, default=None, help="training steps instead: a budget that does not depend on the speed or load of the machine")
    p.add_argument("--fields", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: user errors print one line and exit 2 (an interrupted training: 130/143); nothing else is swallowed."""
    args = build_parser().parse_args(argv)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            args.func(args)
    except ConfocalizeError as exc:
        console.print(f"[red]confocalize: error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        console.print("confocalize: interrupted")
        return 130
    return 0


def _show_warning(message: Warning | str, *_: object, **__: object) -> None:
    """Warnings as one line, like errors."""
    console.print(f"[yellow]confocalize: warning:[/yellow] {escape(str(message))}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
