"""Chunked and distributed enhance: enhance_image's numbers, OME-Zarr in and out, a LocalCluster, bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from confocalize.chunked import chunk_size, enhance_lazy, enhance_lazy_with_uncertainty, enhance_to_zarr, tta_margin
from confocalize.cli import main
from confocalize.config import GeneratorConfig, NormalizationConfig
from confocalize.errors import ConfocalizeError
from confocalize.io import Image, read_image, write_image
from confocalize.lazyio import create_ome_zarr, open_lazy
from confocalize.package import ModelPackage, UncertaintyCalibration, build_generator, save_package
from confocalize.predict import to_dtype, enhance_image
from confocalize.uncertainty import enhance_with_uncertainty


def random_package(depth: int = 2, in_channels: int = 1, out_channels: int = 1, context: int = 0) -> ModelPackage:
    """A small random residual package with non-trivial outputs (BatchNorm statistics as in test_predict, a random head)."""
    cfg = GeneratorConfig(depth=depth, base_channels=4, residual=False)
    torch.manual_seed(0)
    net = build_generator(cfg, in_channels, out_channels)
    for mod in net.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0.0, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    net.head.weight.data.normal_(0.0, 5.0)  # outputs of order 0.1-1 (and a residual head would start at zero)
    return ModelPackage(net.eval(), cfg, NormalizationConfig(), in_channels, out_channels, context_slices=context)


@pytest.mark.parametrize(
    ("in_channels", "out_channels", "context"),
    [(1, 1, 0), (2, 2, 0), (3, 1, 1)],
    ids=["separate", "joint", "2.5D"],
)
def test_lazy_enhance_equals_enhance_image(rng, in_channels, out_channels, context):
    package = random_package(in_channels=in_channels, out_channels=out_channels, context=context)
    image = Image(rng.gamma(2.0, 100.0, (2, 3, 96, 131)).astype(np.float32), "CZYX", pixel_size=0.2, z_step=0.5)
    expected = enhance_image(package, image, tile=128)
    lazy = enhance_lazy(package, image, tile=128, chunk=56)  # a remainder under the halo (24 px) joins its neighbour
    assert lazy.data.chunks[-2:] == ((56, 40), (56, 75))
    assert (lazy.axes, lazy.pixel_size, lazy.z_step) == (expected.axes, 0.2, 0.5)
    result = lazy.data.compute(scheduler="synchronous")
    assert expected.data.std() > 0.01
    np.testing.assert_allclose(result, expected.data, atol=1e-5)


def test_lazy_uncertainty_equals_the_whole_image_estimate(rng):
    """Chunks enhanced in 8 orientations with the smoothing margin: the mean and calibrated uncertainty of
    enhance_with_uncertainty on the whole image (sizes on the down-sampling grid, so every orientation aligns)."""
    cal = UncertaintyCalibration(scale=2.0, signal=0.01, floor=0.001, median_p95=0.1, n_images=1)
    package = replace(random_package(), uncertainty=cal)
    image = Image(rng.gamma(2.0, 100.0, (2, 96, 120)).astype(np.float32), "ZYX", pixel_size=0.2)
    expected = enhance_with_uncertainty(package, image, tile=256, backend="torch")
    mean, uncertainty = enhance_lazy_with_uncertainty(package, image, tile=256, chunk=40, backend="torch")
    assert len(mean.data.chunks[-1]) == 3 and tta_margin(package.generator) == 8  # several chunks; smoothing radius 6 on the grid of 4
    assert (uncertainty.axes, uncertainty.pixel_size) == ("ZYX", 0.2)
    assert expected.uncertainty.data.std() > 1e-3
    np.testing.assert_allclose(mean.data.compute(scheduler="synchronous"), expected.image.data, atol=1e-5)
    np.testing.assert_allclose(uncertainty.data.compute(scheduler="synchronous"), expected.uncertainty.data, atol=1e-5)


def test_default_chunk_and_halo_make_one_tile():
    net = random_package(depth=2).generator  # halo 24, grid 4
    assert chunk_size(net, 1024) == 1024 - 2 * 24
    assert chunk_size(net, 1024, chunk=30) == 32  # rounded up to the grid
    assert chunk_size(net, 1024, chunk=8) == 24  # never below the halo


def test_enhance_to_zarr_writes_ngff_05_with_axes_and_pixel_size(tmp_path, rng):
    package = random_package()
    stack = rng.integers(0, 4000, (3, 90, 70), dtype=np.uint16)
    src = write_image(tmp_path / "in" / "s.ome.tif", stack, "ZYX", pixel_size=0.13, z_step=0.4)
    calls = []
    (out,) = enhance_to_zarr(
        package, [src], tmp_path / "out", dtype="uint16", tile=128, progress=lambda d, t: calls.append((d, t))
    )
    assert out == tmp_path / "out" / "s.ome.zarr" and calls == [(1, 1)]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["s.ome.zarr"]  # no staging folder left behind
    ome = json.loads((out / "zarr.json").read_text())["attributes"]["ome"]
    assert ome["version"] == "0.5"
    (multiscale,) = ome["multiscales"]
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    (dataset,) = multiscale["datasets"]
    assert dataset["coordinateTransformations"][0]["scale"] == pytest.approx([0.4, 0.13, 0.13])
    data = zarr.open_array(out / dataset["path"], mode="r")[...]  # the dataset path comes from the metadata
    expected = to_dtype(enhance_image(package, read_image(src)).data, "uint16")
    assert data.dtype == np.uint16 and np.abs(data.astype(int) - expected).max() <= 1
    back = open_lazy(out)
    assert (back.axes, back.pixel_size, back.z_step) == ("ZYX", pytest.approx(0.13), pytest.approx(0.4))


def test_zarr_and_tiled_tiff_inputs_are_read_by_chunks(tmp_path, rng):
    package = random_package()
    data = rng.gamma(2.0, 100.0, (2, 100, 130)).astype(np.float32)
    tiled = tmp_path / "tiled.tif"
    tifffile.imwrite(tiled, data, tile=(32, 32), compression="zlib", metadata={"axes": "CYX"})
    zarr_in = tmp_path / "in.ome.zarr"
    lazy_tiff = open_lazy(tiled, chunk=48)
    lazy_tiff.data.store(create_ome_zarr(zarr_in, lazy_tiff))
    for source in (tiled, zarr_in):
        image = open_lazy(source, chunk=48)
        assert image.axes == "CYX" and image.data.chunks[-2:] == ((48, 48, 4), (48, 48, 34))
        np.testing.assert_array_equal(image.data.compute(), data)
    outputs = enhance_to_zarr(package, [zarr_in], tmp_path / "out", tile=128)
    expected = enhance_image(package, Image(data, "CYX")).data
    np.testing.assert_allclose(open_lazy(outputs[0]).data.compute(), expected, atol=1e-5)


def test_inputs_and_settings_that_cannot_work_are_user_errors(tmp_path, rng):
    package = random_package()
    (tmp_path / "a.png").write_bytes(b"not read")
    with pytest.raises(ConfocalizeError, match="not a TIFF or Zarr"):
        open_lazy(tmp_path / "a.png")
    plain = zarr.create_array(tmp_path / "plain.zarr", shape=(2, 16, 16), dtype="float32")
    with pytest.raises(ConfocalizeError, match="--axes"):
        open_lazy(tmp_path / "plain.zarr")
    assert open_lazy(tmp_path / "plain.zarr", axes="ZYX").data.shape == plain.shape
    with pytest.raises(ConfocalizeError, match="takes 2"):
        enhance_lazy(random_package(in_channels=2, out_channels=2), Image(rng.random((3, 16, 16), dtype=np.float32), "CYX"))
    nan = rng.random((40, 40), dtype=np.float32)
    nan[3, 4] = np.nan
    with pytest.raises(ConfocalizeError, match="nan.tif: the model's output holds NaN"):
        enhance_lazy(package, Image(nan, "YX", path=Path("nan.tif"))).data.compute(scheduler="synchronous")
    with pytest.raises(ConfocalizeError, match="uint16"):
        enhance_to_zarr(package, [tmp_path / "a.png"], tmp_path / "out", dtype="uint8")  # type: ignore[arg-type]


def test_cli_streams_into_ome_zarr(tmp_path, rng):
    save_package(random_package(), tmp_path / "model")
    src = write_image(tmp_path / "a.tif", rng.random((40, 50), dtype=np.float32), "YX", pixel_size=0.1)
    assert main(["enhance", str(tmp_path / "model"), str(src), "-o", str(tmp_path / "out"), "--format", "zarr"]) == 0
    assert open_lazy(tmp_path / "out" / "a.ome.zarr").data.shape == (40, 50)
    assert main(["enhance", str(tmp_path / "model"), str(src), "-o", str(tmp_path / "out"), "--workers", "2"]) == 2


def test_cli_zarr_uncertainty_writes_both_maps_once(tmp_path, rng, capsys):
    save_package(random_package(), tmp_path / "model")
    src = write_image(tmp_path / "a.tif", rng.random((40, 50), dtype=np.float32), "YX", pixel_size=0.1)
    args = ["enhance", str(tmp_path / "model"), str(src), "-o", str(tmp_path / "out"), "--format", "zarr", "--uncertainty", "--backend", "torch"]
    assert main(args) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.ome.zarr", "a.uncertainty.ome.zarr"]
    expected = enhance_with_uncertainty(random_package(), read_image(src), backend="torch")
    np.testing.assert_allclose(open_lazy(tmp_path / "out" / "a.ome.zarr").data.compute(), expected.image.data, atol=1e-5)
    stored = open_lazy(tmp_path / "out" / "a.uncertainty.ome.zarr")
    assert stored.pixel_size == pytest.approx(0.1)
    np.testing.assert_allclose(stored.data.compute(), expected.uncertainty.data, atol=1e-5)
    printed = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert f"a: median uncertainty {np.median(expected.uncertainty.data):.4f} (raw spread" in printed and "each with its uncertainty map" in printed


@pytest.mark.slow
def test_local_cluster_matches_single_process_tiling_on_4096(tmp_path):
    """Two worker processes, one 4096 x 4096 TIFF read by chunks: the same numbers as enhance_image (predict_array)."""
    from confocalize.chunked import dask_client

    package = random_package(depth=1)
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, np.random.default_rng(0).gamma(2.0, 100.0, (4096, 4096)).astype(np.float32))
    start = time.monotonic()
    expected = enhance_image(package, read_image(src)).data
    single = time.monotonic() - start
    with dask_client(workers=2) as client:
        start = time.monotonic()
        (out,) = enhance_to_zarr(package, [src], tmp_path / "out", client=client)
        distributed = time.monotonic() - start
        assert len(client.scheduler_info()["workers"]) == 2
    result = open_lazy(out).data.compute()
    print(f"4096x4096: single process {single:.1f} s, LocalCluster(2) {distributed:.1f} s")
    assert expected.std() > 0.01
    np.testing.assert_allclose(result, expected, atol=1e-5)


MEMORY_SCRIPT = """
import sys, tracemalloc
import numpy as np
from confocalize.chunked import enhance_to_zarr
from confocalize.io import write_image
sys.path.insert(0, sys.argv[3])
from test_dask_enhance import random_package

