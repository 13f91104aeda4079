"""Speed and memory: inference and training throughput, tiled enhance of a large image, scaling.

All in one run, so every ratio compares numbers measured side by side on the same machine:

* fp32 matrix product GFLOP/s (the practical peak: best of calls spread over the run);
* inference Mpixel/s and achieved GFLOP/s of each generator (random weights: speed does not depend
  on them) on square inputs, from the best of several rounds in which all generators take turns
  (so that load from other work on a shared machine falls on all of them alike). Forms: ``plain``
  = one whole-image forward, NCHW fp32, batch 1 (the reference design as published);
  ``channels_last`` = the same in channels_last; ``shipped`` = :func:`confocalize.predict.predict_array`
  with the PyTorch backend (channels_last, 1024-pixel tiles with halos: ``enhance --backend torch``);
  ``shipped_onnxruntime`` = the same tiles through ONNX Runtime (``enhance``'s default on a CPU,
  :mod:`confocalize.engine`; its graph is built before the timing). GFLOP/s counts the convolutions
  actually executed (tile halos and padding included), so tiling overhead shows as Mpixel/s, not as
  efficiency;
* training images/s at 256 x 256 (the real training step of :class:`confocalize.train.Pix2Pix`
  with its PatchGAN, through Lightning; best of two alternating runs);
* ``confocalize enhance --dtype uint16`` on 16-bit TIFFs of 1k² to 8k² pixels, the default model and
  backend, one fresh process each: wall time (interpreter start included; the linear fit's intercept)
  and peak RSS (the 8192² one must stay under 2 GiB), and how time scales with pixels. The model's
  ONNX graph is built (and timed) once before, in a cache folder of the run, as a user's second
  ``enhance`` finds it.

    python benchmarks/speed.py            # full (~15 min on 2 idle cores, longer when shared)
    python benchmarks/speed.py --quick    # smoke run of every path (~2 min)

Writes ``benchmarks/results/speed.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from common import DEFAULT, LABELS, OLD_DEFAULT, REFERENCE, architecture, build, network_config, print_table, quiet_lightning, write_results
from confocalize.config import DataConfig, NormalizationConfig, TrainConfig, TrainerConfig
from confocalize.engine import CACHE_ENV, Runner, make_runner, onnx_graph
from confocalize.io import write_image
from confocalize.package import ModelPackage, save_package
from confocalize.predict import predict_array, round_up
from confocalize.train import Pix2Pix

RSS_LIMIT = 2 * 1024**3  # bytes, for the 8192² enhance
# (generator, form, sizes); the default U-Net is not run whole at 4096² (about 17 GB of activations).
INFERENCE = [
    (REFERENCE, "plain", (256, 1024, 4096)),
    (REFERENCE, "channels_last", (256, 1024)),
    (DEFAULT, "shipped_onnxruntime", (256, 1024, 4096)),
    (DEFAULT, "shipped", (256, 1024, 4096)),
    (DEFAULT, "channels_last", (256, 1024)),
    (DEFAULT, "plain", (256, 1024)),
    (OLD_DEFAULT, "shipped", (256, 1024, 4096)),
    (OLD_DEFAULT, "plain", (256, 1024)),
]
BACKEND_OF_FORM = {"shipped": "torch", "shipped_onnxruntime": "onnxruntime"}  # the tiled forms and their backends
ENHANCE_FORM = "shipped_onnxruntime"  # the form `confocalize enhance` runs by default here (backend auto, CPU)
ROUNDS = {256: 7, 512: 3, 1024: 3, 4096: 2}  # interleaved rounds per input size (best of them: the first of a size warms the runner up)
QUICK_SIZES = (256, 512)


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


class Matmul:
    """fp32 ``n x n`` matrix products sampled between the other measurements; the best is the practical peak."""

    def __init__(self, n: int = 2048) -> None:
        self.n = n
        self.a, self.b = torch.rand(n, n), torch.rand(n, n)
        torch.mm(self.a, self.b)  # warm-up
        self.times: list[float] = []

    def sample(self, reps: int = 5) -> None:
        self.times += [_seconds(lambda: torch.mm(self.a, self.b)) for _ in range(reps)]

    def summary(self) -> dict[str, float]:
        flop = 2 * self.n**3
        return {"n": self.n, "gflops": flop / min(self.times) / 1e9, "gflops_median": flop / statistics.median(self.times) / 1e9,
                "samples": len(self.times)}  # fmt: skip


def flops_per_pixel(net: nn.Module) -> float:
    """Convolution FLOPs per input pixel (fully convolutional nets: the same at every multiple of ``net.multiple``)."""
    size = max(256, net.multiple)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.zeros(1, 1, size, size))
    return counter.get_total_flops() / size**2


class PixelCounter:
    """A runner that counts the (padded) input pixels of the tiles it runs through another runner."""

    def __init__(self, runner: Runner, multiple: int) -> None:
        self.runner, self.multiple, self.pixels = runner, multiple, 0
        self.name = runner.name

    @contextlib.contextmanager
    def session(self) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
        with self.runner.session() as forward:

            def counted(tiles: np.ndarray) -> np.ndarray:
                self.pixels += tiles.shape[0] * round_up(tiles.shape[-2], self.multiple) * round_up(tiles.shape[-1], self.multiple)
                return forward(tiles)

            yield counted


class WholeImage:
    """The runner of the untiled forms: ``net`` on whole images in one memory format, fp32, without autograd."""

    name = "torch"

    def __init__(self, net: nn.Module, memory_format: torch.memory_format) -> None:
        self.net, self.memory_format = net.to(memory_format=memory_format), memory_format

    @contextlib.contextmanager
    def session(self) -> Iterator[Callable[[np.ndarray], np.ndarray]]:
        with torch.inference_mode():
            yield lambda x: self.net(torch.from_numpy(x).contiguous(memory_format=self.memory_format)).numpy()


@dataclass
class Timed:
    """One generator in one form on one input size, with the times of its calls."""

    name: str
    form: str
    size: int
    net: nn.Module
    counter: PixelCounter
    x: np.ndarray  # the (1, size, size) input
    times: list[float] = field(default_factory=list)
    calls: int = 0

    def run(self) -> None:
        """The tiled forms through predict_array, the others as one forward pass."""
        if self.form in BACKEND_OF_FORM:
            predict_array(self.net, self.x, runner=self.counter)
            return
        with self.counter.session() as forward:
            forward(self.x[None])

    def call(self) -> float:
        """Run once; return (and keep) the seconds it took."""
        self.calls += 1
        self.times.append(_seconds(self.run))
        return self.times[-1]

    def summary(self, peak: float) -> dict[str, Any]:
        """Mpixel/s and GFLOP/s of the best call (the least disturbed by other work on the machine)."""
        per_pixel = flops_per_pixel(self.net)
        best = min(self.times)
        executed = per_pixel * self.counter.pixels / self.calls
        return {
            "generator": self.name, "form": self.form, "size": self.size, "seconds": best,
            "seconds_median": statistics.median(self.times), "reps": len(self.times),
            "mpixel_per_s": self.size**2 / best / 1e6, "gflop_per_image": per_pixel * self.size**2 / 1e9,
            "executed_gflop": executed / 1e9, "gflops": executed / best / 1e9, "fraction_of_matmul": executed / best / 1e9 / peak,
        }  # fmt: skip


def timed(name: str, form: str, size: int) -> Timed:
    """A :class:`Timed` run of a freshly built generator; ``form`` is one of :data:`INFERENCE`'s."""
    net = build(name)
    if form in BACKEND_OF_FORM:
        package = ModelPackage(generator=net, generator_config=network_config(name), normalization=NormalizationConfig())
        runner: Runner = make_runner(package, BACKEND_OF_FORM[form])  # builds the ONNX graph (untimed)
    else:
        runner = WholeImage(net, torch.channels_last if form == "channels_last" else torch.contiguous_format)
    x = np.random.default_rng(0).random((1, size, size), dtype=np.float32)
    return Timed(name, form, size, net, PixelCounter(runner, net.multiple), x)


