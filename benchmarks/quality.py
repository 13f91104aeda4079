"""Quality: every method on the same held-out fields of view, scored by ``confocalize.metrics``.

Tracks (each split by field of view, reported separately):

A. W2S wide-field denoising: single frame -> 400-frame average, official split (fields 001-080
   train, 081-120 test), all three channels.
B. Deep-DSCM confocal -> STED (resolution gain across modalities): test fields Micro 4, 5 and
   Mito 0, 1 are never seen in training.
C. Cross-system wide-field -> confocal, simulated: the real HQ images of A and B are the objects of
   :func:`confocalize.simulate.render_pair` (wide-field haze and blur, camera noise, another pixel
   size, shift and rotation). Training pairs are registered with ``register_folder`` (what
   ``confocalize register`` runs); test fields are scored against the noise-free confocal
   rendering of the same object on the LQ grid.

Methods: raw LQ; classical (Gaussian, non-local means, Richardson-Lucy, BM3D; parameters tuned on
training fields only, see :mod:`confocalize.baselines`); learned (L1-only U-Net, reference pix2pix,
the confocalize default before the recipe, and today's default), each trained by ``train.fit`` for
the same budget: a wall time or a number of steps, stated in the results (patches 256², batch 4, as the
reference U-Net needs; the L1 U-Net and the default: the TrainConfig defaults, 64², batch 32);
and the L1 U-Net and the default again, each output averaged over the 8 flips/rotations of its input
(``*_x8``: what ``enhance --uncertainty`` writes, 8x the inference, the same trained models).
Every score comes from :func:`confocalize.evaluate.evaluate_pairs`; resolution from the Fourier ring
correlation against HQ (``resolution.py``).

Learning curves: every learned model validates on held-out fields of its training set every
``--val-every`` generator steps; the curves (validation PSNR/SSIM against steps and training
seconds) are drawn against the classical methods scored on the same validation images, and the
first validation that passes the track's bar (BM3D on A, Richardson-Lucy on B, the best classical
method on C) is reported.

    python benchmarks/quality.py                        # full: ~90 min on 2 cores (4 min per model)
    python benchmarks/quality.py --minutes-per-model 20 # a fairer chance for the learned models
    python benchmarks/quality.py --steps-per-model 2000 --jobs 3  # on a GPU machine: tracks in parallel
    python benchmarks/quality.py --quick                # smoke run of every path (~5 min)
    python benchmarks/quality.py --minutes-per-model 9 --w2s-every 4 4 --tracks A --keep-others
        # track A again (a new default); B and C stay as stored, each track naming the commit it ran at

Writes ``benchmarks/results/quality.json`` and, per track, ``benchmarks/results/quality/TRACK/``
(``metrics.json``, ``metrics.csv``, ``figure.png`` with one test field per row, ``curves.png``).
"""

from __future__ import annotations

import argparse
import csv
import functools
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common import (
    DATA, DEFAULT, GENERATORS, LABELS, OLD_DEFAULT, OLD_DISCRIMINATOR, OLD_LOSS, OLD_OPTIM, OLD_PATCH_SIGNAL, REFERENCE, RESULTS, architecture,
    commit, kept_results, learning_curve, print_table, quiet_lightning, write_results,
)  # fmt: skip
from confocalize import baselines
from confocalize.config import DataConfig, DiscriminatorConfig, LossConfig, OptimConfig, TrainConfig, TrainerConfig
from confocalize.data import VALIDATION_MAX_SIZE, central_span, read_split
from confocalize.metrics import compare
from confocalize.evaluate import GENERATED, LQ, evaluate_pairs
from confocalize.io import read_image, write_image
from confocalize.metrics import METRIC_NAMES, NORMALISATION
from confocalize.package import ModelPackage, load_package
from confocalize.pairs import PairPaths, collect_pairs, match_by_name, register_folder
from confocalize.predict import enhance_image
from confocalize.register import RegistrationOptions
from confocalize.simulate import SimulationParams, object_from_image, render_pair
from confocalize.train import cpu_model, fit
from confocalize.uncertainty import enhance_with_uncertainty
from resolution import frc_resolution

PATCH = 256  # training patch edge of the reference and the old default (the reference U-Net needs 256)
BATCH = 4
VAL_FRACTION = 0.1  # validation fields (at least one) for the learning curves
TUNING_IMAGES = 6  # training images the classical parameters are tuned on (spread over the training fields)
TUNING_MAX_SIZE = 512  # tuning on central crops of at most this edge (BM3D takes ~30 s on a 1000² image)
BM3D_TUNING_IMAGES = 3  # BM3D is ~100x slower than the other methods: fewer tuning images
DSCM_TEST = ("Micro_4", "Micro_5", "Mito_0", "Mito_1")
SIM_PARAMS = SimulationParams(size=384, shift_range=(-1.0, 1.0))  # LQ 384 px at 0.1 µm, HQ at 0.07 µm, ±3°
OBJECT_PIXEL_SIZE = {"A": 0.08, "B": 0.04}  # µm given to the real HQ images used as objects in track C


