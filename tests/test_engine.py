"""Inference backends: ONNX Runtime gives PyTorch's numbers through every path; the graph cache and backend choice."""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_dask_enhance import random_package

import torch
from torch import nn

from confocalize import engine
from confocalize.chunked import GeneratorWeights, enhance_lazy
from confocalize.cli import main
from confocalize.engine import BackendWarning, ObservedRunner, OnnxRunner, TorchRunner, make_runner, onnx_graph
from confocalize.errors import ConfocalizeError
from confocalize.io import Image, read_image, write_image
from confocalize.lazyio import open_lazy
from confocalize.package import ModelPackage, save_package
from confocalize.predict import enhance_image, predict_array

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::confocalize.predict.TilingWarning")  # small tiles on purpose: many of them
TOLERANCE = 1e-4  # ONNX Runtime against PyTorch, absolute, on outputs of order 1


@pytest.fixture(scope="module")
def package() -> ModelPackage:
    """A depth-2 model (grid 4, halo 24) with non-trivial BatchNorm statistics."""
    return random_package(depth=2)


@pytest.fixture(scope="module")
def stack_package() -> ModelPackage:
    """2.5D and two channels together: planes z-1..z+1 of two channels in, two channels out."""
    return random_package(depth=2, in_channels=6, out_channels=2, context=1)


@pytest.fixture()
def no_memory_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process has built no graphs yet: each comes from the cache folder or the exporter."""
    monkeypatch.setattr(engine, "_GRAPHS", OrderedDict())


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_memory_cache: None) -> Path:
    """An empty cache folder of its own."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(engine.CACHE_ENV, str(folder))
    return folder


@pytest.fixture()
def exports(package: ModelPackage, monkeypatch: pytest.MonkeyPatch) -> list[nn.Module]:
    """The generators exported from now on; the exporter is replaced by one that returns ``package``'s real graph
    at once (the cache tests need a valid graph, not seconds of exporting)."""
    graph = onnx_graph(package)
    exported: list[nn.Module] = []

    def export(generator: nn.Module, in_channels: int) -> SimpleNamespace:
        exported.append(generator)
        return SimpleNamespace(model_proto=SimpleNamespace(SerializeToString=lambda: graph))

    monkeypatch.setattr(engine, "onnx_program", export)
    return exported


@pytest.mark.parametrize(
    ("shape", "tile", "batch_size"),
    [((1, 150, 203), 96, 1), ((1, 97, 131), 72, 3), ((1, 37, 5), 64, 2), ((1, 2, 3), 64, 1)],  # the last under the grid (4)
)
def test_onnxruntime_equals_torch_on_tiles(package: ModelPackage, rng: np.random.Generator, shape, tile, batch_size) -> None:
    x = rng.normal(size=shape).astype(np.float32)
    runner = make_runner(package, "onnxruntime")
    assert isinstance(runner, OnnxRunner)
    expected = predict_array(package.generator, x, tile, batch_size)
    result = predict_array(package.generator, x, tile, batch_size, runner=runner)
    assert expected.std() > 0.01 and result.shape == expected.shape and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=TOLERANCE, rtol=0)


def test_a_batch_of_tiles_gives_each_tile_its_own_result(package: ModelPackage, rng: np.random.Generator) -> None:
    tiles = rng.normal(size=(3, 1, 40, 44)).astype(np.float32)
    with make_runner(package, "onnxruntime").session() as forward:
        batch = forward(tiles)
        single = np.concatenate([forward(t[None]) for t in tiles])
    with TorchRunner(package.generator).session() as forward:
        expected = forward(tiles)
    assert batch.shape == (3, 1, 40, 44)
    np.testing.assert_allclose(batch, single, atol=1e-5, rtol=0)
    np.testing.assert_allclose(batch, expected, atol=TOLERANCE, rtol=0)


def test_2p5d_multichannel_model_agrees(stack_package: ModelPackage, rng: np.random.Generator) -> None:
    image = Image(rng.gamma(2.0, 100.0, (2, 3, 90, 77)).astype(np.float32), "CZYX", pixel_size=0.2, z_step=0.5)
    expected = enhance_image(stack_package, image, tile=96, backend="torch")
    result = enhance_image(stack_package, image, tile=96, backend="onnxruntime")
    assert result.axes == "CZYX" and result.data.shape == (2, 3, 90, 77) and expected.data.std() > 0.05
    np.testing.assert_allclose(result.data, expected.data, atol=TOLERANCE, rtol=0)