def inference(size: int, configs: list[tuple[str, str]], rounds: int, matmul: Matmul) -> list[Timed]:
    """Time every (generator, form) on a ``size``² input, interleaved: a warm-up each, then ``rounds`` rounds.

    Interleaving makes load from other work fall on all of them alike; the matrix product is
    sampled after every round. One round: no warm-up.
    """
    runners = [timed(name, form, size) for name, form in configs]
    for _ in range(rounds + (rounds > 1)):
        for r in runners:
            r.call()
        matmul.sample()
    for r in runners:
        if rounds > 1:
            r.times.pop(0)  # the warm-up
    return runners


class _BatchTimes(L.Callback):
    """Wall-clock time at the end of every training batch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter())


def training(name: str, size: int, batch: int, steps: int, warmup: int = 2) -> dict[str, Any]:
    """Images/s of the real pix2pix training step (generator + PatchGAN, default losses) at ``size``²."""
    cfg = TrainConfig(
        generator=network_config(name),
        data=DataConfig(patch_size=size, batch_size=batch),
        trainer=TrainerConfig(max_steps=warmup + steps, progress_bar=False, accelerator="cpu"),
    )
    torch.manual_seed(0)
    with architecture(name):
        module = Pix2Pix(cfg)
    n = batch * (warmup + steps)
    loader = DataLoader(TensorDataset(torch.rand(n, 1, size, size), torch.rand(n, 1, size, size)), batch_size=batch)
    clock = _BatchTimes()
    trainer = L.Trainer(
        max_steps=(warmup + steps) * module.n_optimizers, limit_val_batches=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1, callbacks=[clock],
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(val_dataloader|LeafSpec|does not have many workers).*")
        trainer.fit(module, train_dataloaders=loader)
    seconds = clock.times[-1] - clock.times[warmup - 1]
    return {"generator": name, "size": size, "batch": batch, "steps": steps, "seconds": seconds, "images_per_s": batch * steps / seconds}


# Runs a command and prints its peak RSS (KiB). A small launcher, because a child forked from this
# (large) process would count this process's memory in its own high-water mark.
_PEAK_RSS = (
    "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
)


def training_best(names: tuple[str, ...], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`training` of each generator, alternating, ``train_repeats`` times; the best run of each."""
    runs = [
        training(name, settings["train_size"], settings["train_batch"], settings["train_steps"])
        for _ in range(settings["train_repeats"])
        for name in names
    ]
    return [max((r for r in runs if r["generator"] == name), key=lambda r: r["images_per_s"]) for name in names]