@dataclass(frozen=True)
class Track:
    """Training and held-out test pairs of one data set, with what the classical methods need."""

    name: str
    title: str
    train: list[PairPaths]
    test: list[PairPaths]
    pixel_size: float | None = None  # µm of the LQ grid, where known
    psf: np.ndarray | None = None  # wide-field PSF for Richardson-Lucy; None: fit a Gaussian on training pairs
    notes: str = ""


@dataclass(frozen=True)
class Learned:
    """A learned method: which generator, losses, optimiser, patch filter and discriminator."""

    generator: str
    loss: LossConfig
    optim: OptimConfig
    patch_signal: float
    description: str
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    patch_size: int = PATCH
    batch_size: int = BATCH


LEARNED = {
    "l1_unet": Learned(DEFAULT, LossConfig(adv_weight=0.0), OptimConfig(), DataConfig().patch_signal,
                       "L1-only U-Net (CARE idea): the default generator and recipe, no discriminator",
                       patch_size=DataConfig().patch_size, batch_size=DataConfig().batch_size),
    REFERENCE: Learned(REFERENCE, OLD_LOSS.model_copy(update={"gan_mode": "bce"}), OLD_OPTIM, OLD_PATCH_SIGNAL,
                       "reference pix2pix: unet_256 (ngf 64), 70x70 PatchGAN (base 64), L1 100, BCE GAN, Adam 2e-4 / 0.5",
                       OLD_DISCRIMINATOR),
    OLD_DEFAULT: Learned(OLD_DEFAULT, OLD_LOSS, OLD_OPTIM, OLD_PATCH_SIGNAL,
                         f"{LABELS[OLD_DEFAULT]}: L1 100 + LSGAN from the first step (PatchGAN base 64), Adam 2e-4 / 0.5, "
                         "constant rate, no EMA", OLD_DISCRIMINATOR),
    DEFAULT: Learned(DEFAULT, LossConfig(), OptimConfig(), DataConfig().patch_signal,
                     f"{LABELS[DEFAULT]}: TrainConfig defaults (the recipe: L1 phase for 80% of the budget, then LSGAN "
                     f"ramped in against a PatchGAN of base 32; cosine rate; EMA; {DataConfig().patch_size}² patches, batch {DataConfig().batch_size})",
                     patch_size=DataConfig().patch_size, batch_size=DataConfig().batch_size),
}
# The same trained models enhanced in their 8 flips/rotations and averaged: the output `enhance --uncertainty` writes
# (8x the inference; the models are not retrained). learned model -> the name of its averaged row.
AVERAGED = {"l1_unet": "l1_unet_x8", DEFAULT: f"{DEFAULT}_x8"}
BAR = {"A": "bm3d", "B": "richardson_lucy"}  # the classical method each track's learning curves must pass (C: the best)
@dataclass(frozen=True)
class Budget:
    """Training budget of every learned model: steps, wall minutes, or both (whichever ends first)."""

    steps: int | None
    minutes: float | None
    val_every: int = 100

    def describe(self) -> str:
        """The budget in words, for the results."""
        parts = [f"{self.steps} generator steps" if self.steps else "", f"{self.minutes:g} min wall time" if self.minutes else ""]
        return " or ".join(p for p in parts if p) + " of training per learned model (whichever ends first), then one validation and the export; steps done are listed per model"


CLASSICAL = ("gaussian", "nlm", "richardson_lucy", "bm3d")
ORDER = (LQ, *CLASSICAL, *LEARNED, *AVERAGED.values())


# --- data ---------------------------------------------------------------------------------------


def w2s_track(quick: bool, every: tuple[int, int] = (1, 1)) -> Track:
    """Track A: W2S single frame -> 400-frame average, official split by field, all channels.

    ``every`` = (n, m) keeps every n-th training and every m-th test field (a smaller copy of the data).
    """
    root = DATA / "w2s_widefield"
    train_fields = range(1, 4) if quick else range(1, 81, every[0])
    test_fields = range(81, 82) if quick else range(81, 121, every[1])

    def pairs(fields: range) -> list[PairPaths]:
        names = [f"{f:03d}_{c}" for f in fields for c in range(3)]
        return [PairPaths(n, n[:3], root / "avg1" / f"{n}.png", root / "avg400" / f"{n}.png") for n in names]

    return Track("A", "W2S wide-field denoising: 1 frame -> 400-frame average", pairs(train_fields), pairs(test_fields),
                 notes="pixel size not recorded in the files")  # fmt: skip


def dscm_pair(name: str) -> PairPaths:
    """The Deep-DSCM confocal/STED pair of field ``name`` (e.g. "Mito_3")."""
    kind, i = name.split("_")
    root = DATA / "dscm_confocal_sted" / kind
    return PairPaths(name, name, root / f"{i}_Confocal.png", root / f"{i}_STED.png")