def test_dask_chunks_run_the_graph_sent_to_workers(stack_package: ModelPackage, rng: np.random.Generator) -> None:
    image = Image(rng.gamma(2.0, 100.0, (2, 2, 96, 131)).astype(np.float32), "CZYX")
    assert GeneratorWeights.of(stack_package, "onnxruntime").graph == onnx_graph(stack_package)
    assert GeneratorWeights.of(stack_package, "torch").graph is None
    expected = enhance_image(stack_package, image, tile=128, backend="torch")
    lazy = enhance_lazy(stack_package, image, tile=128, chunk=56, backend="onnxruntime")
    np.testing.assert_allclose(lazy.data.compute(scheduler="synchronous"), expected.data, atol=TOLERANCE, rtol=0)


def test_auto_picks_onnxruntime_on_the_cpu_and_torch_elsewhere(package: ModelPackage) -> None:
    assert isinstance(make_runner(package), OnnxRunner)
    assert isinstance(make_runner(package, "torch"), TorchRunner)
    on_meta = replace(package, generator=random_package(depth=2).generator.to("meta"))  # a device that is not the CPU
    assert isinstance(make_runner(on_meta, "auto"), TorchRunner)


def test_the_graph_is_built_once_per_package_and_cached_by_hash(package: ModelPackage, exports, cache: Path, monkeypatch) -> None:
    graph = onnx_graph(package)
    assert onnx_graph(package) is graph and exports == [package.generator]  # in memory
    monkeypatch.setattr(engine, "_GRAPHS", OrderedDict())  # a new process: from the cache folder
    assert onnx_graph(package) == graph and len(exports) == 1
    (cached,) = (cache / "onnx").iterdir()
    assert cached.name.startswith(f"{engine.content_sha256(package)}-") and cached.read_bytes() == graph

    other = random_package(depth=2)
    other.generator.head.bias.data += 1.0  # other weights: another package hash, another graph
    onnx_graph(other)
    assert exports == [package.generator, other.generator]
    assert sorted(p.name.split("-")[0] for p in (cache / "onnx").iterdir()) == sorted(map(engine.content_sha256, (package, other)))


