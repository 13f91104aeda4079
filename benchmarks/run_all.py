"""Run every benchmark and regenerate ``BENCHMARKS.md`` from ``benchmarks/results/*.json``.

    python benchmarks/run_all.py                  # speed, quality (default budget), recipe ablation, 30-min train, training throughput, fine-tuning,
                                                  # trust, invented structures (on the quality run's models), flicker, registration
    python benchmarks/run_all.py --quick          # smoke run of every path
    python benchmarks/run_all.py --report-only    # only rewrite BENCHMARKS.md from the JSON files

Each script runs in its own process; a failing one does not stop the others, but the exit code
is non-zero. The report states the machine, date and commit of each result file and which of the
issue's targets are met.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common import DEFAULT, LABELS, REPO, RESULTS

BENCHMARKS = REPO / "benchmarks"
REPORT = REPO / "BENCHMARKS.md"
RSS_GIB = 2**30
NAMES = ("speed", "precision", "quality", "recipe", "train_budget", "train_speed", "finetune", "trust", "structures", "flicker", "registration")


def scripts(quick: bool, minutes: float | None, work: Path) -> dict[str, list[str]]:
    """Command-line arguments of each benchmark script (registration.py only if present); ``work`` keeps the
    quality run's models for structures.py."""
    quality = (["--quick"] if quick else []) + ([f"--minutes-per-model={minutes:g}"] if minutes else []) + ["--work-dir", str(work)]
    runs = {"speed": ["--quick"] if quick else [], "precision": ["--quick"] if quick else [], "quality": quality, "recipe": ["--quick", "--steps", "20"] if quick else [],
            "train_budget": ["--quick", "--minutes", "0.3", "--test-every", "20"] if quick else [],
            "train_speed": ["--quick"] if quick else [],
            "finetune": ["--quick", "--minutes", "0.15", "--parent-minutes", "0.15", "--val-every", "10"] if quick else [],
            "trust": ["--quick"] if quick else [], "structures": ["--work-dir", str(work)],
            "flicker": ["--frames", "3", "--size", "128"] if quick else []}
    if (BENCHMARKS / "registration.py").is_file():
        runs["registration"] = ["--cases", "6", "--simulated", "2", "--unrelated", "4", "--large", "0"] if quick else []
    return runs


