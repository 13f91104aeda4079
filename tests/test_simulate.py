"""The simulator produces what it claims: haze, two pixel sizes, a true transform, reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import psfmodels
import pytest
from scipy import ndimage

from confocalize.errors import ConfocalizeError
from confocalize.io import read_image
from confocalize.simulate import (
    SimulationParams,
    _hq_to_object,
    _lq_to_object,
    _psf,
    _PsfSpec,
    object_from_image,
    object_voxel_size,
    random_sample,
    render_pair,
    simulate,
)

# A small field with a shallow object: each render takes a fraction of a second.
TINY = dict(size=48, z_range=2.0, z_step=0.5, margin=0.5, n_cells=(2, 2))
# Beads only: bright, no background, no read noise, so positions are measured to ~0.05 pixel.
BEADS = dict(size=48, z_range=1.0, lq_peak_photons=1e6, hq_peak_photons=1e6, lq_background=0, hq_background=0,
             lq_read_noise=0, hq_read_noise=0)


def low_frequency_fraction(image: np.ndarray, pixel_size: float, sigma_um: float = 1.0) -> float:
    """Energy of the Gaussian-low-passed image over its total energy (offset and background removed)."""
    signal = image.astype(np.float64) - np.percentile(image, 1)
    low = ndimage.gaussian_filter(signal, sigma_um / pixel_size)
    return float((low**2).sum() / (signal**2).sum())


def locate(image: np.ndarray, guess_xy: np.ndarray, sigma: float) -> np.ndarray:
    """Sub-pixel (x, y) of a spot: centroid under a Gaussian window re-centred until it settles."""
    img = np.clip(image.astype(np.float64) - np.median(image), 0, None)
    rows, cols = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    x, y = guess_xy
    for _ in range(50):
        weight = img * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))
        x, y = (weight * cols).sum() / weight.sum(), (weight * rows).sum() / weight.sum()
    return np.array([x, y])


def apply(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    return (matrix @ [*xy, 1.0])[:2]


def test_wide_field_has_haze_that_confocal_lacks():
    params = SimulationParams(**{**TINY, "size": 64, "z_range": 3.0})
    rng = np.random.default_rng(3)
    pair = render_pair(*random_sample(params, rng), params, rng)
    lq = low_frequency_fraction(pair.lq, params.lq_pixel_size)
    hq = low_frequency_fraction(pair.hq, params.hq_pixel_size)
    clean = low_frequency_fraction(pair.hq_clean, params.lq_pixel_size)
    assert lq > 0.7
    assert lq > hq + 0.25 and lq > clean + 0.25


def test_simulate_writes_two_pixel_sizes_uint16_and_truth(tmp_path):
    params = SimulationParams(**TINY)
    calls = []
    fields = simulate(tmp_path, n_fields=2, params=params, seed=5, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 2), (2, 2)]
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert truth["lq_pixel_size"] == 0.1 and truth["hq_pixel_size"] == 0.07
    assert SimulationParams(**truth["params"]) == params
    assert [f["name"] for f in truth["fields"]] == ["field000", "field001"]
    for entry, field in zip(truth["fields"], fields):
        lq, hq = read_image(tmp_path / entry["lq"]), read_image(tmp_path / entry["hq"])
        clean = read_image(tmp_path / entry["clean"])
        assert entry["lq"] == f"lq/{entry['name']}.ome.tif" and entry["hq"] == f"hq/{entry['name']}.ome.tif"
        assert lq.data.dtype == np.uint16 and hq.data.dtype == np.uint16 and clean.data.dtype == np.float32
        assert lq.axes == hq.axes == "YX"
        assert lq.pixel_size == pytest.approx(0.1) and clean.pixel_size == pytest.approx(0.1)
        assert hq.pixel_size == pytest.approx(0.07)
        assert lq.data.shape == clean.data.shape == (48, 48)
        assert hq.data.shape == (75, 75)  # 48 * 0.1 * 1.1 / 0.07
        np.testing.assert_allclose(entry["lq_from_hq"], field.lq_from_hq)
        assert np.linalg.det(np.array(entry["lq_from_hq"])[:2, :2]) == pytest.approx((0.07 / 0.1) ** 2)


def test_rerun_with_fewer_fields_removes_stale_ones(tmp_path):
    params = SimulationParams(**TINY)
    simulate(tmp_path, n_fields=2, params=params)
    simulate(tmp_path, n_fields=1, params=params)
    for kind in ("lq", "hq", "clean"):
        assert sorted(p.name for p in (tmp_path / kind).iterdir()) == ["field000.ome.tif"]


@pytest.mark.parametrize(
    "geometry",
    [
        dict(),  # the defaults: 0.07 µm HQ pixels, small shift and rotation
        dict(hq_pixel_size=0.2, rotation_range=(12.0, 12.0), flip_probability=1.0, shift_range=(0.4, 0.4)),
        dict(hq_pixel_size=0.025, rotation_range=(-15.0, -15.0), shift_range=(-0.3, 0.2)),
    ],
)
def test_lq_from_hq_maps_beads_onto_beads(geometry):
    params = SimulationParams(**BEADS, **geometry)
    dz, dxy = object_voxel_size(params)
    field = params.size * params.lq_pixel_size
    edge = int(np.ceil(2.5 * field / dxy)) | 1
    volume = np.zeros((int(round(params.z_range / dz)) + 1, edge, edge), np.float32)
    centre = (edge - 1) / 2
    beads = np.round(centre + np.array([[0, 0], [0.3, -0.25], [-0.3, 0.2], [0.25, 0.3]]) * field / dxy)
    volume[volume.shape[0] // 2, beads[:, 1].astype(int), beads[:, 0].astype(int)] = 1.0
    pair = render_pair(volume, (dz, dxy), params, np.random.default_rng(0))
    m = pair.lq_from_hq
    if geometry:  # the requested rotation, flip and scale are the ones rendered
        angle = np.deg2rad(geometry["rotation_range"][0])
        flip = np.diag([-1.0 if geometry.get("flip_probability") else 1.0, 1.0])
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        np.testing.assert_allclose(m[:2, :2], rotation @ flip * params.hq_pixel_size / params.lq_pixel_size, atol=1e-12)
    checked = 0
    for bead in beads:
        expected = (bead - centre) * dxy / params.lq_pixel_size + (params.size - 1) / 2
        lq_xy = locate(pair.lq, expected, sigma=2.0)
        assert np.abs(lq_xy - expected).max() < 0.1
        hq_guess = apply(np.linalg.inv(m), lq_xy)
        if not np.all((hq_guess > 3) & (hq_guess < np.array(pair.hq.shape[::-1]) - 4)):
            continue  # bead outside the HQ field
        hq_xy = locate(pair.hq, hq_guess, sigma=max(2.0, 0.2 / params.hq_pixel_size))
        assert np.abs(apply(m, hq_xy) - lq_xy).max() < 0.35
        checked += 1
    assert checked >= 3


def test_clean_confocal_is_the_hq_image_seen_through_lq_from_hq():
    params = SimulationParams(**TINY, rotation_range=(8.0, 8.0), flip_probability=1.0, shift_range=(-0.5, 0.5))
    rng = np.random.default_rng(11)
    pair = render_pair(*random_sample(params, rng), params, rng)
    rows, cols = np.mgrid[0 : params.size, 0 : params.size]
    hq_from_lq = np.linalg.inv(pair.lq_from_hq)
    x = hq_from_lq[0, 0] * cols + hq_from_lq[0, 1] * rows + hq_from_lq[0, 2]
    y = hq_from_lq[1, 0] * cols + hq_from_lq[1, 1] * rows + hq_from_lq[1, 2]
    inside = (x >= 0) & (x <= pair.hq.shape[1] - 1) & (y >= 0) & (y <= pair.hq.shape[0] - 1)
    assert inside.mean() > 0.8
    warped = ndimage.map_coordinates(pair.hq.astype(np.float64), [y, x], order=1)
    assert np.corrcoef(warped[inside], pair.hq_clean[inside])[0, 1] > 0.95
    shifted = np.roll(pair.hq_clean, 3, axis=1)  # a 3-pixel error is clearly worse
    assert np.corrcoef(warped[inside], shifted[inside])[0, 1] < 0.9


def test_default_hq_field_covers_most_of_the_lq_field():
    params = SimulationParams()
    rng = np.random.default_rng(0)
    hq_edge = round(params.size * params.lq_pixel_size * params.hq_field_ratio / params.hq_pixel_size)
    rows, cols = np.mgrid[0 : params.size, 0 : params.size]
    for _ in range(50):
        lq_to_obj = _lq_to_object(params, (params.size,) * 2, (1001, 1001), 0.035)
        m = np.linalg.inv(_hq_to_object(params, (hq_edge,) * 2, (1001, 1001), 0.035, rng)) @ lq_to_obj
        x = m[0, 0] * cols + m[0, 1] * rows + m[0, 2]
        y = m[1, 0] * cols + m[1, 1] * rows + m[1, 2]
        assert np.mean((x >= 0) & (x <= hq_edge - 1) & (y >= 0) & (y <= hq_edge - 1)) > 0.9


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    params = SimulationParams(**TINY, flip_probability=0.5)
    a, b, c = (simulate(tmp_path / name, n_fields=1, params=params, seed=seed) for name, seed in (("a", 1), ("b", 1), ("c", 2)))
    for kind in ("lq", "hq", "clean"):
        first, again, other = (read_image(getattr(f[0], kind)).data for f in (a, b, c))
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)
    np.testing.assert_array_equal(a[0].lq_from_hq, b[0].lq_from_hq)
    assert (tmp_path / "a" / "truth.json").read_text() == (tmp_path / "b" / "truth.json").read_text()


def test_confocal_psf_equals_psfmodels_confocal_psf():
    spec = _PsfSpec(z=(-0.5, -0.25, 0.0, 0.25, 0.5), nx=41, dxy=0.04, na=1.4, em=0.52, ex=0.488, n=1.515,
                    pinhole_au=1.0, model="vectorial")
    reference = psfmodels.confocal_psf(5, 41, dxy=0.04, dz=0.25, NA=1.4, ex_wvl=0.488, em_wvl=0.52, ns=1.515, ni=1.515,
                                       ni0=1.515, pinhole_au=1.0)
    ours = _psf(spec)
    np.testing.assert_allclose(ours / ours.max(), reference / reference.max(), atol=1e-6)
    wide_field = _psf(_PsfSpec(**{**spec.__dict__, "pinhole_au": 0.0, "ex": 0.0}))
    np.testing.assert_allclose(wide_field.sum(axis=(1, 2)), 1.0, rtol=1e-5)  # every plane keeps its light
    sums = ours.sum(axis=(1, 2))
    assert sums[2] == pytest.approx(1.0) and sums[0] < 0.9  # the confocal sections


def test_object_from_image_is_a_thin_focal_plane_with_dim_copies():
    params = SimulationParams(**TINY)
    image = np.zeros((70, 70))
    image[20:50, 34:36] = 1000.0  # a bright line on a 0.07 µm grid
    volume, (dz, dxy) = object_from_image(image, 0.07, params)
    assert volume.shape[0] == 5 and dz == 1.0 and dxy == pytest.approx(0.035)
    assert volume[2].max() > 2 * volume[[0, 1, 3, 4]].max()
    pair = render_pair(volume, (dz, dxy), params, np.random.default_rng(0))
    assert pair.lq.shape == (48, 48) and pair.hq.dtype == np.uint16


@pytest.mark.parametrize(
    "settings",
    [
        dict(lq_pixel_size=0.0),
        dict(hq_pixel_size=-0.07),
        dict(size=4),
        dict(rotation_range=(5.0, -5.0)),
        dict(rotation_range=(0.0, 200.0)),
        dict(flip_probability=1.5),
        dict(lq_na=1.6),
        dict(z_step=float("nan")),
        dict(size="large"),
        dict(no_such_setting=1),
    ],
)
def test_bad_settings_raise_one_line_errors(settings):
    with pytest.raises(ConfocalizeError) as info:
        SimulationParams(**settings)
    assert "\n" not in str(info.value) and next(iter(settings)) in str(info.value)


def test_bad_calls_raise_one_line_errors(tmp_path):
    params = SimulationParams(**TINY)
    for call in (
        lambda: simulate(tmp_path, n_fields=0, params=params),
        lambda: simulate(tmp_path, n_fields=1, params=params, seed=-1),
        lambda: render_pair(np.zeros((8, 8)), (0.25, 0.035), params, np.random.default_rng()),
        lambda: render_pair(np.zeros((1, 8, 8)), (0.25, 0.0), params, np.random.default_rng()),
        lambda: render_pair(-np.ones((1, 8, 8)), (0.25, 0.035), params, np.random.default_rng()),
        lambda: object_from_image(np.zeros((8, 8)), 0.0, params),
        lambda: object_from_image(np.zeros((2, 8, 8)), 0.07, params),
    ):
        with pytest.raises(ConfocalizeError) as info:
            call()
        assert "\n" not in str(info.value)


def test_the_simulated_optics_are_recorded_for_the_package(tmp_path: Path) -> None:
    from confocalize.demo import demo_config
    from confocalize.simulate import systems

    lq, hq = systems(SimulationParams(lq_na=1.2))
    assert (lq.modality, lq.objective_na, lq.pixel_size_um, lq.emission_nm) == ("wide-field", 1.2, 0.1, 520.0)
    assert (hq.modality, hq.pinhole_au, hq.excitation_nm) == ("confocal", 1.0, 488.0)
    recorded = demo_config(tmp_path, tmp_path / "pairs", minutes=1, seed=0).provenance
    assert recorded.lq_system.objective_na == SimulationParams().lq_na and recorded.hq_system.modality == "confocal"


def test_the_demo_takes_a_step_budget(tmp_path: Path) -> None:
    from confocalize.demo import demo_config

    steps = demo_config(tmp_path, tmp_path / "pairs", minutes=None, seed=0, steps=345).trainer
    assert (steps.max_steps, steps.max_time_minutes) == (345, None)
    timed = demo_config(tmp_path, tmp_path / "pairs", minutes=5, seed=0).trainer
    assert (timed.max_steps, timed.max_time_minutes) == (None, 5)