def test_a_damaged_cache_file_is_rebuilt(package: ModelPackage, exports, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    graph = onnx_graph(package)
    (cached,) = (cache / "onnx").iterdir()
    cached.write_bytes(graph[: len(graph) // 2])  # truncated
    monkeypatch.setattr(engine, "_GRAPHS", OrderedDict())
    assert onnx_graph(package) == graph and cached.read_bytes() == graph and len(exports) == 2


def test_nothing_is_written_into_the_package_folder(
    package: ModelPackage, exports, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_memory_cache, rng: np.random.Generator
) -> None:
    folder = save_package(package, tmp_path / "model")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    image = write_image(tmp_path / "a.tif", rng.random((40, 40), dtype=np.float32), "YX")
    monkeypatch.setenv(engine.CACHE_ENV, str(folder / "cache"))  # even when told to cache inside it
    assert main(["enhance", str(folder), str(image), "-o", str(tmp_path / "out"), "--backend", "onnxruntime"]) == 0
    assert len(exports) == 1 and sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


def test_no_cache_folder_keeps_graphs_in_memory_only(package: ModelPackage, exports, tmp_path: Path, monkeypatch, no_memory_cache) -> None:
    monkeypatch.setenv(engine.CACHE_ENV, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert engine.cache_dir() is None
    onnx_graph(package)
    assert len(exports) == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_cli_backend_option_gives_the_same_image(
    package: ModelPackage, tmp_path: Path, rng: np.random.Generator, backend: str
) -> None:
    folder = save_package(package, tmp_path / "model")
    image = write_image(tmp_path / "a.tif", rng.integers(0, 4000, (150, 170), dtype=np.uint16), "YX", pixel_size=0.1)
    out = tmp_path / "out"
    assert main(["enhance", str(folder), str(image), "-o", str(out), "--tile", "96", "--backend", backend]) == 0
    assert main(["enhance", str(folder), str(image), "-o", str(tmp_path / "zarr"), "--format", "zarr", "--backend", backend]) == 0
    expected = enhance_image(package, read_image(image), tile=96, backend="torch").data
    np.testing.assert_allclose(read_image(out / "a.ome.tif").data, expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(open_lazy(tmp_path / "zarr" / "a.ome.zarr").data.compute(), expected, atol=TOLERANCE, rtol=0)


def test_without_onnxruntime_auto_falls_back_and_onnxruntime_is_a_user_error(
    package: ModelPackage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], rng
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.warns(BackendWarning, match="onnxruntime is not installed.*running PyTorch"):
        assert isinstance(make_runner(package), TorchRunner)
    image = write_image(tmp_path / "a.tif", rng.random((40, 40), dtype=np.float32), "YX")
    assert main(["enhance", str(save_package(package, tmp_path / "m")), str(image), "-o", str(tmp_path / "out"),
                 "--backend", "onnxruntime"]) == 2  # fmt: skip
    err = " ".join(capsys.readouterr().err.split())
    assert "onnxruntime is not installed; pip install onnxruntime, or use --backend torch" in err
    assert not (tmp_path / "out").exists()


def test_a_model_that_does_not_export(package: ModelPackage, monkeypatch: pytest.MonkeyPatch, no_memory_cache, cache) -> None:
    def unsupported(*args: object) -> None:
        raise RuntimeError("aten::frobnicate is not supported\nlong exporter report")

    monkeypatch.setattr(engine, "onnx_program", unsupported)
    with pytest.warns(BackendWarning, match=r"does not export to ONNX \(aten::frobnicate is not supported\)"):
        assert isinstance(make_runner(package, "auto"), TorchRunner)
    with pytest.raises(ConfocalizeError, match="use --backend torch$"):
        make_runner(package, "onnxruntime")


def test_an_unknown_backend_is_a_user_error(package: ModelPackage) -> None:
    with pytest.raises(ConfocalizeError, match="backend 'tensorrt' is not known; use one of auto, torch, onnxruntime"):
        make_runner(package, "tensorrt")  # type: ignore[arg-type]


def test_an_observed_runner_counts_tiles_and_can_abandon_the_work(package: ModelPackage, rng: np.random.Generator) -> None:
    x = rng.random((1, 96, 80)).astype(np.float32)
    seen: list[int] = []
    observed = ObservedRunner(TorchRunner(package.generator), seen.append)
    out = predict_array(package.generator, x, tile=64, batch_size=2, runner=observed)
    np.testing.assert_array_equal(out, predict_array(package.generator, x, tile=64, batch_size=2))
    assert observed.name == "torch" and seen[-1] == observed.done > 2 and seen == sorted(seen)

    def stop(done: int) -> None:
        raise RuntimeError("cancelled")  # as a cancel button's callback does

    package.generator.train()
    try:
        with pytest.raises(RuntimeError, match="cancelled"):
            predict_array(package.generator, x, tile=64, runner=ObservedRunner(TorchRunner(package.generator), stop))
        assert package.generator.training  # the inner session closed and restored the training flag
    finally:
        package.generator.eval()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_runs_autocast_close_to_fp32(package: ModelPackage, rng: np.random.Generator, precision: str) -> None:
    x = rng.random((1, 96, 80)).astype(np.float32)
    full = predict_array(package.generator, x, tile=64, runner=TorchRunner(package.generator))
    runner = make_runner(package, "auto", precision)  # type: ignore[arg-type]
    assert isinstance(runner, TorchRunner) and runner.precision == precision
    half = predict_array(package.generator, x, tile=64, runner=runner)
    assert half.dtype == np.float32 and not np.array_equal(half, full)  # the convolutions did run in the half type
    assert np.abs(half - full).max() < 0.05 * np.abs(full).max()  # ... to about its 8 (bf16) or 11 (fp16) bits
    assert all(p.dtype == torch.float32 for p in package.generator.parameters())  # weights untouched


def test_half_precision_through_the_cli_and_its_refusals(
    package: ModelPackage, tmp_path: Path, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = save_package(package, tmp_path / "model")
    image = write_image(tmp_path / "a.tif", rng.integers(0, 4000, (80, 90), dtype=np.uint16), "YX", pixel_size=0.1)
    args = ["enhance", str(folder), str(image), "--tile", "64", "--precision", "bf16"]
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    assert main([*args, "-o", str(tmp_path / "zarr"), "--format", "zarr"]) == 0
    expected = enhance_image(package, read_image(image), tile=64, backend=TorchRunner(package.generator, "bf16")).data
    np.testing.assert_allclose(read_image(tmp_path / "out" / "a.ome.tif").data, expected, atol=1e-6)
    np.testing.assert_allclose(open_lazy(tmp_path / "zarr" / "a.ome.zarr").data.compute(), expected, atol=1e-6)
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "onnx"), "--backend", "onnxruntime"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "precision bf16 runs in PyTorch (autocast); use --backend torch or auto" in err and "Traceback" not in err
    assert not (tmp_path / "onnx").exists()
    sidecar = json.loads((tmp_path / "out" / "a.ome.tif.sha256").read_text())
    assert sidecar["settings"]["precision"] == "bf16"  # an fp32 rerun enhances again