def enhance_file(model_dir: Path, image: Path, out_dir: Path) -> dict[str, float]:
    """``confocalize enhance --dtype uint16`` on one file in a fresh process: wall seconds and peak RSS."""
    cli = str(Path(sys.executable).with_name("confocalize"))
    cmd = [sys.executable, "-c", _PEAK_RSS, cli, "enhance", str(model_dir), str(image), "-o", str(out_dir), "--dtype", "uint16"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"confocalize enhance {image.name} failed:\n{done.stderr[-2000:]}")
    return {"seconds": seconds, "peak_rss_bytes": int(done.stdout.split()[-1]) * 1024}


def enhance_scaling(sizes: tuple[int, ...], work: Path) -> dict[str, Any]:
    """Time and peak RSS of :func:`enhance_file` on 16-bit images of each size, with the default model."""
    model_dir = save_package(
        ModelPackage(generator=build(DEFAULT), generator_config=network_config(DEFAULT), normalization=NormalizationConfig()),
        work / "model",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        image = write_image(work / f"input_{size}.tif", rng.integers(0, 2**16, (size, size), dtype=np.uint16), "YX", 0.1)
        result = enhance_file(model_dir, image, work / "out")
        rows.append({"size": size, "mpixels": size**2 / 1e6, **result, "s_per_mpixel": result["seconds"] / (size**2 / 1e6)})
        image.unlink()
    mpx = np.array([r["mpixels"] for r in rows])
    secs = np.array([r["seconds"] for r in rows])
    slope, intercept = np.polyfit(mpx, secs, 1)
    fit = slope * mpx + intercept
    r2 = float(1 - np.sum((secs - fit) ** 2) / np.sum((secs - secs.mean()) ** 2)) if len(rows) > 2 else None
    return {
        "generator": DEFAULT,
        "rows": rows,
        "linear_fit": {"s_per_mpixel": float(slope), "intercept_s": float(intercept), "r2": r2},
        "largest": rows[-1],
        "rss_limit_bytes": RSS_LIMIT,
        "largest_under_limit": rows[-1]["peak_rss_bytes"] < RSS_LIMIT,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print tables and write ``benchmarks/results/speed.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few steps: exercises every path")
    args = parser.parse_args(argv)
    quick = args.quick
    quiet_lightning()
    settings = {
        "quick": quick,
        "rounds": {size: ROUNDS[size] for size in (QUICK_SIZES if quick else (256, 1024, 4096))},
        "train_size": 128 if quick else 256,
        "train_batch": 2 if quick else 4,
        "train_steps": 2 if quick else 4,
        "train_repeats": 1 if quick else 2,
        "scaling_sizes": (512, 1024) if quick else (1024, 2048, 4096, 8192),
        "enhance_form": ENHANCE_FORM,
        "load_average_at_start": os.getloadavg(),
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="confocalize-speed-") as tmp:
        os.environ[CACHE_ENV] = str(Path(tmp) / "cache")  # this run's ONNX graphs, found by its enhance processes too
        results = measure(settings, Path(tmp))
    results["seconds"] = time.perf_counter() - start
    print(f"written {write_results('speed', results)}")
    return results


def measure(settings: dict[str, Any], work: Path) -> dict[str, Any]:
    """Every measurement of :func:`main`, with ``work`` as scratch space; prints the tables."""
    graph = graph_build()
    matmul = Matmul()
    matmul.sample(20)
    runners = [
        r
        for size, rounds in settings["rounds"].items()
        for r in inference(size, [(n, form) for n, form, sizes in INFERENCE if settings["quick"] or size in sizes], rounds, matmul)
    ]
    train_runs = training_best((DEFAULT, OLD_DEFAULT, REFERENCE), settings)
    matmul.sample(20)
    peak = matmul.summary()
    print(f"fp32 matrix product: {peak['gflops']:.1f} GFLOP/s (best of {peak['samples']} calls spread over the run)")
    runs = [r.summary(peak["gflops"]) for r in runners]
    print_inference(runs)
    print_table(
        f"Training at {settings['train_size']}² (batch {settings['train_batch']}, with PatchGAN)",
        ["generator", "images/s"], [[LABELS[r["generator"]], f"{r['images_per_s']:.2f}"] for r in train_runs],
    )  # fmt: skip
    scaling = enhance_scaling(settings["scaling_sizes"], work)
    print_scaling(scaling)
    return {
        "settings": settings,
        "matmul": peak,
        "inference": runs,
        "ratios": ratios(runs),
        "training": train_runs,
        "enhance": scaling,
        "onnx_graph": graph,
    }


def graph_build() -> dict[str, Any]:
    """Seconds to build the default generator's ONNX graph on first use (empty cache), and its size."""
    package = ModelPackage(generator=build(DEFAULT), generator_config=network_config(DEFAULT), normalization=NormalizationConfig())
    start = time.perf_counter()
    graph = onnx_graph(package)
    result = {"generator": DEFAULT, "seconds": time.perf_counter() - start, "bytes": len(graph)}
    print(f"ONNX graph of the default generator: built in {result['seconds']:.1f} s ({result['bytes'] / 1e6:.1f} MB), then cached")
    return result


def ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: each confocalize generator's Mpixel/s over the reference's plain form (and channels_last)."""
    by_key = {(r["generator"], r["form"], r["size"]): r for r in runs}
    out = []
    for (name, form, size), run in by_key.items():
        if name == REFERENCE:
            continue
        ref_plain, ref_cl = by_key.get((REFERENCE, "plain", size)), by_key.get((REFERENCE, "channels_last", size))
        out.append({
            "generator": name, "form": form, "size": size,
            "vs_reference_plain": run["mpixel_per_s"] / ref_plain["mpixel_per_s"] if ref_plain else None,
            "vs_reference_channels_last": run["mpixel_per_s"] / ref_cl["mpixel_per_s"] if ref_cl else None,
        })  # fmt: skip
    return out


def print_inference(runs: list[dict[str, Any]]) -> None:
    rows = [
        [LABELS[r["generator"]], r["form"], f"{r['size']}²", f"{r['mpixel_per_s']:.3f}", f"{r['gflops']:.1f}",
         f"{r['fraction_of_matmul']:.0%}", f"{r['gflop_per_image']:.1f}", r["reps"]]
        for r in runs
    ]  # fmt: skip
    print_table("Inference", ["generator", "form", "input", "Mpixel/s", "GFLOP/s", "of matmul", "GFLOP/image", "reps"], rows)


def print_scaling(scaling: dict[str, Any]) -> None:
    rows = [
        [f"{r['size']}²", f"{r['seconds']:.1f}", f"{r['s_per_mpixel']:.2f}", f"{r['peak_rss_bytes'] / 2**30:.2f}"]
        for r in scaling["rows"]
    ]
    header = ["image", "seconds", "s/Mpixel", "peak RSS GiB"]
    print_table("confocalize enhance, 16-bit input, default model (fresh process each)", header, rows)


if __name__ == "__main__":
    main()
