"""Loading, field splits, patch sampling and validation crops (tiny in-memory or on-disk images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from confocalize.config import DataConfig, NormalizationConfig
from confocalize.data import (
    CentralCrops,
    PairedPatches,
    PairImages,
    load_pairs,
    read_split,
    split_by_field,
    write_split,
)
from confocalize.errors import ConfocalizeError
from confocalize.io import write_image
from confocalize.pairs import PairPaths, field_of


def w2s_pairs(n_fields: int, per_field: int = 3) -> list[PairPaths]:
    """W2S-style names ``001_0, 001_1, ...`` grouped into fields by ``^(\\d+)_``."""
    names = [f"{f:03d}_{i}" for f in range(n_fields) for i in range(per_field)]
    return [PairPaths(n, field_of(n, r"^(\d+)_"), Path(f"lq/{n}.tif"), Path(f"hq/{n}.tif")) for n in names]


def sample(lq: np.ndarray, hq: np.ndarray | None = None, name: str = "a") -> PairImages:
    """An in-memory sample from 2D arrays (HQ defaults to a known function of LQ)."""
    lq = lq.astype(np.float32)[None]
    return PairImages(name, name, lq, (2 * lq + 1) if hq is None else hq.astype(np.float32)[None])


def test_split_assigns_each_field_to_one_set_deterministically() -> None:
    pairs = w2s_pairs(10)
    split = split_by_field(pairs, 0.2, 0.2, seed=3)
    fields = {name: {p.field for p in members} for name, members in split.items()}
    assert fields["train"].isdisjoint(fields["val"]) and fields["train"].isdisjoint(fields["test"])
    assert fields["val"].isdisjoint(fields["test"])
    assert (len(fields["train"]), len(fields["val"]), len(fields["test"])) == (6, 2, 2)
    assert sorted(p.name for members in split.values() for p in members) == sorted(p.name for p in pairs)
    assert split == split_by_field(pairs, 0.2, 0.2, seed=3)
    assert any(split_by_field(pairs, 0.2, 0.2, seed=s) != split for s in range(4, 8))


def test_split_gives_every_asked_set_a_field() -> None:
    split = split_by_field(w2s_pairs(3), 0.05, 0.05, seed=0)
    assert all(len({p.field for p in split[name]}) == 1 for name in ("train", "val", "test"))
    assert split_by_field(w2s_pairs(2), 0.5, 0.0, seed=0)["test"] == []


@pytest.mark.parametrize(("n_fields", "val", "test"), [(2, 0.2, 0.2), (1, 0.2, 0.0)])
def test_split_with_too_few_fields_is_a_clear_error(n_fields: int, val: float, test: float) -> None:
    with pytest.raises(ConfocalizeError, match="field"):
        split_by_field(w2s_pairs(n_fields), val, test, seed=0)


def test_split_file_round_trips(tmp_path: Path) -> None:
    split = split_by_field(w2s_pairs(5), 0.2, 0.2, seed=0)
    back = read_split(write_split(tmp_path / "split.json", split))
    for name, members in split.items():
        assert [(p.name, p.field, p.lq.name) for p in back[name]] == [(p.name, p.field, p.lq.name) for p in members]
        assert all(p.lq.is_absolute() for p in back[name])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfocalizeError, match="bad.json"):
        read_split(tmp_path / "bad.json")


def orientation(patch: np.ndarray) -> tuple[int, int]:
    """Steps in the source ``arange`` image when moving right and down in a patch."""
    return int(patch[0, 0, 1] - patch[0, 0, 0]), int(patch[0, 1, 0] - patch[0, 0, 0])


def test_patches_stay_aligned_under_augmentation() -> None:
    width = 40
    patches = PairedPatches([sample(np.arange(36 * width).reshape(36, width))], patch_size=16, length=64, seed=1)
    seen_orientations, seen_corners = set(), set()
    for i in range(len(patches)):
        lq, hq = patches[i]
        assert lq.shape == hq.shape == (1, 16, 16) and lq.dtype == hq.dtype
        np.testing.assert_array_equal(hq.numpy(), 2 * lq.numpy() + 1)
        seen_orientations.add(orientation(lq.numpy()))
        seen_corners.add(float(lq[0, 0, 0]))
    assert len(seen_orientations) == 8  # all flips and quarter turns
    assert len(seen_corners) > 32  # and many positions
    plain = PairedPatches(patches.images, patch_size=16, length=16, augment=False, seed=1)
    assert {orientation(plain[i][0].numpy()) for i in range(16)} == {(1, width)}


def test_patches_are_seeded_by_seed_epoch_and_rank() -> None:
    images = [sample(np.random.default_rng(0).random((32, 32)))]

    def first(**keys: int) -> np.ndarray:
        return PairedPatches(images, 16, 4, **keys)[0][0].numpy()

    np.testing.assert_array_equal(first(seed=0, epoch=0, rank=0), first(seed=0, epoch=0, rank=0))
    for other in ({"seed": 1}, {"epoch": 1}, {"rank": 1}):
        assert not np.array_equal(first(**{"seed": 0, "epoch": 0, "rank": 0, **other}), first(seed=0, epoch=0, rank=0))


def test_patches_sample_images_by_area() -> None:
    small, large = sample(np.zeros((16, 16)), name="small"), sample(np.ones((32, 32)), name="large")
    patches = PairedPatches([small, large], patch_size=16, length=400, augment=False)
    share_large = np.mean([float(patches[i][0][0, 0, 0]) for i in range(len(patches))])
    assert 0.72 < share_large < 0.88  # 1024 / (256 + 1024) = 0.8


def test_lq_range_comes_from_local_means_and_hq_from_pixels(tmp_path: Path) -> None:
    noisy = np.random.default_rng(0).normal(100, 30, (40, 40)).astype(np.float32)
    (sample,) = load_pairs([write_pair(tmp_path, "p", noisy, noisy, "YX")], DataConfig(patch_size=16))
    means = ndimage.uniform_filter(noisy, 3)[1:-1, 1:-1]
    lo, hi = np.percentile(means, [1, 99.8])
    np.testing.assert_allclose(sample.lq[0], (noisy - lo) / (hi - lo), atol=1e-4)  # input_window 3 by default
    assert np.percentile(sample.hq, 99.8) == pytest.approx(1, abs=1e-5)  # targets keep single-pixel percentiles


def test_central_crops_are_multiples_and_capped() -> None:
    crops = CentralCrops([sample(np.zeros((50, 37))), sample(np.zeros((600, 40)))], multiple=8, max_size=512)
    assert [tuple(crops[i][0].shape) for i in range(2)] == [(1, 48, 32), (1, 512, 40)]


def write_pair(root: Path, name: str, lq: np.ndarray, hq: np.ndarray, axes: str) -> PairPaths:
    lq_path = write_image(root / "lq" / f"{name}.tif", lq, axes, pixel_size=0.1)
    return PairPaths(name, name, lq_path, write_image(root / "hq" / f"{name}.tif", hq, axes))


def test_load_pairs_splits_channels_and_planes_and_normalises(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cyx = rng.integers(0, 4000, (2, 24, 20), dtype=np.uint16)
    zyx = rng.random((3, 24, 20), dtype=np.float32)
    pairs = [write_pair(tmp_path, "multi", cyx, cyx, "CYX"), write_pair(tmp_path, "stack", zyx, zyx * 7, "ZYX")]
    samples = load_pairs(pairs, DataConfig(patch_size=16, normalization=NormalizationConfig(input_window=1)))
    assert [s.name for s in samples] == ["multi_c0", "multi_c1", "stack_z0", "stack_z1", "stack_z2"]
    assert [s.field for s in samples] == ["multi"] * 2 + ["stack"] * 3
    for s in samples:
        assert s.lq.shape == s.hq.shape == (1, 24, 20) and s.lq.dtype == np.float32
        np.testing.assert_allclose(s.lq, s.hq, atol=1e-4)  # HQ = k * LQ normalises to the same
        assert s.pixel_size == pytest.approx(0.1)
    c0 = samples[0].lq
    assert np.percentile(c0, 1) == pytest.approx(0, abs=1e-5) and np.percentile(c0, 99.8) == pytest.approx(1, abs=1e-5)


def test_load_pairs_rejects_unregistered_and_too_small_pairs(tmp_path: Path) -> None:
    mismatch = write_pair(tmp_path, "a", np.zeros((32, 32), np.float32), np.zeros((32, 30), np.float32), "YX")
    with pytest.raises(ConfocalizeError, match=r"lq/a\.tif.*hq/a\.tif.*confocalize register"):
        load_pairs([mismatch], DataConfig(patch_size=16))
    small = write_pair(tmp_path, "b", np.zeros((20, 40), np.float32), np.zeros((20, 40), np.float32), "YX")
    with pytest.raises(ConfocalizeError, match=r"lq/b\.tif.*patch_size"):
        load_pairs([small], DataConfig(patch_size=32))