package = random_package(depth=1)
warm = write_image(sys.argv[2] + "/warm.tif", np.ones((64, 64), np.float32), "YX")
enhance_to_zarr(package, [warm], sys.argv[2], tile=512)  # imports and caches before measuring
tracemalloc.start()
enhance_to_zarr(package, [sys.argv[1]], sys.argv[2], tile=512)
print(tracemalloc.get_traced_memory()[1])
"""


@pytest.mark.slow
def test_enhance_streams_an_image_it_never_holds(tmp_path):
    """A 64 MiB (4096 x 4096 float32) TIFF is enhanced holding a fraction of it (numpy and Python allocations).

    The rest is a floor that does not grow with the image height: the dask graph, the percentile
    sample and about three rows of 492-pixel chunks. The network's own buffers are bounded by the
    512-pixel tile (torch allocations are not traced).
    """
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, np.random.default_rng(0).gamma(2.0, 100.0, (4096, 4096)).astype(np.float32))
    image_bytes = 4096 * 4096 * 4
    script = textwrap.dedent(MEMORY_SCRIPT)
    run = subprocess.run(
        [sys.executable, "-c", script, str(src), str(tmp_path), str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    peak = int(run.stdout.split()[-1])
    print(f"peak traced memory {peak / 2**20:.1f} MiB for a {image_bytes / 2**20:.0f} MiB image")
    assert peak < image_bytes / 3