def dscm_track(quick: bool) -> Track:
    """Track B: Deep-DSCM confocal -> STED; microtubule and mitochondria test fields never seen."""
    names = [f"Micro_{i}" for i in range(1, 6)] + [f"Mito_{i}" for i in range(6)]
    test = ("Micro_5", "Mito_1") if quick else DSCM_TEST
    return Track("B", "Deep-DSCM confocal -> STED", [dscm_pair(n) for n in names if n not in test], [dscm_pair(n) for n in test],
                 notes="pixel size not recorded in the files")  # fmt: skip


def simulated_track(a: Track, b: Track, work: Path, quick: bool, seed: int) -> Track:
    """Track C: wide-field/confocal pairs rendered from the HQ images of A and B; training pairs registered."""
    counts = {"train": (2, 1), "test": (1, 1)} if quick else {"train": (16, len(b.train)), "test": (8, len(b.test))}
    sources = {
        split: [("A", p) for p in _spread(getattr(a, split), n_a)] + [("B", p) for p in _spread(getattr(b, split), n_b)]
        for split, (n_a, n_b) in counts.items()
    }
    root = work / "C"
    for split, items in sources.items():
        render_objects(items, root / split, target="hq" if split == "train" else "clean", seed=[seed, int(split == "test")])
    n_registered, train = registered_pairs(root / "train", root / "pairs", PATCH)
    test = clean_test_pairs(root / "test")
    notes = (f"{n_registered} training pairs registered, {len(train)} usable (status ok, overlap >= {PATCH} px); "
             f"objects: W2S HQ at {OBJECT_PIXEL_SIZE['A']} µm/px, STED at {OBJECT_PIXEL_SIZE['B']} µm/px")  # fmt: skip
    return Track("C", "simulated wide-field -> confocal (real HQ images as objects)", train, test,
                 SIM_PARAMS.lq_pixel_size, baselines.widefield_psf(SIM_PARAMS), notes)  # fmt: skip


def registered_pairs(rendered: Path, out: Path, min_size: int) -> tuple[int, list[PairPaths]]:
    """Register ``rendered/lq`` against ``rendered/hq`` into the pairs folder ``out`` (what ``confocalize register``
    does); the number of pairs tried and the usable ones (status ok, overlap at least ``min_size`` px per edge)."""
    records = register_folder(match_by_name(rendered / "lq", rendered / "hq"), out, RegistrationOptions())
    usable = {r.name for r in records if r.status == "ok" and min(r.crop[2] - r.crop[0], r.crop[3] - r.crop[1]) >= min_size}
    return len(records), [p for p in collect_pairs(pairs_dir=out) if p.name in usable]


def clean_test_pairs(rendered: Path) -> list[PairPaths]:
    """Test pairs of rendered objects: the wide-field ``rendered/lq`` against the noise-free ``rendered/clean``."""
    return [PairPaths(p.stem.removesuffix(".ome"), p.stem.removesuffix(".ome"), p, rendered / "clean" / p.name)
            for p in sorted((rendered / "lq").glob("*.ome.tif"))]  # fmt: skip


def render_objects(
    items: Sequence[tuple[str, PairPaths]], out: Path, target: str, seed: list[int], params: SimulationParams = SIM_PARAMS
) -> None:
    """Render the HQ image of each (track, pair) as an object through ``params``' optics: ``out/lq``
    (wide-field) and ``out/TARGET``.

    ``target`` "hq" is the confocal camera image on its own grid, "clean" the noise-free confocal
    rendering on the LQ grid.
    """
    for i, (track, pair) in enumerate(items):
        volume, voxel = object_from_image(read_image(pair.hq).data, OBJECT_PIXEL_SIZE[track], params)
        sim = render_pair(volume, voxel, params, np.random.default_rng([*seed, i]))
        name = f"{track}_{pair.name}.ome.tif"
        write_image(out / "lq" / name, sim.lq, "YX", params.lq_pixel_size)
        if target == "hq":
            write_image(out / "hq" / name, sim.hq, "YX", params.hq_pixel_size)
        else:
            write_image(out / "clean" / name, sim.hq_clean, "YX", params.lq_pixel_size)


def _spread(pairs: Sequence[PairPaths], n: int) -> list[PairPaths]:
    """``n`` pairs evenly spread over ``pairs`` (all of them if fewer)."""
    if n >= len(pairs):
        return list(pairs)
    return [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, n)]


# --- methods ------------------------------------------------------------------------------------


def tuning_pairs(pairs: Sequence[PairPaths], n: int, max_size: int | None = None) -> list[baselines.Pair]:
    """``n`` training pairs spread over the training fields (raw LQ, raw HQ), centrally cropped to ``max_size``."""
    return [(_crop(read_image(p.lq).data, 1, max_size), _crop(read_image(p.hq).data, 1, max_size)) for p in _spread(pairs, n)]


