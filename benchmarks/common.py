"""What the benchmark scripts share: paths, the compared generators, machine facts, result files, tables."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import platform
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from confocalize import package, train
from confocalize.config import DiscriminatorConfig, GeneratorConfig, LossConfig, OptimConfig
from confocalize.io import read_image
from confocalize.metrics import compare
from confocalize.nets.reference import REFERENCE_GENERATOR, build_reference
from confocalize.pairs import PairPaths
from confocalize.report import read_run_log

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("CONFOCALIZE_DATA", REPO.parent / "shared" / "data"))  # override: a copy elsewhere
RESULTS = REPO / "benchmarks" / "results"

# The compared generators: the TrainConfig default, the default before the recipe, and the reference pix2pix.
DEFAULT = "default"
OLD_DEFAULT = "old_default"
REFERENCE = "reference"
GENERATORS: dict[str, GeneratorConfig] = {
    DEFAULT: GeneratorConfig(), OLD_DEFAULT: GeneratorConfig(depth=4, base_channels=32, residual=False), REFERENCE: REFERENCE_GENERATOR,
}  # fmt: skip
_default = GENERATORS[DEFAULT]
LABELS = {
    DEFAULT: f"confocalize default (U-Net depth {_default.depth}, base {_default.base_channels})",
    OLD_DEFAULT: "confocalize before the recipe (U-Net depth 4, base 32)",
    REFERENCE: "reference pix2pix (unet_256, ngf 64)",
}
# The training settings before the recipe (pix2pix's): GAN from the first step, Adam 2e-4 / beta1 0.5
# for both networks at a constant rate, the last weights exported, patches drawn anywhere.
OLD_LOSS = LossConfig(fidelity_fraction=0.0, adv_ramp_fraction=0.0)
OLD_DISCRIMINATOR = DiscriminatorConfig(base_channels=64)  # pix2pix's 70x70 PatchGAN at full width
OLD_OPTIM = OptimConfig(lr=2e-4, d_lr=2e-4, beta1=0.5, schedule="constant", ema_decay=0.0)
OLD_PATCH_SIGNAL = 0.0


def network_config(name: str) -> GeneratorConfig:
    """:data:`GENERATORS`' settings of ``name`` as a network is built: where training would decide
    ``residual`` from the pairs, plain (a residual skip adds one addition, nothing measurable in speed)."""
    cfg = GENERATORS[name]
    return cfg.model_copy(update={"residual": False}) if cfg.residual == "auto" else cfg


def build(name: str) -> torch.nn.Module:
    """A freshly initialised generator of one of :data:`GENERATORS` (seeded, eval mode)."""
    torch.manual_seed(0)
    cfg = network_config(name)
    return (build_reference(cfg) if name == REFERENCE else package.build_generator(cfg)).eval()


@contextlib.contextmanager
def architecture(name: str) -> Iterator[None]:
    """Let ``train.fit``/``Pix2Pix`` and ``load_package`` build the reference U-Net for ``name == REFERENCE``.

    Stand-in until ``GeneratorConfig`` has an ``architecture`` field that ``package.build_generator``
    dispatches on; a package saved under it loads only inside this context.
    """
    if name != REFERENCE:
        yield
        return
    with mock.patch.object(train, "build_generator", build_reference), mock.patch.object(package, "build_generator", build_reference):
        yield


def learning_curve(run: Path) -> list[dict[str, float]]:
    """Validation PSNR/SSIM against generator steps and training seconds, from a run folder's CSV logs."""
    return [
        {"step": int(r["time/generator_steps"]), "seconds": r["time/train_seconds"], "psnr": r["val/psnr"], "ssim": r["val/ssim"]}
        for r in read_run_log(run) if "val/psnr" in r
    ]  # fmt: skip


def per_image_scores(outputs: Mapping[str, np.ndarray], pairs: Sequence[PairPaths]) -> dict[str, list[float]]:
    """Plain PSNR and SSIM (``metrics.compare``: percentile-normalised, data_range 1) of ``outputs``
    (by pair name) against each pair's HQ, in ``pairs``' order."""
    values = [compare(outputs[p.name], read_image(p.hq).data)["plain"] for p in pairs]
    return {m: [float(v[m]) for v in values] for m in ("psnr", "ssim")}


def median_scores(outputs: Mapping[str, np.ndarray], pairs: Sequence[PairPaths]) -> dict[str, float]:
    """Median plain PSNR/SSIM of ``outputs`` (:func:`per_image_scores`)."""
    return {m: float(np.median(v)) for m, v in per_image_scores(outputs, pairs).items()}


def quiet_lightning() -> None:
    """Keep Lightning's informational lines (accelerator found, tips) off the benchmark output."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def machine() -> dict[str, Any]:
    """CPU model, cores, GPU, torch threads and versions, and the load average (other work skews timings)."""
    return {
        "cpu": train.cpu_model(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_1_5_15min": [round(v, 2) for v in os.getloadavg()],
    }


def commit() -> str:
    """Short hash of the checked-out commit, read from ``.git`` (uncommitted changes are not seen); in a
    ``git worktree`` (``.git`` is then a file naming its folder) from that worktree's HEAD.

    A copy without ``.git`` (a remote machine) names its commit in ``CONFOCALIZE_COMMIT``.
    """
    if "CONFOCALIZE_COMMIT" in os.environ:
        return os.environ["CONFOCALIZE_COMMIT"][:7]
    git = REPO / ".git"
    try:
        if git.is_file():  # "gitdir: /repo/.git/worktrees/NAME"; branches and packed refs live in the main .git
            git = Path(git.read_text().split(":", 1)[1].strip())
        common = (git / (git / "commondir").read_text().strip()).resolve() if (git / "commondir").is_file() else git
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head[:7]
        ref = head[5:]
        if (common / ref).is_file():
            return (common / ref).read_text().strip()[:7]
        for line in (common / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line[:7]
    except OSError:
        pass
    return "unknown"


def kept_results(name: str, part: str, settings: Mapping[str, Any], redo: Collection[str]) -> dict[str, Any]:
    """The entries of ``part`` in ``benchmarks/results/NAME.json`` that this run does not redo, each tagged
    with the commit, date and CPU of the run that measured it (an entry's own tags win), if that run had
    the same ``settings``; a one-line exit where it had not. None stored: nothing kept."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    if changed := [k for k, v in settings.items() if old["settings"].get(k) != v]:
        raise SystemExit(f"{path}: ran with another {', '.join(changed)}; rerun all of it (drop --keep-others)")
    ran = {"commit": old["commit"], "date": old["date"][:10], "cpu": old["machine"]["cpu"]}
    return {key: {**ran, **entry} for key, entry in old[part].items() if key not in redo}


def write_results(name: str, results: dict[str, Any]) -> Path:
    """``benchmarks/results/NAME.json`` with the machine, date and commit added."""
    doc = {"benchmark": name, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "commit": commit(),
           "machine": machine(), **results}  # fmt: skip
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A rich table on the terminal."""
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    Console(width=200).print(table)
