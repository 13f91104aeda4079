"""Paired LQ/HQ training data: loading, splits by field of view, patch and validation datasets.

Every sample is one output plane with its network input (see :mod:`confocalize.stacks`), float32,
percentile-normalised on its own image. With ``data.channels: separate`` (default) a ``YX`` pair
gives one sample, a ``CYX`` pair one per channel, a ``ZYX`` pair one per plane and a ``CZYX`` pair
one per channel and plane; with ``joint`` a sample holds all channels of a plane. The LQ input of a
sample also holds ``data.context_slices`` neighbouring planes on each side (2.5D). Each channel is
normalised over its whole stack (LQ and HQ separately), so the planes of one stack keep their
relative intensities.
All samples of a pair keep the pair's field id: splits are made by field, never by image, plane
or patch, so no field of view contributes to two sets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from confocalize.config import DataConfig, NormalizationConfig
from confocalize.errors import ConfocalizeError
from confocalize.io import Image, read_image, refuse_time_lapse, write_json
from confocalize.normalize import sampled_normalization
from confocalize.pairs import PairPaths
from confocalize.stacks import as_czyx, data_groups, network_input

SETS = ("train", "val", "test")
SPLIT_VERSION = 1
VALIDATION_MAX_SIZE = 512


@dataclass(frozen=True)
class PairImages:
    """One normalised sample: LQ network input ``(C_in, Y, X)`` and HQ target ``(C_out, Y, X)``, float32, one grid."""

    name: str
    field: str
    lq: np.ndarray
    hq: np.ndarray
    pixel_size: float | None = None  # µm of the LQ image

    @property
    def shape(self) -> tuple[int, int]:
        """Height and width in pixels."""
        return self.lq.shape[-2], self.lq.shape[-1]


def load_pairs(pairs: Sequence[PairPaths], cfg: DataConfig) -> list[PairImages]:
    """Read, check and normalise pairs into single-channel samples (see the module docstring).

    Raises :class:`ConfocalizeError` for LQ/HQ files whose shapes differ (not registered) and for
    images smaller than ``cfg.patch_size`` (they cannot give a training patch; nothing is padded).
    """
    return [sample for pair in pairs for sample in _load_pair(pair, cfg)]


def _load_pair(pair: PairPaths, cfg: DataConfig) -> list[PairImages]:
    lq = read_image(pair.lq, pixel_size=cfg.lq_pixel_size)
    hq = read_image(pair.hq)
    for image in (lq, hq):
        refuse_time_lapse(image, "train (training takes single time points)")
    if lq.axes != hq.axes or lq.data.shape != hq.data.shape:
        raise ConfocalizeError(
            f"{pair.lq} ({lq.axes} {lq.data.shape}) and {pair.hq} ({hq.axes} {hq.data.shape}): LQ and HQ differ in shape; "
            "register them first with 'confocalize register LQ_DIR HQ_DIR -o PAIRS_DIR'"
        )
    height, width = lq.data.shape[-2:]
    if min(height, width) < cfg.patch_size:
        raise ConfocalizeError(
            f"{pair.lq}: {height}x{width} pixels is smaller than the training patch ({cfg.patch_size}); "
            "lower data.patch_size or leave this pair out"
        )
    if cfg.context_slices and "Z" not in lq.axes:
        raise ConfocalizeError(f"{pair.lq}: {lq.axes} image has no z-planes for data.context_slices; use stacks or set it to 0")
    _refuse_constant(lq)
    _refuse_constant(hq)
    lq_czyx = _normalised_czyx(lq, cfg.normalization, cfg.normalization.input_window)
    hq_czyx = _normalised_czyx(hq, cfg.normalization, window=1)
    return [
        PairImages(
            pair.name + _suffix(lq.axes, group, z), pair.field,
            network_input(lq_czyx, group, z, cfg.context_slices), hq_czyx[group, z], lq.pixel_size,
        )  # fmt: skip
        for group in data_groups(len(lq_czyx), joint=cfg.channels == "joint")
        for z in range(lq_czyx.shape[1])
    ]


def _refuse_constant(image: Image) -> None:
    """A constant channel (all zero, say) teaches the model nothing: refuse it, naming the file."""
    for c, channel in enumerate(as_czyx(image.data, image.axes)):
        if channel.min() == channel.max():
            which = f"channel {c}: " if "C" in image.axes else ""
            raise ConfocalizeError(
                f"{image.path}: {which}every pixel is {channel.flat[0]}, a constant image teaches the model nothing; "
                "leave this pair out or check how it was exported"
            )


def _normalised_czyx(image: Image, norm: NormalizationConfig, window: int) -> np.ndarray:
    """``(C, Z, Y, X)`` float32, each channel normalised over its whole stack (percentiles of its
    ``window``-pixel local means, as :func:`confocalize.predict.enhance_image` takes them)."""
    return np.stack([sampled_normalization(c, norm.low, norm.high, window).apply(c) for c in as_czyx(image.data, image.axes)])


def _suffix(axes: str, group: list[int], z: int) -> str:
    """``_c1`` for a channel on its own, ``_z3`` for a plane of a stack (nothing for joint channels or 2D)."""
    return (f"_c{group[0]}" if "C" in axes and len(group) == 1 else "") + (f"_z{z}" if "Z" in axes else "")


def sample_channels(images: Sequence[PairImages]) -> tuple[int, int]:
    """The LQ input and HQ target channels shared by all samples: the model's in and out channels."""
    counts = sorted({(im.lq.shape[0], im.hq.shape[0]) for im in images})
    if len(counts) != 1:
        raise ConfocalizeError(
            f"pairs give samples with different channels (in, out): {counts}; with data.channels 'joint' "
            "every pair needs the same number of channels"
        )
    return counts[0]