def _crop(image: np.ndarray, multiple: int, max_size: int | None) -> np.ndarray:
    """The central crop of ``image`` that :func:`confocalize.data.central_span` gives on both axes."""
    (y0, y1), (x0, x1) = (central_span(n, multiple, max_size or n) for n in image.shape[-2:])
    return image[..., y0:y1, x0:x1]


def classical_methods(psf: np.ndarray | None, quick: bool) -> dict[str, tuple[Callable[..., np.ndarray], list[dict[str, Any]]]]:
    """Each classical method with its parameter grid (Richardson-Lucy with ``psf``; left out without one)."""
    methods = {
        "gaussian": (baselines.gaussian, baselines.GAUSSIAN_GRID),
        "nlm": (baselines.nlm, baselines.NLM_GRID[::4] if quick else baselines.NLM_GRID),
        "richardson_lucy": (functools.partial(baselines.richardson_lucy, psf=psf), baselines.RL_GRID[:3] if quick else baselines.RL_GRID),
        "bm3d": (baselines.bm3d, baselines.BM3D_GRID[2:5] if quick else baselines.BM3D_GRID),
    }
    return methods if psf is not None else {name: m for name, m in methods.items() if name != "richardson_lucy"}


def tuning_subset(name: str, tuning: Sequence[baselines.Pair], quick: bool) -> Sequence[baselines.Pair]:
    """The tuning pairs of method ``name``: BM3D, about 100x slower than the others, is tuned on fewer."""
    return tuning[: 1 if quick else BM3D_TUNING_IMAGES] if name == "bm3d" else tuning


Tuned = dict[str, Callable[[np.ndarray], np.ndarray]]  # each classical method with its tuned parameters bound


def classical(track: Track, quick: bool, workers: int = 1) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any], Tuned]:
    """Tune each classical method on training images (``workers`` processes), then apply it to every test LQ."""
    tuning = tuning_pairs(track.train, 2 if quick else TUNING_IMAGES, TUNING_MAX_SIZE)
    psf_sigma = None if track.psf is not None else baselines.fit_gaussian_psf(tuning)
    psf = track.psf if psf_sigma is None else baselines.gaussian_psf(psf_sigma)
    outputs: dict[str, dict[str, np.ndarray]] = {}
    info: dict[str, Any] = {}
    bound: Tuned = {}
    for name, (method, grid) in classical_methods(psf, quick).items():
        start = time.perf_counter()
        pairs = tuning_subset(name, tuning, quick)
        tuned = baselines.tune(method, grid, pairs, workers=workers)
        tuned_s = time.perf_counter() - start
        start = time.perf_counter()
        bound[name] = functools.partial(method, **tuned.params)
        outputs[name] = {p.name: bound[name](read_image(p.lq).data) for p in track.test}
        info[name] = {
            "params": tuned.params, "tuning_median_psnr": tuned.score, "grid": tuned.grid, "tuning_seconds": tuned_s,
            "tuning_images": len(pairs), "seconds_per_image": (time.perf_counter() - start) / len(track.test),
        }  # fmt: skip
    fitted = f"fitted Gaussian, sigma {psf_sigma} px"
    info["richardson_lucy"]["psf"] = "simulator's wide-field optics (in focus)" if psf_sigma is None else fitted
    info["tuning"] = {"images": len(tuning), "objective": "median plain PSNR (least squares)", "from": "training fields only",
                      "crop": f"central, at most {TUNING_MAX_SIZE}² px"}  # fmt: skip
    return outputs, info, bound


def validation_scores(pairs: Sequence[PairPaths], methods: Tuned) -> dict[str, dict[str, float]]:
    """Each tuned classical method (and raw LQ) on the learned models' validation ``pairs``, scored as training
    validates (``data.CentralCrops``): central crops, mean plain PSNR/SSIM over the images."""
    multiple = 2 ** GENERATORS[DEFAULT].depth
    images = [tuple(_crop(read_image(f).data.astype(np.float32), multiple, VALIDATION_MAX_SIZE) for f in (p.lq, p.hq)) for p in pairs]
    scores: dict[str, dict[str, float]] = {}
    for name, method in {LQ: lambda x: x, **methods}.items():
        values = [compare(method(lq), hq)["plain"] for lq, hq in images]
        scores[name] = {m: float(np.mean([v[m] for v in values])) for m in ("psnr", "ssim")}
    return scores


