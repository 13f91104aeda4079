"""Flicker benchmark: does an enhanced time-lapse change more from frame to frame than its input?

Two simulated samples (:func:`confocalize.simulate.simulate` with ``frames``): a static one and one
moving a whole LQ pixel per frame in x (the drift is known, and compensated exactly before frames are
compared); both bleach by ``--bleaching`` per frame and get fresh photon and read noise every frame.
The built-in model ``sim-widefield-confocal`` enhances each wide-field movie through
:func:`confocalize.predict.enhance_files`, as ``confocalize enhance`` does (frame by frame, one
normalisation per movie); nothing is trained. For every movie, :func:`confocalize.metrics.frame_change`
(mean and median over pixels and frame pairs of ``|x_t - x_{t-1}|``, the movie normalised as a whole) of:
the input (LQ), the output, the noise-free confocal truth on the LQ grid (the floor: bleaching and
interpolation of the drift) and, for the static sample only, the confocal HQ movie (its own grid, which
a drift does not move by whole pixels).

    python benchmarks/flicker.py                       # 5 frames of 256 x 256
    python benchmarks/flicker.py --frames 3 --size 128

prints a table and writes ``benchmarks/results/flicker.json`` (with machine, date and commit).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from common import print_table, write_results
from confocalize.engine import make_runner
from confocalize.io import read_image
from confocalize.metrics import frame_change
from confocalize.package import ModelPackage, load_package
from confocalize.predict import enhance_files
from confocalize.simulate import SimulationParams, simulate

MODEL = "sim-widefield-confocal"
SAMPLES = {"static": (0, 0), "moving": (0, 1)}  # sample drift per frame, (dy, dx) LQ pixels
FIELD = "field000.ome.tif"


def flicker_of_sample(
    package: ModelPackage, drift_px: tuple[int, int], frames: int, size: int, bleaching: float, seed: int, folder: Path
) -> dict[str, Any]:
    """Simulate one movie, enhance it and measure the frame-to-frame change of each version of it."""
    lq_px = SimulationParams().lq_pixel_size
    params = SimulationParams(size=size, drift=(drift_px[1] * lq_px, drift_px[0] * lq_px), bleaching=bleaching)
    simulate(folder, n_fields=1, params=params, seed=seed, frames=frames)
    start = time.perf_counter()
    enhance_files(package, [folder / "lq" / FIELD], folder / "enhanced")
    seconds = time.perf_counter() - start
    kinds = {"input": "lq", "output": "enhanced", "truth": "clean", **({"hq": "hq"} if drift_px == (0, 0) else {})}
    change = {kind: frame_change(read_image(folder / sub / FIELD).data, drift_px) for kind, sub in kinds.items()}
    return {"drift_px_per_frame": list(drift_px), "frame_change": change, "enhance_seconds_per_frame": seconds / frames,
            "output_over_input": change["output"]["mean"] / change["input"]["mean"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--size", type=int, default=256, help="LQ frame edge, pixels")
    parser.add_argument("--bleaching", type=float, default=0.01, help="fraction of fluorescence lost per frame")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    package = load_package(MODEL)
    make_runner(package)  # the ONNX graph is built here, once, not inside the first movie's timing
    with tempfile.TemporaryDirectory() as tmp:
        samples = {name: flicker_of_sample(package, drift, args.frames, args.size, args.bleaching, args.seed, Path(tmp) / name)
                   for name, drift in SAMPLES.items()}  # fmt: skip
    rows = []
    for name, result in samples.items():
        change = result["frame_change"]
        cells = [f"{change[k]['mean']:.4f} / {change[k]['median']:.4f}" if k in change else "n/a" for k in ("input", "output", "truth", "hq")]
        rows.append([name, *cells, f"{result['output_over_input']:.2f}", f"{result['enhance_seconds_per_frame']:.2f}"])
    print_table(
        f"frame-to-frame change |x_t - x_t-1|, mean / median ({args.frames} frames of {args.size}², model {MODEL})",
        ["sample", "input (LQ)", "output", "truth (clean confocal)", "HQ (confocal)", "output / input (mean)", "s per frame"],
        rows,
    )
    settings = {"frames": args.frames, "size": args.size, "bleaching": args.bleaching, "seed": args.seed, "model": MODEL}
    print(write_results("flicker", {"settings": settings, "samples": samples}))


if __name__ == "__main__":
    main()
