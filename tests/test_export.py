"""Exports: ONNX matches PyTorch in onnxruntime; the bioimage.io model passes bioimageio.core's test offline."""

from __future__ import annotations

import socket
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_package import make_package

from confocalize.cli import main
from confocalize.errors import ConfocalizeError
from confocalize.export import export_onnx
from confocalize.io import write_image
from confocalize.package import load_package, save_package

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
bioimageio_core = pytest.importorskip("bioimageio.core")


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")  # inside bioimageio.core
def test_cli_exports_onnx_and_bioimageio_that_run_elsewhere(tmp_path: Path, rng: np.random.Generator, offline) -> None:
    package_dir = save_package(make_package(), tmp_path / "model")
    sample = tmp_path / "sample.tif"
    write_image(sample, (rng.random((150, 170)) * 1000).astype(np.uint16), "YX", pixel_size=0.1)
    onnx_path, bio_path = tmp_path / "model.onnx", tmp_path / "bioimageio.zip"
    args = ["export", str(package_dir), "--onnx", str(onnx_path), "--bioimageio", str(bio_path),
            "--sample", str(sample), "--author", "Ada Lovelace"]  # fmt: skip
    assert main(args) == 0

    package = load_package(package_dir)
    model = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["package_sha256"] == package.sha256 and meta["normalization_high_percentile"] == "99.5"
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for shape in [(1, 1, 64, 48), (2, 1, 37, 53), (1, 1, 4, 9)]:  # any batch and size >= 2**depth
        x = rng.normal(size=shape).astype(np.float32)
        with torch.no_grad():
            expected = package.generator(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(session.run(["output"], {"input": x})[0], expected, atol=1e-4, rtol=0)

    with zipfile.ZipFile(bio_path) as zf:
        names = set(zf.namelist())
        readme = zf.read("README.md").decode()
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "unet.py", "cover.png", "test_input.npy"} <= names
    assert "## Validation" in readme and "Partner lab" in readme and "10.1109/CVPR.2017.632" in readme
    assert "NAME.uncertainty.ome.tif" in readme and "No uncertainty calibration is recorded" in readme
    summary = bioimageio_core.test_model(bio_path)
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    tested = {d.name for d in summary.details if d.name.startswith("Reproduce test outputs")}
    assert tested == {f"Reproduce test outputs from test inputs ({w})" for w in ("pytorch_state_dict", "torchscript")}


def test_the_model_card_states_the_uncertainty_calibration() -> None:
    from confocalize.export import _readme
    from confocalize.package import UncertaintyCalibration

    calibration = UncertaintyCalibration(scale=2.0, median_p95=0.031, spearman=0.55, n_images=6, data="validation fields 003, 005")
    readme = _readme(replace(make_package(), uncertainty=calibration))
    assert "Spearman 0.55" in readme and "6 images: validation fields 003, 005" in readme and "exceeds 0.031" in readme


def test_a_sample_smaller_than_the_test_tensor_is_a_one_line_error(tmp_path: Path) -> None:
    from confocalize.export import export_bioimageio
    from confocalize.io import Image

    with pytest.raises(ConfocalizeError, match="at least 128x128"):
        export_bioimageio(make_package(), tmp_path / "b.zip", sample=Image(np.zeros((60, 60), np.float32), "YX"))


def test_missing_exporters_are_one_line_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from confocalize.export import export_bioimageio

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    with pytest.raises(ConfocalizeError, match=r"^onnxscript is not installed; pip install onnxscript"):
        export_onnx(make_package(), tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "bioimageio.core", None)
    with pytest.raises(ConfocalizeError, match=r"pip install 'confocalize\[export\]'"):
        export_bioimageio(make_package(), tmp_path / "b.zip")
    assert list(tmp_path.iterdir()) == []


def test_bioimageio_export_describes_the_planes_of_a_2p5d_model(tmp_path: Path, offline) -> None:

    from confocalize.config import GeneratorConfig
    from confocalize.export import export_bioimageio, input_channel_names
    from confocalize.package import build_generator

    torch.manual_seed(0)
    package = replace(make_package(), generator=build_generator(GeneratorConfig(depth=2, base_channels=4, residual=False), in_channels=3).eval(),
                      in_channels=3, context_slices=1)  # fmt: skip
    assert input_channel_names(package) == ["c0_zm1", "c0_z0", "c0_zp1"]
    bio_path = export_bioimageio(package, tmp_path / "bmz.zip")
    with zipfile.ZipFile(bio_path) as zf:
        rdf, readme = zf.read("rdf.yaml").decode(), zf.read("README.md").decode()
    assert "c0_zm1" in rdf and "2.5D: planes z-1..z+1" in rdf and "2.5D model" in readme