def learned(track: Track, work: Path, budget: Budget, seed: int) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Train every learned method on the track's training pairs within ``budget`` each; enhance the test LQ."""
    csv_path = _pairs_csv(track.train, work / track.name / "train_pairs.csv")
    outputs: dict[str, dict[str, np.ndarray]] = {}
    info: dict[str, Any] = {}
    for name, method in LEARNED.items():
        cfg = TrainConfig(
            output_dir=work / track.name / "runs" / name,
            data=DataConfig(pairs_csv=csv_path, patch_size=method.patch_size, batch_size=method.batch_size, val_fraction=VAL_FRACTION, test_fraction=0.0,
                            patch_signal=method.patch_signal),  # fmt: skip
            generator=GENERATORS[method.generator],
            discriminator=method.discriminator,
            loss=method.loss,
            optim=method.optim,
            trainer=TrainerConfig(max_steps=budget.steps, max_time_minutes=budget.minutes, val_every_steps=budget.val_every,
                                  seed=seed, progress_bar=False),  # fmt: skip
        )  # fmt: skip
        with architecture(method.generator):
            result = fit(cfg, progress=False)
            package = load_package(result.model_dir)
        start = time.perf_counter()
        outputs[name] = {p.name: enhance_image(package, read_image(p.lq)).data for p in track.test}
        seconds = (time.perf_counter() - start) / len(track.test)
        averaged_seconds = {}  # as stored: {averaged row: seconds per image}
        if name in AVERAGED:
            start = time.perf_counter()
            outputs[AVERAGED[name]] = {p.name: averaged_output(package, p) for p in track.test}
            averaged_seconds[AVERAGED[name]] = (time.perf_counter() - start) / len(track.test)
        info[name] = {
            "description": method.description, "generator": GENERATORS[method.generator].model_dump(),
            "loss": method.loss.model_dump(), "optim": method.optim.model_dump(), "patch_signal": method.patch_signal,
            "patch_size": method.patch_size, "batch_size": method.batch_size, "discriminator": method.discriminator.model_dump(), "steps": result.steps, "fit_seconds": result.seconds, "val_fields": result.split["val"]["fields"],
            "val_names": result.split["val"]["names"], "curve": learning_curve(cfg.output_dir),
            "seconds_per_image": seconds, "averaged_seconds_per_image": averaged_seconds,
        }  # fmt: skip
    return outputs, info


def averaged_output(package: ModelPackage, pair: PairPaths) -> np.ndarray:
    """The mean of the model's outputs over the 8 flips/rotations of ``pair``'s LQ image (``enhance --uncertainty``'s output)."""
    return enhance_with_uncertainty(package, read_image(pair.lq)).image.data


