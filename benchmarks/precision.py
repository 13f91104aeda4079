"""Half precision: what ``enhance --precision bf16|fp16`` changes in quality and speed, against fp32.

The built-in models of tracks A (``w2s-denoise``: W2S test fields 081-116, every 7th, one channel
each) and B (``dscm-confocal-sted``: Micro_4, Micro_5, Mito_0, Mito_1) enhance their held-out test
images (central 512² crops) through PyTorch (:class:`confocalize.engine.TorchRunner`) at fp32, bf16
and fp16 (autocast). Quality: plain PSNR/SSIM against HQ (:func:`confocalize.metrics.compare`:
percentile-normalised, data_range 1), the change of each half type against fp32 per image (median
and worst), and the largest absolute difference of the outputs (model units). Target: |PSNR change|
< 0.05 dB on every image. Speed: Mpixel/s of the default generator (random weights) on a 1024²
input in 1024-pixel tiles, best of 3 interleaved rounds, per precision and device (the CPU, and
the GPU when there is one, with its peak memory), beside ONNX Runtime fp32 on the CPU.

    python benchmarks/precision.py          # ~5 min on 2 cores
    python benchmarks/precision.py --quick  # one image per track, 256² crops

Writes ``benchmarks/results/precision.json``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import DEFAULT, build, network_config, print_table, write_results
from confocalize.config import NormalizationConfig
from confocalize.engine import PRECISIONS, Runner, TorchRunner, make_runner
from confocalize.io import read_image
from confocalize.metrics import compare
from confocalize.package import ModelPackage, load_package
from confocalize.pairs import PairPaths
from confocalize.predict import enhance_image, predict_array
from trust import CROP, MODELS, QUICK_CROP, cropped, track_pairs

TARGET_DB = 0.05  # largest acceptable |PSNR change| of a half type against fp32, per image
SPEED_SIZE, SPEED_ROUNDS = 1024, 3


def quality(package: ModelPackage, pairs: Sequence[PairPaths]) -> dict[str, Any]:
    """Per image: PSNR/SSIM of every precision, the half types' change against fp32 and their largest output difference."""
    images = []
    for p in pairs:
        lq, hq = read_image(p.lq), read_image(p.hq).data
        outputs = {precision: enhance_image(package, lq, backend=TorchRunner(package.generator, precision)).data for precision in PRECISIONS}
        scores = {precision: compare(out, hq)["plain"] for precision, out in outputs.items()}
        images.append({
            "name": p.name,
            **{f"{precision}_{m}": scores[precision][m] for precision in PRECISIONS for m in ("psnr", "ssim")},
            **{f"{precision}_max_abs_difference": float(np.abs(outputs[precision] - outputs["fp32"]).max()) for precision in PRECISIONS[1:]},
        })  # fmt: skip
    summary: dict[str, Any] = {"images": images}
    for precision in PRECISIONS[1:]:
        for m in ("psnr", "ssim"):
            change = [im[f"{precision}_{m}"] - im[f"fp32_{m}"] for im in images]
            summary[f"{precision}_{m}_change"] = {"median": float(np.median(change)), "worst": float(max(change, key=abs))}
        summary[f"{precision}_within_target"] = all(abs(im[f"{precision}_psnr"] - im["fp32_psnr"]) < TARGET_DB for im in images)
    return summary


def speed(device: str) -> list[dict[str, Any]]:
    """Mpixel/s of the default generator per precision on ``device`` (and ONNX Runtime fp32 on the CPU), interleaved rounds."""
    net = build(DEFAULT).to(device)
    package = ModelPackage(generator=net, generator_config=network_config(DEFAULT), normalization=NormalizationConfig())
    runners: dict[str, Runner] = {precision: TorchRunner(net, precision) for precision in PRECISIONS}
    if device == "cpu":
        runners["onnxruntime fp32"] = make_runner(package, "onnxruntime")
    x = np.random.default_rng(0).random((1, SPEED_SIZE, SPEED_SIZE), dtype=np.float32)
    times: dict[str, list[float]] = {name: [] for name in runners}
    memory: dict[str, int] = {}
    for _ in range(SPEED_ROUNDS + 1):  # the first round warms up
        for name, runner in runners.items():
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            predict_array(net, x, tile=SPEED_SIZE, runner=runner)
            times[name].append(time.perf_counter() - start)
            if device == "cuda":
                memory[name] = torch.cuda.max_memory_allocated()
    rows = []
    for name, t in times.items():
        best = min(t[1:])
        rows.append({"device": device, "runner": name, "size": SPEED_SIZE, "seconds": best, "mpixel_per_s": SPEED_SIZE**2 / best / 1e6,
                     "peak_gpu_memory_bytes": memory.get(name)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Score and time every precision, print the tables and write ``benchmarks/results/precision.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one test image per track, 256² crops")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tracks = {}
    with tempfile.TemporaryDirectory(prefix="confocalize-precision-") as tmp:
        for track in ("A", "B"):
            pairs = cropped(track_pairs(track, args.quick, Path(tmp))["test"], QUICK_CROP if args.quick else CROP, Path(tmp) / track)
            tracks[track] = {"model": MODELS[track], "test_images": [p.name for p in pairs], **quality(load_package(MODELS[track]), pairs)}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    timings = [row for device in devices for row in speed(device)]
    for track, t in tracks.items():
        rows = [[precision, f"{t[f'{precision}_psnr_change']['median']:+.4f}", f"{t[f'{precision}_psnr_change']['worst']:+.4f}",
                 f"{t[f'{precision}_ssim_change']['median']:+.5f}", "yes" if t[f"{precision}_within_target"] else "no"]
                for precision in PRECISIONS[1:]]  # fmt: skip
        print_table(f"Track {track} ({t['model']}, {len(t['images'])} images): change against fp32",
                    ["precision", "PSNR dB median", "PSNR dB worst", "SSIM median", f"|ΔPSNR| < {TARGET_DB} dB on all"], rows)  # fmt: skip
    print_table("Speed, default generator, 1024² in one tile", ["device", "runner", "Mpixel/s", "peak GPU GiB"],
                [[r["device"], r["runner"], f"{r['mpixel_per_s']:.3f}",
                  "" if r["peak_gpu_memory_bytes"] is None else f"{r['peak_gpu_memory_bytes'] / 2**30:.2f}"] for r in timings])  # fmt: skip
    doc = {
        "settings": {"quick": args.quick, "crop": QUICK_CROP if args.quick else CROP, "target_db": TARGET_DB, "speed_size": SPEED_SIZE,
                     "speed_rounds": SPEED_ROUNDS, "normalisation": "metrics.compare plain: percentile-normalised, data_range 1"},
        "tracks": tracks,
        "speed": timings,
        "seconds": time.perf_counter() - start,
    }  # fmt: skip
    print(f"written {write_results('precision', doc)}")
    return doc


if __name__ == "__main__":
    main()