def run(name: str, args: Sequence[str]) -> int:
    """Run ``benchmarks/NAME.py`` with ``args``, its output going to the terminal; return its exit code."""
    print(f"== {name} {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), *args], cwd=REPO).returncode


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


# --- the report ---------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]


def runs_section(results: Mapping[str, dict[str, Any]]) -> list[str]:
    rows = []
    unknown = "not recorded"
    for name, doc in results.items():
        m = doc.get("machine", {})
        machine = f"{m['cpu']}, {m['logical_cores']} cores{', ' + m['gpu'] if m.get('gpu') else ''}, torch {m['torch']}" if m else unknown
        rows.append([name, doc.get("date", unknown), doc.get("commit", unknown), machine, m.get("load_average_1_5_15min", unknown)])
    return ["## Runs", "", *table(["benchmark", "date", "commit", "machine", "load average at the end (1/5/15 min)"], rows), ""]


def speed_targets(speed: dict[str, Any], quality: dict[str, Any] | None) -> list[list[str]]:
    """Rows (target, measured, met) of the speed targets."""
    rows = []
    ssim_gap = _ssim_vs_reference(quality)
    form = speed["settings"].get("enhance_form", "shipped")  # what `enhance` runs by default (older files: shipped)
    shipped = [r for r in speed["ratios"] if r["generator"] == DEFAULT and r["form"] == form and r["vs_reference_plain"]]
    ratio = ", ".join(f"{r['size']}²: {r['vs_reference_plain']:.2f}×" for r in shipped)
    gaps = ssim_gap.get(DEFAULT, {})
    ssim = ", ".join(f"{t}: {g:+.3f}" for t, g in gaps.items()) or "no quality run"
    met = bool(shipped) and all(r["vs_reference_plain"] >= 2 for r in shipped) and bool(gaps) and all(g >= 0 for g in gaps.values())
    rows.append([f"default ≥ 2× the reference's Mpixel/s (plain) at equal or better median SSIM ({form} form)",
                 f"{ratio}; SSIM minus reference per track: {ssim}", _yes(met)])  # fmt: skip
    shipped = [r for r in speed["inference"] if r["generator"] == DEFAULT and r["form"] == form]
    fractions = ", ".join(f"{r['size']}²: {r['fraction_of_matmul']:.0%}" for r in shipped)
    largest = shipped[-1]
    rows.append([f"default ≥ 75 % of the matrix-product GFLOP/s in inference ({form} form, largest input)",
                 f"{fractions} of {speed['matmul']['gflops']:.0f} GFLOP/s", _yes(largest["fraction_of_matmul"] >= 0.75)])  # fmt: skip
    largest = speed["enhance"]["largest"]
    measured = f"{largest['peak_rss_bytes'] / RSS_GIB:.2f} GiB, {largest['seconds']:.0f} s"
    target = f"enhance of a {largest['size']}² 16-bit image under 2 GiB peak RSS ({speed['enhance'].get('generator', DEFAULT)} generator)"
    rows.append([target, measured, _yes(speed["enhance"]["largest_under_limit"])])
    fit = speed["enhance"]["linear_fit"]
    if fit["r2"] is not None:
        per = ", ".join(f"{r['size']}²: {r['s_per_mpixel']:.2f}" for r in speed["enhance"]["rows"])
        measured = f"r² {fit['r2']:.4f}, {fit['s_per_mpixel']:.2f} s/Mpixel + {fit['intercept_s']:.1f} s; s/Mpixel by size {per}"
        rows.append(["enhance time linear in pixels", measured, _yes(fit["r2"] >= 0.99)])
    return rows


def _ssim_vs_reference(quality: dict[str, Any] | None) -> dict[str, dict[str, float]]:
    if quality is None:
        return {}
    tracks = quality["tracks"]
    return {DEFAULT: {t: tr["comparisons"][DEFAULT]["ssim_minus_reference"] for t, tr in tracks.items()}}


def quality_targets(quality: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t, tr in quality["tracks"].items():
        target, averaged = tr["comparisons"]["target"], tr["comparisons"].get("target_averaged")
        rows.append([f"track {t}: default {target['wanted']} (medians)", target["measured"] + _ran_at(tr, quality), _yes(target["met"])])
        if averaged:  # tracks run before the averaged rows existed have none
            rows.append([f"track {t}, both models averaged over 8 flips/rotations (`enhance --uncertainty`)", averaged["measured"] + _ran_at(tr, quality),
                         _yes(averaged["met"])])  # fmt: skip
    return rows


def _ran_at(track: Mapping[str, Any], quality: Mapping[str, Any]) -> str:
    """`` (run at commit X, DATE, ...)`` for a track kept from an earlier quality run (``--keep-others``), else ``""``."""
    if track.get("commit", quality["commit"]) == quality["commit"]:
        return ""
    return f" (run at commit {track['commit']}, {track['date']}, on {track['cpu']}, with the defaults of that commit)"


def _yes(flag: bool | None) -> str:
    return "n/a" if flag is None else ("**yes**" if flag else "**no**")


def speed_section(speed: dict[str, Any]) -> list[str]:
    s = speed["settings"]
    lines = ["## Speed and memory (`benchmarks/speed.py`)", "",
             f"fp32 matrix product {speed['matmul']['n']}²: **{speed['matmul']['gflops']:.1f} GFLOP/s** (best; median "
             f"{speed['matmul']['gflops_median']:.1f}). Forms: *plain* = whole image, NCHW fp32, batch 1; *channels_last* = "
             "the same in channels_last; *shipped* = `predict_array` with PyTorch (1024-pixel tiles with halos, channels_last: "
             "`enhance --backend torch`); *shipped_onnxruntime* = the same tiles through ONNX Runtime (`enhance`'s default on "
             "a CPU). GFLOP/s counts the convolutions executed (halos included). Random weights.", ""]  # fmt: skip
    if "onnx_graph" in speed:
        g = speed["onnx_graph"]
        lines += [f"The default generator's ONNX graph ({g['bytes'] / 1e6:.1f} MB) is built once per model package in "
                  f"{g['seconds']:.1f} s and cached; the timings below and the enhance runs start from the cached graph.", ""]  # fmt: skip
    rows = [[LABELS[r["generator"]], r["form"], f"{r['size']}²", f"{r['mpixel_per_s']:.3f}", f"{r['gflops']:.1f}",
             f"{r['fraction_of_matmul']:.0%}", f"{r['gflop_per_image']:.1f}"] for r in speed["inference"]]  # fmt: skip
    lines += table(["generator", "form", "input", "Mpixel/s", "GFLOP/s", "of matmul", "GFLOP per image"], rows) + [""]
    rows = [[LABELS[r["generator"]], f"{r['images_per_s']:.2f}"] for r in speed["training"]]
    lines += [f"Training, {s['train_size']}² patches, batch {s['train_batch']}, generator + PatchGAN steps:", ""]
    lines += table(["generator", "images/s"], rows) + [""]
    rows = [[f"{r['size']}²", f"{r['seconds']:.1f}", f"{r['s_per_mpixel']:.2f}", f"{r['peak_rss_bytes'] / RSS_GIB:.2f}"]
            for r in speed["enhance"]["rows"]]  # fmt: skip
    generator = LABELS[speed["enhance"].get("generator", DEFAULT)]
    lines += [f"`confocalize enhance --dtype uint16`, {generator}, 16-bit input, one fresh process per image "
              "(wall time includes interpreter start-up):", ""]  # fmt: skip
    if "relabelled" in speed:
        lines += [f"Note: {speed['relabelled']}.", ""]
    return lines + table(["image", "seconds", "s/Mpixel", "peak RSS GiB"], rows) + [""]


def quality_section(quality: dict[str, Any]) -> list[str]:
    s = quality["settings"]
    lines = ["## Quality (`benchmarks/quality.py`)", "",
             f"Training budget: {s['budget']}. Patches {s['patch_size']}², batch {s['batch_size']}, where a track's learning-curve table "
             f"names no other. Metrics: {s['normalisation']}. "
             "Median [IQR] over test images; relative change vs raw LQ as (method − LQ)/|LQ|; FRC = Fourier ring "
             "correlation resolution against HQ at the 1/7 threshold (smaller is sharper). Classical parameters were tuned "
             "on training fields only; learned methods list their training steps. In the figures *generated* is the default model.",
             "", *(f"- `{name}`: {text}" for name, text in s["learned"].items()), ""]  # fmt: skip
    gpu = quality.get("machine", {}).get("gpu")
    if gpu:
        lines += [f"Learned models trained on one {gpu}, {s.get('jobs', 'all')} tracks at a time sharing it "
                  "(a wall-time budget is then shared-GPU time); classical methods on its CPU cores.", ""]  # fmt: skip
    every = s.get("w2s_every_nth_field", {"train": 1, "test": 1})
    if every != {"train": 1, "test": 1}:
        lines += [f"Track A used one training field in {every['train']} and one test field in {every['test']} of the official "
                  "split (a smaller copy of the data); the split stays by field.", ""]  # fmt: skip
    for t, tr in quality["tracks"].items():
        lines += [f"### Track {t}: {tr['title']}{_ran_at(tr, quality)}", "",
                  f"{tr['n_train_images']} training images ({len(tr['train_fields'])} fields), {tr['n_test_images']} test images "
                  f"({len(tr['test_fields'])} fields: {', '.join(tr['test_fields'][:8])}{' …' if len(tr['test_fields']) > 8 else ''}). "
                  f"{tr['notes']}. Richardson-Lucy PSF: {tr['classical']['richardson_lucy']['psf']}.", ""]  # fmt: skip
        rows = []
        for method, m in tr["methods"].items():
            med, iqr, rel = m["median"], m["iqr"], m["relative_change_vs_lq"]
            frc = f"{m['frc_resolution_px']:.2f}" + (f" ({m['frc_resolution_um'] * 1e3:.0f} nm)" if m["frc_resolution_um"] else "")
            rows.append([_method_label(method, tr), f"{med['psnr']:.2f} [{iqr['psnr'][0]:.2f}, {iqr['psnr'][1]:.2f}]",
                         f"{med['ssim']:.3f} [{iqr['ssim'][0]:.3f}, {iqr['ssim'][1]:.3f}]", f"{med['mse']:.2e}", f"{med['nrmse']:.3f}",
                         "—" if method == "lq" else f"{rel['psnr']:+.1%} / {rel['ssim']:+.1%}", frc])  # fmt: skip
        lines += table(["method", "PSNR dB [IQR]", "SSIM [IQR]", "MSE", "NRMSE", "vs LQ: PSNR / SSIM", "FRC px"], rows)
        rel_fig = RESULTS.relative_to(REPO) / "quality" / t / Path(tr["figure"]).name  # written there, on whichever machine
        lines += ["", f"**{tr['verdict']}**", "", f"Figure (one test field per row): `{rel_fig}`.", ""]
        if "curves" in tr:
            lines += curves_section(t, tr, (s["patch_size"], s["batch_size"]))
    return lines


def curves_section(t: str, tr: Mapping[str, Any], patches: tuple[int, int]) -> list[str]:
    """The learning-curve figure of a track and when each learned model first passed the track's bar (``patches``:
    the run's patch edge and batch, for models that record none of their own)."""
    c = tr["curves"]
    bar, scores = c["bar"], c["classical_on_validation"]
    rel = RESULTS.relative_to(REPO) / "quality" / t / Path(c["figure"]).name
    lines = [f"Learning curves (validation on {len(c['validation_images'])} held-out images of the training set's "
             f"validation fields; mean plain PSNR/SSIM of central crops, as training validates):", "", f"![Track {t} curves]({rel})", "",
             f"The bar: {bar} on the same validation images, {scores[bar]['psnr']:.2f} dB / SSIM {scores[bar]['ssim']:.3f}.", ""]  # fmt: skip
    rows = []
    for name, info in tr["learned"].items():
        last = info["curve"][-1] if info["curve"] else None
        passed = c["passes_bar"][name]
        when = f"step {passed['step']}, {passed['seconds'] / 60:.1f} min" if passed else "not within the budget"
        final = f"{last['psnr']:.2f} / {last['ssim']:.3f}" if last else "—"
        batch = f"{info.get('patch_size', patches[0])}² x {info.get('batch_size', patches[1])}"
        rows.append([name, info["steps"], batch, f"{info['fit_seconds'] / 60:.1f}", final, _late_rise(info["curve"]), when])
    header = ["model", "steps", "patches x batch", "minutes", "last validation PSNR / SSIM", "rise over the last 20% of the steps",
              f"first passes {bar} (PSNR and SSIM)"]  # fmt: skip
    return lines + table(header, rows) + ["", "Models with the cosine schedule end the budget at `optim.final_lr_fraction` of their peak learning rate, so their curves flatten at the "
                                      "end whatever the budget; the rise is what the last fifth of the steps still brought.", ""]


def _late_rise(curve: Sequence[Mapping[str, float]]) -> str:
    """PSNR / SSIM gained from the validation nearest 80% of a curve's steps to its last one ("—": too few points)."""
    if len(curve) < 3:
        return "—"
    last = curve[-1]
    start = min(curve[:-1], key=lambda p: abs(p["step"] - 0.8 * last["step"]))
    return f"{last['psnr'] - start['psnr']:+.2f} dB / {last['ssim'] - start['ssim']:+.3f} (from step {start['step']:.0f})"


def _patches_and_net(settings: Mapping[str, Any]) -> str:
    """A training run's patches, batch and generator size, as its ``settings`` record them."""
    g = settings["generator"]
    return f"patches {settings['patch_size']}², batch {settings['batch_size']}, generator depth {g['depth']} base {g['base_channels']}"


def recipe_section(recipe: Mapping[str, Any], seeds: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    """The recipe ablation: each choice added one at a time, scored on the same test images as the classical methods;
    the variants that ``seeds`` (runs of ``recipe.py --seed N``) ran again, seed by seed."""
    s = recipe["settings"]
    lines = ["## Recipe ablation (`benchmarks/recipe.py`)", "",
             f"Each row changes one choice of the variant it names (pix2pix is the old default recipe). {s['steps']} generator steps "
             f"per variant, {_patches_and_net(s)}. Data: {s['data']}; {recipe['n_train_images']} training images, "
             f"{recipe['n_test_images']} test images. Metrics: {s['metrics']}. The budget is steps, so the scores do not "
             "depend on the machine's load; the training seconds do (2 cores; a load of about 2 is the run's own threads), so "
             "compare them only between rows of one commit (runs of other commits may have had another CPU).", ""]  # fmt: skip
    own = [f"{name} {v['patch_size']}², batch {v['batch_size']}" for name, v in recipe["variants"].items()
           if (v.get("patch_size", s["patch_size"]), v.get("batch_size", s["batch_size"])) != (s["patch_size"], s["batch_size"])]
    if own:
        lines[-2] += f" Rows with their own patches: {', '.join(own)}."
    g = s["generator"]
    nets = {name: v.get("generator", g) for name, v in recipe["variants"].items()}  # early rows: the settings' generator
    deeper = [f"{name} depth {n['depth']} base {n['base_channels']}" for name, n in nets.items()
              if (n["depth"], n["base_channels"]) != (g["depth"], g["base_channels"])]  # fmt: skip
    if deeper:
        lines[-2] += f" Rows with their own generator: {', '.join(deeper)}."
    rows = [[name, "", "", f"{v['test']['psnr']:.2f}", f"{v['test']['ssim']:.3f}", "", "", ""] for name, v in recipe["classical"].items()]
    names = list(recipe["variants"])
    for i, (name, v) in enumerate(recipe["variants"].items()):
        base = v.get("base", names[i - 1] if i else None)  # results before named bases: the row above
        ref = recipe["variants"].get(base, {}).get("test") if base else None
        change = "" if ref is None else f"{v['test']['psnr'] - ref['psnr']:+.2f} dB / {v['test']['ssim'] - ref['ssim']:+.3f}"
        seconds = f"{v['fit_seconds']:.0f} (load {v['load_average'][0]:.1f})"
        rows.append([name, base or "", v["steps"], f"{v['test']['psnr']:.2f}", f"{v['test']['ssim']:.3f}", change, seconds, v.get("commit", recipe["commit"])])
    lines += table(["variant", "changes", "steps", "PSNR dB", "SSIM", "change vs the variant it changes", "training s", "commit"], rows)
    lines += ["", f"![Recipe ablation curves]({RESULTS.relative_to(REPO) / 'recipe_curves.png'})", ""]
    return lines + (_recipe_seeds(recipe, seeds) if seeds else [])


def _recipe_seeds(recipe: Mapping[str, Any], seeds: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each variant that another seed ran again: its scores and its change against its base, seed by seed."""
    rows = []
    for name in recipe["variants"]:
        runs = [doc for doc in (recipe, *seeds) if name in doc["variants"]]
        for doc in runs if len(runs) > 1 else ():
            v = doc["variants"][name]
            ref = doc["variants"].get(v.get("base"), {}).get("test")
            change = "" if ref is None else f"{v['test']['psnr'] - ref['psnr']:+.2f} dB / {v['test']['ssim'] - ref['ssim']:+.3f}"
            rows.append([name, doc["settings"]["seed"], f"{v['test']['psnr']:.2f}", f"{v['test']['ssim']:.3f}", change, v.get("commit", doc["commit"])])
    lines = ["### Other seeds", "",
             "The same variants, steps, data and test images with another seed (the weights' initialisation, the patches "
             "drawn and which training fields are held out for validation): the change against the base is measured within each seed.", ""]  # fmt: skip
    return lines + table(["variant", "seed", "PSNR dB", "SSIM", "change vs its base (same seed)", "commit"], rows) + [""]


def train_budget_target(doc: Mapping[str, Any]) -> list[str]:
    """The row (target, measured, met) of the new user's timed ``confocalize train`` run."""
    m = doc["medians"]["all"]
    gap = f"{m['default']['psnr'] - m['gaussian']['psnr']:+.2f} dB, {m['default']['ssim'] - m['gaussian']['ssim']:+.3f} SSIM vs the Gaussian"
    return [f"`confocalize train` defaults, {doc['minutes']:g} min: beats a tuned Gaussian (PSNR and SSIM) on W2S 081-120",
            f"{gap} ({doc['steps']} steps; defaults of commit {doc['commit']})",
            _yes(doc["target"]["met"])]  # fmt: skip


def train_budget_section(doc: Mapping[str, Any]) -> list[str]:
    """The new user's run: the CLI with default settings for a wall time, against tuned Gaussian and BM3D."""
    m = doc["machine_before"]
    lines = ["## A new user's training run (`benchmarks/train_budget.py`)", "",
             f"`confocalize train --pairs-csv TRAIN.csv --minutes {doc['minutes']:g} -o RUN` "
             f"with every other setting at its default (those of commit {doc['commit']}): W2S fields "
             f"{doc['train_fields'][0]}-{doc['train_fields'][-1]}, all channels "
             f"(the CLI holds out its own validation and test fields among them), {doc['steps']} generator steps in "
             f"{doc['train_wall_seconds'] / 60:.1f} min on {m['logical_cores']} cores ({m['cpu']}; load "
             f"{m['load_average_1_5_15min']} before, {[round(v, 2) for v in doc['load_average_after_training']]} after training). "
             f"Scored on test fields {doc['test_fields'][0]}-{doc['test_fields'][-1]}; Gaussian ({doc['gaussian']['params']}) and "
             f"BM3D ({doc['bm3d']['params']}) tuned on training images. BM3D on a subset ({doc['subset_rule']}). "
             "Plain PSNR/SSIM, percentile-normalised images, data_range 1, medians.",
             ""]  # fmt: skip
    rows = [[f"{group} ({d['n_images']} images)", name, f"{v['psnr']:.2f}", f"{v['ssim']:.3f}"]
            for group, d in doc["medians"].items() for name, v in d.items() if name != "n_images"]  # fmt: skip
    lines += table(["test images", "method", "PSNR dB", "SSIM"], rows)
    d = doc["default_minus_bm3d_by_image"]
    paired = (f"On the BM3D subset, image by image (median of the differences), default vs BM3D: {d['psnr']:+.2f} dB, "
              f"{d['ssim']:+.3f} SSIM, higher SSIM on {d['ssim_higher']} of {doc['medians']['bm3d_subset']['n_images']} images.")
    curve = ", ".join(f"{c['step']}: {c['psnr']:.2f}/{c['ssim']:.3f}" for c in doc["curve"][::4])
    return lines + ["", paired, "", f"Validation PSNR/SSIM by step (every 4th validation): {curve}.", ""]


def train_speed_section(doc: Mapping[str, Any]) -> list[str]:
    """Where a training step's time goes: inside Lightning, between steps, and the fwd+bwd+Adam floor, per setting."""
    s = doc["settings"]
    phases = next(iter(doc["runs"].values()))[0]["step_seconds"]
    adversarial = len(phases["adversarial"]) / (len(phases["adversarial"]) + len(phases["fidelity"]))
    lines = ["## Training throughput (`benchmarks/train_speed.py`)", "",
             f"The default recipe ({_patches_and_net(s)}) for {s['steps']} generator steps, {s['repeats']} runs per setting (order "
             f"alternating), {s['threads']} threads; data: {s['data']}. *Step*: batch start to batch end inside Lightning "
             "(forward, backward, optimizer steps, EMA, logging, guards), median after the first "
             f"{s['warmup_steps']} steps; the last {adversarial:.0%} of the steps are the adversarial phase (discriminator step added). *Gap*: "
             "from one step's end to the next one's start (data loading, epoch ends), mean. *Floor*: the generator's forward, "
             "L1 loss, backward and Adam step on a batch of the same shape outside Lightning (median), in the setting's memory "
             f"layout. Load average at the start {[round(v, 2) for v in s['load_average_at_start']]}, at the end "
             f"{doc['machine']['load_average_1_5_15min']} (the run's own threads count about 2).", ""]  # fmt: skip
    rows = [[name, f"{v['fidelity_step_s']:.3f}", f"{v['adversarial_step_s']:.3f}" if v["adversarial_step_s"] else "-",
             f"{v['gap_mean_s']:.3f} (max {v['gap_max_s']:.2f})", f"{v['compute_floor_s']:.3f}", f"{v['share_above_floor']:.0%}",
             " / ".join(f"{r['fit_seconds']:.0f}" for r in doc["runs"][name])]
            for name, v in doc["summary"].items()]  # fmt: skip
    cl, nchw = doc["summary"]["channels_last"], doc["summary"]["nchw"]
    change = (f"channels_last against NCHW: {cl['fidelity_step_s'] / nchw['fidelity_step_s'] - 1:+.0%} per fidelity step, "
              f"{cl['adversarial_step_s'] / nchw['adversarial_step_s'] - 1:+.0%} per adversarial step.")  # fmt: skip
    spread = max((max(t) - min(t)) / min(t) for t in ([r["fit_seconds"] for r in runs] for runs in doc["runs"].values()))
    change += f" Runs of one setting differed by up to {spread:.0%} in wall time: smaller differences between settings are noise."
    if "floors" in doc:
        f = doc["floors"]
        change += (f" `torch.compile` of the channels_last generator: {f['channels_last_compiled']:.3f} s per floor step against "
                   f"{f['channels_last']:.3f} s eager, after {doc['compile_seconds']:.0f} s of compiling.")  # fmt: skip
    header = ["setting", "fidelity step s", "adversarial step s", "gap s", "floor s", "above the floor", "whole runs s"]
    return lines + table(header, rows) + ["", change, ""]


def finetune_section(doc: Mapping[str, Any]) -> list[str]:
    """Fine-tuning a partner's model against training from scratch, per track and number of training fields."""
    s = doc["settings"]
    text = [f"Every run: default recipe for {s['minutes']:g} min on the given number of training fields plus one validation "
             "field; scratch starts from random weights, finetune from the parent's generator (`--init-from`).",
             *([f"Parent of B: trained here for {s['parent_minutes']:g} min on Micro 1-5; the user fine-tunes on Mito, test Mito 0 "
                "and 1."] if "B" in doc["tracks"] else []),
             *([f"Parent of C: the built-in model of commit {doc['commit']} (the built-in models have been retrained since); "
                f"the user's wide-field has NA {s['user_optics_c']['lq_na']} and "
                f"{s['user_optics_c']['lq_peak_photons']:g} peak photons, objects from W2S fields no built-in model saw."]
               if "C" in doc["tracks"] else []),
            "Plain PSNR/SSIM, percentile-normalised images, data_range 1, medians over the test images."]  # fmt: skip
    lines = ["## Fine-tuning a partner's model (`benchmarks/finetune.py`)", "", " ".join(text), ""]
    rows = []
    for name, track in doc["tracks"].items():
        parent = "trained here" if "/" in track["parent"] else track["parent"]  # a run folder, or a built-in model's name
        rows += [[name, "raw LQ", "", "", f"{track['lq']['psnr']:.2f}", f"{track['lq']['ssim']:.3f}"],
                 [name, f"parent as is ({parent})", "", "", f"{track['parent_as_is']['psnr']:.2f}", f"{track['parent_as_is']['ssim']:.3f}"]]  # fmt: skip
        rows += [[name, r["init"], r["train_fields"], r["steps"], f"{r['test']['psnr']:.2f}", f"{r['test']['ssim']:.3f}"]
                 for r in track["runs"].values()]  # fmt: skip
    lines += table(["track", "model", "training fields", "steps", "PSNR dB", "SSIM"], rows)
    return lines + ["", f"![Fine-tuning curves]({RESULTS.relative_to(REPO) / 'finetune_curves.png'})", ""]


def trust_section(doc: Mapping[str, Any]) -> list[str]:
    """Uncertainty calibration per track: Spearman of predicted uncertainty vs absolute error, calibration error."""
    rows = [[name, t["model"], t["calibration"]["n_images"], len(t["test_images"]), f"{t['median']['spearman']:.2f}", _yes(t["target_spearman_0_5_met"]),
             f"{t['calibration_error']:.2f}", f"{t['outside_calibration_fraction']:.0%}"]
            for name, t in doc["tracks"].items()]  # fmt: skip
    lines = ["## Can I trust this pixel? (`benchmarks/trust.py`)", "",
             "Uncertainty of `enhance --uncertainty` (spread over the 8 flips/rotations, calibrated on fields the model "
             "never trained on: its validation fields, for C also W2S fields its split does not name) against the absolute error of the output, per pixel, on held-out test images (central "
             f"{doc['settings']['crop']}² crops). Spearman: median over images (target ≥ 0.5). Calibration error: the "
             "pixel-weighted mean of |observed / predicted RMS error - 1| over equal-count bins of predicted uncertainty "
             "(0: perfectly calibrated; the bins are the reliability diagrams below).", ""]  # fmt: skip
    lines += table(["track", "model", "calibration images", "test images", "Spearman", "≥ 0.5", "calibration error", "images flagged outside calibration"], rows)
    return lines + ["", f"![Reliability diagrams]({RESULTS.relative_to(REPO) / 'trust.png'})", ""]


def structures_section(doc: Mapping[str, Any]) -> list[str]:
    """Invented and missed structures per method and track."""
    q = doc["quality_run"]
    commits = ", ".join(f"{name} at commit {t.get('quality_commit', q['commit'])}" for name, t in doc["tracks"].items())
    lines = ["## Invented and missed structures (`benchmarks/structures.py`)", "",
             f"Every method of the quality runs ({commits}; {q['budget']}) on their test images: {doc['method']}. "
             "Invented: detected in the output with no HQ counterpart; missed: in HQ with none in the output.", ""]  # fmt: skip
    rows = [[name, method, *(_share(r["median"][k]) for k in ("invented_spots", "missed_spots", "invented_filaments", "missed_filaments"))]
            for name, track in doc["tracks"].items() for method, r in track["methods"].items()]  # fmt: skip
    lines += table(["track", "method", "invented spots", "missed spots", "invented filament", "missed filament"], rows)
    return lines + [""]


def flicker_section(doc: Mapping[str, Any]) -> list[str]:
    """Frame-to-frame change of input, output, truth and HQ on simulated time-lapses."""
    st = doc["settings"]
    lines = ["## Does the output flicker? (`benchmarks/flicker.py`)", "",
             f"Simulated time-lapses ({st['frames']} frames of {st['size']}², bleaching {st['bleaching']:.0%} per frame, fresh noise "
             f"every frame, seed {st['seed']}) enhanced by the built-in `{st['model']}`: mean |x_t - x_(t-1)| over pixels and frames, "
             "each movie normalised as a whole, the known drift compensated.", ""]  # fmt: skip
    rows = [[name, *(f"{s['frame_change'][k]['mean']:.4f}" if k in s["frame_change"] else "-" for k in ("input", "output", "truth", "hq")),
             f"{s['output_over_input']:.2f}"] for name, s in doc["samples"].items()]  # fmt: skip
    return lines + table(["sample", "input", "output", "noise-free truth", "HQ", "output / input"], rows) + [""]


def precision_target(doc: Mapping[str, Any]) -> list[str]:
    """bf16 enhance within the PSNR target of fp32 on every test image of every track."""
    worst = {track: t["bf16_psnr_change"]["worst"] for track, t in doc["tracks"].items()}
    measured = ", ".join(f"{track}: {w:+.4f} dB" for track, w in worst.items())
    return [f"`enhance --precision bf16`: |PSNR change| against fp32 < {doc['settings']['target_db']} dB on every test image",
            f"worst per track {measured}", _yes(all(t["bf16_within_target"] for t in doc["tracks"].values()))]  # fmt: skip


def precision_section(doc: Mapping[str, Any]) -> list[str]:
    """Quality change and speed of bf16/fp16 autocast against fp32."""
    st = doc["settings"]
    lines = ["## Half precision (`benchmarks/precision.py`)", "",
             f"`enhance --precision bf16|fp16` (PyTorch autocast) against fp32 on each track's built-in model and held-out test "
             f"images (central {st['crop']}² crops). Plain PSNR/SSIM against HQ ({st['normalisation']}); change = half minus fp32 "
             f"per image, median and worst; target |PSNR change| < {st['target_db']} dB on every image.", ""]  # fmt: skip
    rows = [[track, t["model"], len(t["images"]), precision, f"{t[f'{precision}_psnr_change']['median']:+.4f}",
             f"{t[f'{precision}_psnr_change']['worst']:+.4f}", f"{t[f'{precision}_ssim_change']['median']:+.5f}",
             f"{max(im[f'{precision}_max_abs_difference'] for im in t['images']):.4f}", _yes(t[f"{precision}_within_target"])]
            for track, t in doc["tracks"].items() for precision in ("bf16", "fp16")]  # fmt: skip
    lines += table(["track", "model", "images", "precision", "PSNR change dB (median)", "worst", "SSIM change (median)",
                    "largest output difference", "within target"], rows)  # fmt: skip
    lines += ["", f"Speed of the default generator (random weights), {st['speed_size']}² in one tile, best of {st['speed_rounds']} "
              "interleaved rounds:", ""]  # fmt: skip
    rows = [[r["device"], r["runner"], f"{r['mpixel_per_s']:.3f}",
             "" if r["peak_gpu_memory_bytes"] is None else f"{r['peak_gpu_memory_bytes'] / RSS_GIB:.2f}"] for r in doc["speed"]]  # fmt: skip
    lines += table(["device", "runner", "Mpixel/s", "peak GPU memory GiB"], rows)
    if not any(r["device"] == "cuda" for r in doc["speed"]):
        lines += ["", "No GPU in this run, so no GPU rows: run on a machine with one, it adds each precision's Mpixel/s and peak GPU memory there."]
    return lines + [""]


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _method_label(method: str, track: Mapping[str, Any]) -> str:
    """The method with its tuned parameters or its training steps."""
    if method in track["classical"]:
        params = ", ".join(f"{k}={v}" for k, v in track["classical"][method]["params"].items())
        return f"{method} ({params})"
    if method in track["learned"]:
        info = track["learned"][method]
        return f"{method} ({info['steps']} steps)"
    return "raw LQ" if method == "lq" else method


def registration_section(reg: dict[str, Any]) -> list[str]:
    rows = [[group, s["cases"], s["success"], s["wrong"], s["refused"], f"{s['success_rate']:.0%}",
             "" if s["rms_px_median"] is None else f"{s['rms_px_median']:.3f}",
             "" if s["rms_px_p95"] is None else f"{s['rms_px_p95']:.3f}"] for group, s in reg["summary"].items()]  # fmt: skip
    st = reg["settings"]
    lines = ["## Registration (`benchmarks/registration.py`)", "",
             f"Known random transforms (pixel-size ratio 0.25-4, rotation ±15°, flip, shift up to half the field, ±3 % scale "
             f"error and shear); the smaller image {st['size']} px across (simulated: {st['sim_size']} px), less where a real "
             f"image is too small for the field. Success: within {st['tolerance']} LQ px RMS of the truth; wrong: a transform "
             "further off was returned; unrelated pairs must all be refused. Seed "
             f"{st['seed']}.", ""]  # fmt: skip
    lines += table(["cases", "n", "success", "wrong", "refused", "success rate", "median RMS px", "p95 RMS px"], rows)
    large = reg.get("large")
    if large:
        lines += ["", f"Large pair {large['lq_shape']} LQ / {large['hq_shape']} HQ: {large['outcome']}, {large['seconds']:.1f} s."]
    return lines + [""]


def report(results: Mapping[str, dict[str, Any]]) -> str:
    """BENCHMARKS.md from the result documents that exist."""
    speed, precision, quality, reg, recipe, budget, train_speed, finetune, trust, structures, flicker = (
        results.get(n)
        for n in ("speed", "precision", "quality", "registration", "recipe", "train_budget", "train_speed", "finetune", "trust", "structures", "flicker")
    )
    lines = ["# Benchmarks", "",
             "Generated by `make bench` (`benchmarks/run_all.py`) from `benchmarks/results/*.json`; do not edit by hand. "
             "Timings on a shared machine are lower bounds of what it can do: see the load average of each run.", ""]  # fmt: skip
    lines += runs_section(results)
    targets = (speed_targets(speed, quality) if speed else []) + (quality_targets(quality) if quality else [])
    targets += [train_budget_target(budget)] if budget else []
    targets += [precision_target(precision)] if precision else []
    if targets:
        lines += ["## Targets", "", *table(["target", "measured", "met"], targets), ""]
    if quality:
        lines += ["Verdicts:", "", *(f"- {tr['verdict']}{_ran_at(tr, quality)}" for tr in quality["tracks"].values()), ""]
    seeds = [doc for name, doc in results.items() if name.startswith("recipe_seed")]
    sections = ((speed, speed_section), (precision, precision_section), (quality, quality_section),
                (recipe, lambda doc: recipe_section(doc, seeds)), (budget, train_budget_section),
                (train_speed, train_speed_section), (finetune, finetune_section), (trust, trust_section), (structures, structures_section),
                (flicker, flicker_section), (reg, registration_section))  # fmt: skip
    for doc, section in sections:
        if doc:
            lines += section(doc)
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run of every benchmark")
    parser.add_argument("--minutes-per-model", type=float, default=None, help="passed to quality.py")
    parser.add_argument("--skip", action="append", default=[], choices=NAMES, help="leave one benchmark out (repeatable)")
    parser.add_argument("--report-only", action="store_true", help="only regenerate BENCHMARKS.md")
    args = parser.parse_args(argv)
    failed = []
    if not args.report_only:
        with tempfile.TemporaryDirectory(prefix="confocalize-bench-") as work:
            for name, script_args in scripts(args.quick, args.minutes_per_model, Path(work)).items():
                if name not in args.skip and run(name, script_args) != 0:
                    failed.append(name)
    results = {name: doc for name in NAMES if (doc := load(name)) is not None}
    results |= {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("recipe_seed*.json"))}  # recipe.py --seed N
    REPORT.write_text(report(results))
    print(f"written {REPORT}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
