"""Recipe ablation: which training choices buy quality within a CPU budget, measured one at a time.

Every variant trains the same generator for the same number of generator steps on a smaller copy
of W2S (track A of ``quality.py``: every 4th training field of 001-080, every 4th test field of
081-120, all channels; split by field), validating on held-out training-set fields every
``--val-every`` steps (the learning curve), then enhances the test fields. Each variant changes one
choice against its *base* (the variant before it unless named), so each row's change is that
choice's effect:

    pix2pix       the old defaults: GAN from step 0, Adam 2e-4 / beta1 0.5, constant rate
    l1_const      no discriminator, Adam 1e-3 / beta1 0.9, constant rate
    l1_cosine     + warm-up and cosine decay over the budget
    l1_ema        + exponential moving average of the generator weights
    l1_signal     + patches only where the HQ target has signal (rejected: the rows below start from l1_ema)
    l1_residual   l1_ema + a residual U-Net (output = input + correction)
    l1_window     + LQ percentiles over 3x3 local means (noise no longer sets a noisy input's range)
    l1_lr         + peak learning rate 2e-3 instead of 1e-3
    l1_plain      the residual connection off again (the default: it costs wide-field -> confocal pairs)
    recipe_gan    l1_lr + the adversarial phase after half the budget, ramped in over a tenth of it, PatchGAN base 64
                  (and ``residual: auto``, which picks the residual U-Net on these pairs, as l1_lr has it)
    recipe_late   the adversarial phase in the last fifth only, PatchGAN base 32 (a quarter of its FLOPs): the defaults
    l1_ssim       l1_lr + an SSIM term (ssim_weight 20: about the L1 term's size at the start)
    l1_ssim_low   the SSIM term at a quarter of that weight (5): W2S test images lose SSIM to BM3D in their dark parts
    l1_patch64    l1_lr on 64² patches in batches of 32 (the same pixels per step, four times the patches: CSBDeep's and
                  DnCNN's small patches; the test images' residual noise is blotchy, which more varied batches may average out)
    l1_nonorm     l1_lr without BatchNorm (CSBDeep's CARE U-Net has none): batch statistics of 8 patches are noisy, and
                  training normalises by them while the exported model uses the running means
    l1_batch64    l1_patch64 in batches of 64: twice the pixels per step
    l1_depth5     l1_patch64 with a fifth down-sampling level: twice the receptive field for a fifth more arithmetic per
                  pixel (every level costs the same), so inference stays above twice the reference's speed; 4x the weights
    l1_patch48    l1_patch64 on 48² patches in batches of 56 (about the same pixels per step again, 1.75x the patches):
                  64² beat 128², so the trend is followed one more step
    l1_patch32    on 32² patches in batches of 128 (the same pixels, 4x l1_patch64's patches; the U-Net's deepest level is 2x2)
    l1_lr4        l1_patch64 at a peak learning rate of 4e-3: 2e-3 instead of 1e-3 had bought 0.011 SSIM
    l1_beta2      l1_patch64 with Adam's beta2 0.99 instead of 0.999: second moments that follow a short run's changing
                  gradients ten times faster

Gaussian and BM3D (sigma tuned on training images) are scored on the same test images.

    python benchmarks/recipe.py --steps 1000        # ~50 min on 2 cores
    python benchmarks/recipe.py --steps 40 --quick  # smoke run
    python benchmarks/recipe.py --variants l1_residual l1_window l1_lr l1_plain recipe_gan --keep-others   # new rows only
    python benchmarks/recipe.py --seed 1 --variants l1_patch64 l1_lr4   # a choice again with another seed

Writes ``benchmarks/results/recipe.json`` and ``benchmarks/results/recipe_curves.png`` (``--plot-only``
redraws the figure from the JSON); a run with ``--seed N`` other than 0 writes ``recipe_seedN.json``
and ``recipe_seedN_curves.png`` instead, which BENCHMARKS.md sets beside seed 0's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common import DEFAULT, GENERATORS, OLD_DISCRIMINATOR, OLD_LOSS, OLD_OPTIM, RESULTS, commit, kept_results, learning_curve, print_table, quiet_lightning, write_results
from confocalize import baselines
from confocalize.config import DataConfig, DiscriminatorConfig, GeneratorConfig, LossConfig, NormalizationConfig, OptimConfig, TrainConfig, TrainerConfig
from confocalize.io import read_image
from confocalize.metrics import compare
from confocalize.package import load_package
from confocalize.predict import enhance_image
from confocalize.train import fit
from quality import _pairs_csv, tuning_pairs, w2s_track

L1_CONST = OptimConfig(lr=1e-3, beta1=0.9, schedule="constant", ema_decay=0.0)
L1_COSINE = L1_CONST.model_copy(update={"schedule": "cosine"})
L1_EMA = L1_COSINE.model_copy(update={"ema_decay": 0.999})
NO_GAN = LossConfig(adv_weight=0.0)
PLAIN = GeneratorConfig(residual=False)  # the output is the network's alone
RESIDUAL = GeneratorConfig(residual=True)
PIXELS = NormalizationConfig(input_window=1)  # percentiles over single pixels, as before the input window


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: its settings and the row whose settings it changes."""

    loss: LossConfig
    optim: OptimConfig
    generator: GeneratorConfig = field(default_factory=lambda: PLAIN)
    normalization: NormalizationConfig = field(default_factory=lambda: PIXELS)
    patch_signal: float = 0.0
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    patch_size: int = 128  # the ablation's patches: the defaults until l1_patch64 moved them to 64² x 32
    batch_size: int = 8
    base: str | None = None  # None: the variant before it