def _rng(*keys: int) -> np.random.Generator:
    """A generator seeded by a tuple of integers (negative ones allowed)."""
    return np.random.default_rng([key % 2**32 for key in keys])


def split_by_field(
    pairs: Sequence[PairPaths], val_fraction: float, test_fraction: float, seed: int = 0
) -> dict[str, list[PairPaths]]:
    """Assign whole fields of view to ``train``, ``val`` and ``test`` (deterministic for a seed).

    A set whose fraction is > 0 gets at least one field and training keeps at least one; a
    :class:`ConfocalizeError` says so when there are too few fields for that.
    """
    fields = sorted({p.field for p in pairs})
    n_val, n_test = _held_out_counts(fields, val_fraction, test_fraction)
    shuffled = [fields[i] for i in _rng(seed).permutation(len(fields))]
    owner = {f: "test" for f in shuffled[:n_test]}
    owner |= {f: "val" for f in shuffled[n_test : n_test + n_val]}
    owner |= {f: "train" for f in shuffled[n_test + n_val :]}
    return {name: [p for p in pairs if owner[p.field] == name] for name in SETS}


def _held_out_counts(fields: Sequence[str], val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Numbers of validation and test fields: rounded shares, at least 1 where asked, train >= 1."""
    n = len(fields)
    needed = 1 + (val_fraction > 0) + (test_fraction > 0)
    if n < needed:
        shown = ", ".join(fields[:5]) + (" ..." if n > 5 else "")
        raise ConfocalizeError(
            f"only {n} field(s) of view ({shown or 'no pairs'}), but train/val/test by field needs at least {needed}; "
            "add pairs from more fields, check data.field_pattern, or set data.val_fraction/test_fraction to 0"
        )
    counts = [max(1, round(frac * n)) if frac > 0 else 0 for frac in (val_fraction, test_fraction)]
    while sum(counts) > n - 1:  # give fields back to training from the larger held-out set
        counts[counts.index(max(counts))] -= 1
    return counts[0], counts[1]


def split_summary(split: dict[str, list[PairPaths]]) -> dict[str, dict[str, list[str]]]:
    """The fields and pair names of each set (for split.json, provenance and reports)."""
    return {name: {"fields": sorted({p.field for p in split[name]}), "names": [p.name for p in split[name]]} for name in SETS}


def write_split(path: str | os.PathLike, split: dict[str, list[PairPaths]]) -> Path:
    """Write ``split.json``: per set its fields, names and (absolute) LQ/HQ paths."""
    summary = split_summary(split)
    doc: dict = {"version": SPLIT_VERSION}
    for name in SETS:
        pairs = [{"name": p.name, "field": p.field, "lq": _absolute(p.lq), "hq": _absolute(p.hq)} for p in split[name]]
        doc[name] = {"fields": summary[name]["fields"], "pairs": pairs}
    return write_json(path, doc)


def _absolute(path: str | os.PathLike) -> str:
    return str(Path(path).resolve())


def read_split(path: str | os.PathLike) -> dict[str, list[PairPaths]]:
    """Read a ``split.json`` written by :func:`write_split` back into pairs per set."""
    path = Path(path)
    if not path.is_file():
        raise ConfocalizeError(f"{path}: no such split file; give the run folder written by 'confocalize train'")
    try:
        doc = json.loads(path.read_text())
        if doc["version"] != SPLIT_VERSION:
            raise ValueError(f"version {doc['version']}, expected {SPLIT_VERSION}")
        return {
            name: [PairPaths(p["name"], p["field"], Path(p["lq"]), Path(p["hq"])) for p in doc[name]["pairs"]] for name in SETS
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfocalizeError(f"{path}: not a valid split file ({exc}); re-run training or restore the file") from None


class PatchOrigins:
    """Where training patches may start: the positions whose HQ patch holds signal.

    A patch at ``(y, x)`` qualifies when the maximum of its normalised HQ target (over channels)
    reaches ``signal`` (CSBDeep's background filter: patches of empty background teach the model
    little and waste steps); ``signal == 0`` admits every position. Computed once per training run.
    """

    def __init__(self, images: Sequence[PairImages], patch_size: int, signal: float = 0.0) -> None:
        self.patch_size = patch_size
        self.masks = [_signal_mask(im.hq, patch_size, signal) for im in images]
        self.row_counts = [np.cumsum(m.sum(axis=1)) for m in self.masks]
        counts = np.array([c[-1] for c in self.row_counts], dtype=np.float64)
        if counts.sum() == 0:
            raise ConfocalizeError(
                f"no {patch_size}-pixel training patch reaches data.patch_signal {signal:g} of the normalised HQ range; "
                "lower data.patch_signal (0 draws patches anywhere) or check the HQ images"
            )
        areas = np.array([im.shape[0] * im.shape[1] for im in images], dtype=np.float64)
        shares = counts / np.array([m.size for m in self.masks], dtype=np.float64)
        self.weights = areas * shares / (areas * shares).sum()  # by area where every position qualifies

    def draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """An image index and a qualifying patch origin ``(y, x)`` in it, uniform among its qualifying ones."""
        i = int(rng.choice(len(self.masks), p=self.weights))
        cumulative = self.row_counts[i]
        k = int(rng.integers(cumulative[-1]))
        y = int(np.searchsorted(cumulative, k, side="right"))
        before = int(cumulative[y - 1]) if y else 0
        x = int(np.flatnonzero(self.masks[i][y])[k - before])
        return i, y, x


def _signal_mask(hq: np.ndarray, patch_size: int, signal: float) -> np.ndarray:
    """Boolean ``(Y - p + 1, X - p + 1)``: whether the patch starting there has an HQ maximum of at least ``signal``."""
    h, w = hq.shape[-2] - patch_size + 1, hq.shape[-1] - patch_size + 1
    if signal <= 0:
        return np.ones((h, w), dtype=bool)
    peak = ndimage.maximum_filter(hq.max(axis=0), size=patch_size, mode="nearest")
    c = patch_size // 2  # scipy centres a window of size p at offset p // 2 from its first pixel
    return peak[c : c + h, c : c + w] >= signal


class PairedPatches(Dataset):
    """``length`` random, aligned LQ/HQ patches per epoch, with random flips and 90° rotations.

    Every image must be at least ``patch_size`` in both directions (:func:`load_pairs` checks).
    Positions come from ``origins`` (:class:`PatchOrigins`; by default every position): an image
    is drawn with probability proportional to its area times its share of qualifying positions,
    then a qualifying position uniformly within it. Each item's randomness comes from
    ``(seed, epoch, rank, index)`` alone: DDP ranks and epochs see different patches, and
    DataLoader workers (which fetch distinct indices) never repeat each other; the patches do not
    depend on the number of workers.
    """

    def __init__(
        self,
        images: Sequence[PairImages],
        patch_size: int,
        length: int,
        augment: bool = True,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        origins: PatchOrigins | None = None,
    ) -> None:
        self.images = list(images)
        self.patch_size = patch_size
        self.length = length
        self.augment = augment
        self.keys = (seed, epoch, rank)
        self.origins = origins if origins is not None else PatchOrigins(self.images, patch_size)
        if self.origins.patch_size != patch_size or len(self.origins.masks) != len(self.images):
            raise ValueError("origins were computed for other images or another patch size")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = _rng(*self.keys, index)
        i, y, x = self.origins.draw(rng)
        image, p = self.images[i], self.patch_size
        lq, hq = image.lq[:, y : y + p, x : x + p], image.hq[:, y : y + p, x : x + p]
        if self.augment:
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            lq, hq = _dihedral(lq, k, flip), _dihedral(hq, k, flip)
        return _tensors(lq, hq)


def _tensors(lq: np.ndarray, hq: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous torch copies of an LQ/HQ pair of numpy views."""
    return torch.from_numpy(np.ascontiguousarray(lq)), torch.from_numpy(np.ascontiguousarray(hq))


def _dihedral(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate the last two axes by ``k`` quarter turns, then mirror left-right if ``flip``."""
    a = np.rot90(a, k, axes=(-2, -1))
    return a[..., ::-1] if flip else a


class CentralCrops(Dataset):
    """Whole validation samples, centrally cropped to a multiple of ``multiple`` (at most ``max_size``)."""

    def __init__(self, images: Sequence[PairImages], multiple: int, max_size: int = VALIDATION_MAX_SIZE) -> None:
        self.images = list(images)
        self.multiple = multiple
        self.max_size = max_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        (y0, y1), (x0, x1) = (central_span(n, self.multiple, self.max_size) for n in image.shape)
        return _tensors(image.lq[:, y0:y1, x0:x1], image.hq[:, y0:y1, x0:x1])


def central_span(n: int, multiple: int, max_size: int) -> tuple[int, int]:
    """Start and end of the central crop of an axis of ``n`` pixels: at most ``max_size``, a multiple of ``multiple`` where it can be."""
    size = min(n, max_size)
    size = size - size % multiple if size >= multiple else size
    start = (n - size) // 2
    return start, start + size