def _pairs_csv(pairs: Sequence[PairPaths], path: Path) -> Path:
    """A ``lq,hq,field`` CSV (absolute paths) that ``train.fit`` reads as its pair source."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["lq", "hq", "field"])
        writer.writerows([p.lq.resolve(), p.hq.resolve(), p.field] for p in pairs)
    return path


# --- scores -------------------------------------------------------------------------------------


def score(track: Track, outputs: Mapping[str, Mapping[str, np.ndarray]], figure_fields: int) -> dict[str, Any]:
    """``evaluate_pairs`` on the test pairs (default model as "generated"), plus IQRs, relative changes and FRC."""
    out_dir = RESULTS / "quality" / track.name
    others = {name: arrays for name, arrays in outputs.items() if name != DEFAULT}
    result = evaluate_pairs(track.test, outputs[DEFAULT], out_dir, track.pixel_size, figure_fields, baselines=others)
    key = {LQ: f"{LQ}_vs_hq", DEFAULT: f"{GENERATED}_vs_hq", **{name: f"{name}_vs_hq" for name in others}}
    hq = {p.name: read_image(p.hq).data for p in track.test}
    images = {LQ: {p.name: read_image(p.lq).data for p in track.test}, **outputs}
    methods = {}
    for name in ORDER:
        records = [r[key[name]] for r in result["per_image"]]
        frc = [frc_resolution(images[name][p.name], hq[p.name], track.pixel_size) for p in track.test]
        methods[name] = {
            "median": result["median"][key[name]],
            "iqr": {m: [float(np.percentile([r[m] for r in records], q)) for q in (25, 75)] for m in METRIC_NAMES},
            "median_affine": result["median_affine"][key[name]],
            "relative_change_vs_lq": _relative(result["median"][key[name]], result["median"][key[LQ]]),
            "frc_resolution_px": float(np.median([f["px"] for f in frc])),
            "frc_resolution_um": float(np.median([f["um"] for f in frc])) if track.pixel_size else None,
            "per_image": {m: [r[m] for r in records] for m in ("psnr", "ssim")},  # in the order of the test pairs
        }
    return {"methods": methods, "n_test_images": result["n_images"], "figure": out_dir / "figure.png", "metrics": out_dir / "metrics.json"}


def _relative(values: Mapping[str, float], lq: Mapping[str, float]) -> dict[str, float | None]:
    """``(method - LQ) / |LQ|`` per metric (the study's relative change)."""
    return {m: (values[m] - lq[m]) / abs(lq[m]) if lq[m] and np.isfinite(lq[m]) else None for m in METRIC_NAMES}


def comparisons(track: str, methods: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The default model against the best classical method (per metric), the track's bar and the other learned models."""
    median = {name: m["median"] for name, m in methods.items()}
    best_psnr = max(CLASSICAL, key=lambda n: median[n]["psnr"])
    best_ssim = max(CLASSICAL, key=lambda n: median[n]["ssim"])
    best = {"psnr": [best_psnr, median[best_psnr]["psnr"]], "ssim": [best_ssim, median[best_ssim]["ssim"]]}
    d = median[DEFAULT]
    out: dict[str, Any] = {"best_classical": best}
    for name in LEARNED:
        out[name] = {
            "psnr_minus_best_classical": median[name]["psnr"] - median[best_psnr]["psnr"],
            "ssim_minus_best_classical": median[name]["ssim"] - median[best_ssim]["ssim"],
            "ssim_minus_reference": median[name]["ssim"] - median[REFERENCE]["ssim"],
        }  # fmt: skip
    out["target"] = target(track, methods)
    out["target_averaged"] = target(track, methods, AVERAGED[DEFAULT], AVERAGED["l1_unet"])  # both models averaged over 8 flips/rotations
    out["default_minus_l1_unet"] = {"psnr": d["psnr"] - median["l1_unet"]["psnr"], "ssim": d["ssim"] - median["l1_unet"]["ssim"]}
    return out


def target(track: str, methods: Mapping[str, Mapping[str, Any]], model: str = DEFAULT, l1: str = "l1_unet") -> dict[str, Any]:
    """The issue's target for ``model`` (the default model) on ``track``, with ``l1`` as its L1 U-Net: what it asks,
    what was measured, whether it is met, and each of its comparisons image by image (:func:`paired`)."""
    m = {name: v["median"] for name, v in methods.items()}
    d = m[model]
    if track == "A":
        dp, ds = d["psnr"] - m["bm3d"]["psnr"], d["ssim"] - m["bm3d"]["ssim"]
        against = ["bm3d"]
        result = {"wanted": "≥ BM3D + 0.3 dB PSNR, SSIM ≥ BM3D's", "measured": f"{dp:+.2f} dB, {ds:+.3f} SSIM vs BM3D",
                  "met": dp >= 0.3 and ds >= 0}  # fmt: skip
    elif track == "B":
        dr, dl = d["ssim"] - m["richardson_lucy"]["ssim"], d["ssim"] - m[l1]["ssim"]
        against = ["richardson_lucy", l1]
        result = {"wanted": "SSIM ≥ Richardson-Lucy + 0.1 and ≥ the L1 U-Net's − 0.01",
                  "measured": f"{dr:+.3f} SSIM vs RL, {dl:+.3f} vs L1 U-Net", "met": dr >= 0.1 and dl >= -0.01}  # fmt: skip
    else:
        frc_d, frc_l1 = methods[model]["frc_resolution_px"], methods[l1]["frc_resolution_px"]
        against = [l1]
        result = {"wanted": "SSIM and FRC resolution at least the L1 U-Net's",
                  "measured": f"{d['ssim'] - m[l1]['ssim']:+.3f} SSIM, FRC {frc_d:.2f} vs {frc_l1:.2f} px",
                  "met": d["ssim"] >= m[l1]["ssim"] and frc_d <= frc_l1}  # fmt: skip
    return {**result, "paired": {other: paired(methods, model, other) for other in against}}


def paired(methods: Mapping[str, Mapping[str, Any]], model: str, other: str) -> dict[str, float | int]:
    """``model`` against ``other`` image by image: the median of the per-image PSNR and SSIM differences and on
    how many test images ``model``'s SSIM is the higher (the targets compare medians over images, which may
    come from different images)."""
    a, b = methods[model]["per_image"], methods[other]["per_image"]
    diff = {m: np.asarray(a[m]) - np.asarray(b[m]) for m in ("psnr", "ssim")}
    return {"psnr": float(np.median(diff["psnr"])), "ssim": float(np.median(diff["ssim"])),
            "ssim_higher": int(np.sum(diff["ssim"] > 0)), "n": int(diff["ssim"].size)}  # fmt: skip


def paired_text(t: Mapping[str, Any]) -> str:
    """``t``'s paired comparisons in words: median per-image difference and the images where SSIM is higher."""
    return "; ".join(f"vs {other} {p['psnr']:+.2f} dB, {p['ssim']:+.3f} SSIM, higher SSIM on {p['ssim_higher']} of {p['n']} images"
                     for other, p in t["paired"].items())  # fmt: skip


def verdict(track: str, comp: Mapping[str, Any]) -> str:
    """One plain sentence on the track's target and where the default model stands against the classical methods."""
    d = comp[DEFAULT]
    (bp, vp), (bs, vs) = comp["best_classical"]["psnr"], comp["best_classical"]["ssim"]
    margins = (f"{d['psnr_minus_best_classical']:+.2f} dB PSNR vs {bp} ({vp:.2f} dB), "
               f"{d['ssim_minus_best_classical']:+.3f} SSIM vs {bs} ({vs:.3f})")  # fmt: skip
    t = comp["target"]
    met = "target met" if t["met"] else "target NOT met"
    averaged = comp["target_averaged"]
    x8 = f"averaged over 8 flips/rotations (both models): {averaged['measured']}, {'met' if averaged['met'] else 'not met'}"
    by_image = f"Image by image (median of the differences): {paired_text(t)}; averaged {paired_text(averaged)}"
    return f"Track {track}: {met} ({t['wanted']}: {t['measured']}; {x8}); against the best classical method {margins}. {by_image}."


def passing(curve: Sequence[Mapping[str, float]], bar: Mapping[str, float]) -> dict[str, float] | None:
    """The first validation whose PSNR and SSIM both reach ``bar``'s (its step and seconds), else ``None``."""
    for point in curve:
        if point["psnr"] >= bar["psnr"] and point["ssim"] >= bar["ssim"]:
            return {"step": point["step"], "seconds": point["seconds"]}
    return None


def bar_of(track: str, val_scores: Mapping[str, Mapping[str, float]]) -> str:
    """The classical method the track's curves must pass: BM3D (A), RL (B), else the best by validation PSNR."""
    return BAR.get(track) or max(CLASSICAL, key=lambda n: val_scores[n]["psnr"])


def plot_curves(track: Track, learned_info: Mapping[str, Any], val_scores: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Validation PSNR and SSIM against steps and seconds per learned model, the classical methods as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for row, metric in enumerate(("psnr", "ssim")):
        for col, x in enumerate(("step", "seconds")):
            ax = axes[row][col]
            for name, info in learned_info.items():
                points = [p for p in info["curve"] if p[x] is not None]
                ax.plot([p[x] / (60 if x == "seconds" else 1) for p in points], [p[metric] for p in points], marker="o", ms=3, label=name)
            for i, name in enumerate(CLASSICAL):
                ax.axhline(val_scores[name][metric], color=f"C{i + 5}", ls="--", lw=1, label=name)
            ax.set_xlabel("generator steps" if x == "step" else "training minutes")
            ax.set_ylabel(f"validation {metric.upper()}" + (" (dB)" if metric == "psnr" else ""))
            ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Track {track.name}: {track.title} — learning curves on held-out validation fields")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --- main ---------------------------------------------------------------------------------------


def run_track(track: Track, work: Path, budget: Budget, quick: bool, seed: int, workers: int = 1) -> dict[str, Any]:
    """Classical and learned methods on one track, scored and printed."""
    print(f"track {track.name}: {track.title}: {len(track.train)} training / {len(track.test)} test images")
    classic, classic_info, tuned = classical(track, quick, workers)
    trained, learned_info = learned(track, work, budget, seed)
    scores = score(track, {**classic, **trained}, figure_fields=4)
    comp = comparisons(track.name, scores["methods"])
    val_pairs = read_split(work / track.name / "runs" / DEFAULT / "split.json")["val"]  # the same split for every model
    val_scores = validation_scores(val_pairs, tuned)
    bar = bar_of(track.name, val_scores)
    curves = {
        "validation_images": learned_info[DEFAULT]["val_names"], "classical_on_validation": val_scores, "bar": bar,
        "passes_bar": {name: passing(info["curve"], val_scores[bar]) for name, info in learned_info.items()},
        "figure": plot_curves(track, learned_info, val_scores, RESULTS / "quality" / track.name / "curves.png"),
    }  # fmt: skip
    summary = {
        "title": track.title, "notes": track.notes, "pixel_size_um": track.pixel_size,
        "train_fields": sorted({p.field for p in track.train}), "test_fields": sorted({p.field for p in track.test}),
        "n_train_images": len(track.train), **scores, "classical": classic_info, "learned": learned_info,
        "comparisons": comp, "verdict": verdict(track.name, comp), "curves": curves,
    }  # fmt: skip
    print_track(track.name, summary)
    return summary


def track_job(name: str, work: Path, budget: Budget, quick: bool, seed: int, every: tuple[int, int], workers: int) -> dict[str, Any]:
    """Build track ``name`` and run it (one process per track under ``--jobs``); adds its wall seconds."""
    quiet_lightning()
    start = time.perf_counter()
    a, b = w2s_track(quick, every), dscm_track(quick)
    track = simulated_track(a, b, work, quick, seed) if name == "C" else {"A": a, "B": b}[name]
    summary = run_track(track, work, budget, quick, seed, workers)
    return {**summary, "commit": commit(), "date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(), "seconds": time.perf_counter() - start}


def print_track(name: str, summary: Mapping[str, Any]) -> None:
    """Median [IQR] of each metric per method, the change vs LQ and the FRC resolution."""
    rows = []
    for method, m in summary["methods"].items():
        med, iqr, rel = m["median"], m["iqr"], m["relative_change_vs_lq"]
        rows.append([
            method, f"{med['psnr']:.2f} [{iqr['psnr'][0]:.2f}, {iqr['psnr'][1]:.2f}]",
            f"{med['ssim']:.3f} [{iqr['ssim'][0]:.3f}, {iqr['ssim'][1]:.3f}]", f"{med['mse']:.2e}", f"{med['nrmse']:.3f}",
            "" if method == LQ else f"{rel['psnr']:+.1%} / {rel['ssim']:+.1%}", f"{m['frc_resolution_px']:.2f}",
        ])  # fmt: skip
    print_table(f"Track {name}: {summary['title']} ({summary['n_test_images']} test images)",
                ["method", "PSNR dB [IQR]", "SSIM [IQR]", "MSE", "NRMSE", "vs LQ PSNR/SSIM", "FRC px"], rows)  # fmt: skip
    print(summary["verdict"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the tracks, print the tables and write ``benchmarks/results/quality.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes-per-model", type=float, default=None, help="training wall time per learned model (default 3, quick 0.1)")
    parser.add_argument("--steps-per-model", type=int, default=None, help="training steps per learned model (no time limit unless --minutes-per-model)")
    parser.add_argument("--val-every", type=int, default=100, help="validation (a learning-curve point) every this many generator steps")
    parser.add_argument("--quick", action="store_true", help="few fields and a few seconds of training: exercises every path")
    parser.add_argument("--tracks", default="ABC", help="which tracks to run, e.g. AB (C needs A and B's images, not their runs)")
    parser.add_argument("--jobs", type=int, default=1, help="tracks run in this many processes at once (a GPU machine; not on 2 cores)")
    parser.add_argument("--tuning-workers", type=int, default=1, help="processes per track that score the classical parameter grids")
    parser.add_argument("--w2s-every", type=int, nargs=2, default=(1, 1), metavar=("TRAIN", "TEST"),
                        help="track A on every n-th training and m-th test field only (a copy of the data that fits a transfer)")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=None, help="empty folder to keep simulated pairs and runs in (default: temporary)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-others", action="store_true",
                        help="keep the tracks not run now from benchmarks/results/quality.json (same budget, data and seed)")
    args = parser.parse_args(argv)
    if args.work_dir and args.work_dir.is_dir() and any(args.work_dir.iterdir()):  # its runs would refuse to start, after the classical tuning
        parser.error(f"--work-dir {args.work_dir}: not empty (an earlier run's pairs and runs); give a new or empty folder")
    minutes = args.minutes_per_model or (None if args.steps_per_model else (0.1 if args.quick else 4.0))
    budget = Budget(args.steps_per_model, minutes, args.val_every)
    every = tuple(args.w2s_every)
    load_at_start = os.getloadavg()
    quiet_lightning()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="confocalize-quality-") as tmp:
        work = args.work_dir or Path(tmp)
        settings = {
            "quick": args.quick, "minutes_per_model": minutes, "steps_per_model": args.steps_per_model,
            "budget": budget.describe(), "w2s_every_nth_field": {"train": every[0], "test": every[1]},
            "patch_size": PATCH, "batch_size": BATCH, "seed": args.seed, "val_every": args.val_every, "val_fraction": VAL_FRACTION, "normalisation": NORMALISATION, "jobs": args.jobs,
            "learned": {name: m.description for name, m in LEARNED.items()} | {
                name: f"`{source}`'s model, its output averaged over the 8 flips/rotations of the input (enhance --uncertainty)"
                for source, name in AVERAGED.items()},
            "load_average_at_start": load_at_start,
        }  # fmt: skip
        same = ("budget", "w2s_every_nth_field", "patch_size", "batch_size", "seed", "val_every")  # what a kept track must share
        results: dict[str, Any] = kept_results("quality", "tracks", {k: settings[k] for k in same}, args.tracks) if args.keep_others else {}
        doc: dict[str, Any] = {}

        def done(name: str, summary: dict[str, Any]) -> None:
            """Write the results so far: a run stopped later keeps the finished tracks."""
            results[name] = summary
            doc.update(settings=settings, tracks={t: results[t] for t in "ABC" if t in results}, seconds=time.perf_counter() - start)
            print(f"written {write_results('quality', doc)}")

        jobs = {name: (name, work, budget, args.quick, args.seed, every, args.tuning_workers) for name in args.tracks}
        if args.jobs > 1:
            with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(track_job, *job): name for name, job in jobs.items()}
                for future in as_completed(futures):
                    done(futures[future], future.result())
        else:
            for name, job in jobs.items():
                done(name, track_job(*job))
    return doc


if __name__ == "__main__":
    main()