VARIANTS: dict[str, Variant] = {
    "pix2pix": Variant(OLD_LOSS, OLD_OPTIM, discriminator=OLD_DISCRIMINATOR),
    "l1_const": Variant(NO_GAN, L1_CONST),
    "l1_cosine": Variant(NO_GAN, L1_COSINE),
    "l1_ema": Variant(NO_GAN, L1_EMA),
    "l1_signal": Variant(NO_GAN, L1_EMA, patch_signal=0.4),
    "l1_residual": Variant(NO_GAN, L1_EMA, RESIDUAL, base="l1_ema"),
    "l1_window": Variant(NO_GAN, L1_EMA, RESIDUAL, NormalizationConfig()),
    "l1_lr": Variant(NO_GAN, OptimConfig(), RESIDUAL, NormalizationConfig()),
    "l1_plain": Variant(NO_GAN, OptimConfig(), PLAIN, NormalizationConfig()),
    "recipe_gan": Variant(LossConfig(fidelity_fraction=0.5), OptimConfig(), GeneratorConfig(), NormalizationConfig(),
                          discriminator=OLD_DISCRIMINATOR, base="l1_lr"),
    "recipe_late": Variant(LossConfig(), OptimConfig(), GeneratorConfig(), NormalizationConfig()),
    "l1_ssim": Variant(NO_GAN.model_copy(update={"ssim_weight": 20.0}), OptimConfig(), RESIDUAL, NormalizationConfig(), base="l1_lr"),
    "l1_ssim_low": Variant(NO_GAN.model_copy(update={"ssim_weight": 5.0}), OptimConfig(), RESIDUAL, NormalizationConfig(), base="l1_lr"),
    "l1_patch64": Variant(NO_GAN, OptimConfig(), RESIDUAL, NormalizationConfig(), patch_size=64, batch_size=32, base="l1_lr"),
    "l1_nonorm": Variant(NO_GAN, OptimConfig(), GeneratorConfig(residual=True, norm="none"), NormalizationConfig(), base="l1_lr"),
    "l1_batch64": Variant(NO_GAN, OptimConfig(), RESIDUAL, NormalizationConfig(), patch_size=64, batch_size=64, base="l1_patch64"),
    "l1_depth5": Variant(NO_GAN, OptimConfig(), GeneratorConfig(residual=True, depth=5), NormalizationConfig(), patch_size=64,
                         batch_size=32, base="l1_patch64"),
    "l1_patch48": Variant(NO_GAN, OptimConfig(), RESIDUAL, NormalizationConfig(), patch_size=48, batch_size=56, base="l1_patch64"),
    "l1_patch32": Variant(NO_GAN, OptimConfig(), RESIDUAL, NormalizationConfig(), patch_size=32, batch_size=128, base="l1_patch64"),
    "l1_lr4": Variant(NO_GAN, OptimConfig(lr=4e-3), RESIDUAL, NormalizationConfig(), patch_size=64, batch_size=32, base="l1_patch64"),
    "l1_beta2": Variant(NO_GAN, OptimConfig(beta2=0.99), RESIDUAL, NormalizationConfig(), patch_size=64, batch_size=32, base="l1_patch64"),
}


def base_of(name: str) -> str | None:
    """The variant whose settings ``name`` changes: its named base, else the one listed before it."""
    names = list(VARIANTS)
    i = names.index(name)
    return VARIANTS[name].base or (names[i - 1] if i else None)


def medians(outputs: dict[str, np.ndarray], hq: dict[str, np.ndarray]) -> dict[str, float]:
    """Median plain PSNR and SSIM over the test images (``confocalize.metrics``, data_range 1)."""
    scores = [compare(outputs[name], hq[name])["plain"] for name in hq]
    return {m: float(np.median([s[m] for s in scores])) for m in ("psnr", "ssim")}


def plot_curves(doc: dict[str, Any], path: Path) -> Path:
    """Validation PSNR and SSIM against steps for every variant (the test-set scores of the classical methods as lines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), constrained_layout=True)
    for ax, metric in zip(axes, ("psnr", "ssim"), strict=True):
        for i, (name, v) in enumerate(doc["variants"].items()):  # tab20's dark colours, solid, then its light ones, dashed: one look per variant (up to 20)
            style = {"color": plt.cm.tab20(2 * i % 20 + 2 * i // 20), "linestyle": "-" if i < 10 else "--", "marker": "os^"[i % 3]}
            ax.plot([p["step"] for p in v["curve"]], [p[metric] for p in v["curve"]], ms=3, label=name, **style)
        ax.set_xlabel("generator steps")
        ax.set_ylabel(f"validation {metric.upper()}" + (" (dB)" if metric == "psnr" else ""))
        ax.grid(alpha=0.3)
    fig.legend(*axes[1].get_legend_handles_labels(), fontsize=8, loc="outside right center")  # beside the curves, never over them
    fig.suptitle("Recipe ablation on W2S: validation on held-out fields of the training set (EMA weights where the variant has them)")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def results_name(seed: int) -> str:
    """The results' name in ``benchmarks/results``: ``recipe`` for seed 0, ``recipe_seedN`` for another."""
    return "recipe" if seed == 0 else f"recipe_seed{seed}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train every variant, score it with the classical methods on the same test images, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="generator steps per variant")
    parser.add_argument("--val-every", type=int, default=100, help="validation (learning-curve point) every this many steps")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--quick", action="store_true", help="three fields and one test field")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-only", action="store_true", help="redraw the figure from the JSON (of --seed's run)")
    parser.add_argument("--keep-others", action="store_true",
                        help="keep the variants not run now from benchmarks/results/recipe.json (same steps and seed; each "
                             "variant records the commit and date it ran at)")
    args = parser.parse_args(argv)
    stem = results_name(args.seed)
    if args.plot_only:
        doc = json.loads((RESULTS / f"{stem}.json").read_text())
        print(f"written {plot_curves(doc, RESULTS / f'{stem}_curves.png')}")
        return doc
    quiet_lightning()
    load_at_start = os.getloadavg()
    track = w2s_track(args.quick, every=(4, 4))
    hq = {p.name: read_image(p.hq).data for p in track.test}
    lq = {p.name: read_image(p.lq).data for p in track.test}
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="confocalize-recipe-") as tmp:
        csv_path = _pairs_csv(track.train, Path(tmp) / "train_pairs.csv")
        for name in args.variants:
            v = VARIANTS[name]
            cfg = TrainConfig(
                output_dir=Path(tmp) / name,
                data=DataConfig(pairs_csv=csv_path, patch_size=v.patch_size, batch_size=v.batch_size, val_fraction=0.1, test_fraction=0.0,
                                patch_signal=v.patch_signal, normalization=v.normalization),  # fmt: skip
                generator=v.generator, discriminator=v.discriminator,
                loss=v.loss, optim=v.optim,
                trainer=TrainerConfig(max_steps=args.steps, val_every_steps=args.val_every, seed=args.seed, progress_bar=False),
            )  # fmt: skip
            result = fit(cfg, progress=False)
            package = load_package(result.model_dir)
            outputs = {p.name: enhance_image(package, read_image(p.lq)).data for p in track.test}
            results[name] = {
                "commit": commit(), "date": time.strftime("%Y-%m-%d"), "base": base_of(name), "loss": v.loss.model_dump(), "optim": v.optim.model_dump(),
                "generator": cfg.generator.model_dump(), "discriminator": v.discriminator.model_dump(), "normalization": v.normalization.model_dump(),
                "patch_signal": v.patch_signal, "patch_size": v.patch_size, "batch_size": v.batch_size, "steps": result.steps, "fit_seconds": result.seconds, "test": medians(outputs, hq),
                "curve": learning_curve(cfg.output_dir), "val_fields": result.split["val"]["fields"], "load_average": os.getloadavg(),
            }  # fmt: skip
            print(f"{name}: {results[name]['test']} in {result.seconds:.0f} s", flush=True)
    tuning = tuning_pairs(track.train, 2 if args.quick else 4)
    classical: dict[str, Any] = {}
    for name, method, grid in (("gaussian", baselines.gaussian, baselines.GAUSSIAN_GRID), ("bm3d", baselines.bm3d, baselines.BM3D_GRID)):
        start = time.perf_counter()
        tuned = baselines.tune(method, grid[2:6] if name == "bm3d" else grid, tuning)
        outputs = {n: method(image, **tuned.params) for n, image in lq.items()}
        classical[name] = {"params": tuned.params, "test": medians(outputs, hq), "seconds": time.perf_counter() - start}
    classical["raw"] = {"test": medians(lq, hq)}
    doc = {
        "settings": {"steps": args.steps, "val_every": args.val_every, "patch_size": Variant.patch_size, "batch_size": Variant.batch_size,
                     "generator": GENERATORS[DEFAULT].model_dump(), "seed": args.seed, "load_average_at_start": load_at_start,
                     "data": "W2S every 4th training field of 001-080 (val: 10% of them), every 4th test field of 081-120, all channels",
                     "metrics": "plain PSNR/SSIM, each image percentile-normalised (0.1/99.9 -> [0, 1], clipped), data_range 1, medians"},
        "n_train_images": len(track.train), "n_test_images": len(track.test),
        "variants": results, "classical": classical,
    }  # fmt: skip
    if args.keep_others:
        results = kept_results(stem, "variants", {"steps": args.steps, "seed": args.seed}, args.variants) | results
        doc["variants"] = {name: results[name] for name in VARIANTS if name in results}  # in the ablation's order
    rows = [[n, f"{r['test']['psnr']:.2f}", f"{r['test']['ssim']:.3f}", r.get("steps", ""), f"{r.get('fit_seconds', 0):.0f}"]
            for n, r in {**classical, **results}.items()]  # fmt: skip
    print_table(f"Recipe ablation ({len(track.test)} test images)", ["variant", "PSNR dB", "SSIM", "steps", "fit s"], rows)
    print(f"written {write_results(stem, doc)}, {plot_curves(doc, RESULTS / f'{stem}_curves.png')}")
    return doc


if __name__ == "__main__":
    main()
