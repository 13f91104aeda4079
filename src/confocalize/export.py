"""Export a model package for other tools: a bioimage.io model (zip) and an ONNX file.

Both exported networks take any height and width of at least ``2**depth`` pixels. They wrap the
generator in :class:`confocalize.engine.PadToMultiple`, which reflection-pads to the generator's
multiple and crops back with shape arithmetic that tracing and ``torch.export`` record for every size;
``UNet.forward``'s own ``if`` on the padding would be frozen at the example's size. The ONNX graph is
:func:`confocalize.engine.onnx_program`'s, the one ``enhance --backend onnxruntime`` runs.

The bioimage.io model needs the ``export`` extra: ``pip install "confocalize[export]"``.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage

from confocalize import __version__
from confocalize.engine import PadToMultiple, need_module, onnx_program, quiet_torch
from confocalize.errors import ConfocalizeError
from confocalize.io import Image, atomic_write, frames, write_image
from confocalize.nets import UNet
from confocalize.normalize import normalize
from confocalize.package import ModelPackage, package_summary
from confocalize.predict import FIT_TOLERANCE, default_halo, predict_array
from confocalize.stacks import as_czyx

CITATIONS = (
    (
        "Isola, Zhu, Zhou, Efros. Image-to-image translation with conditional adversarial networks (pix2pix). CVPR 2017.",
        "10.1109/CVPR.2017.632",
    ),
    (
        "Wang et al. Deep learning enables cross-modality super-resolution in fluorescence microscopy. "
        "Nature Methods 16, 103-110 (2019).",
        "10.1038/s41592-018-0239-0",
    ),
)
EXPORT_EXTRA = "pip install 'confocalize[export]'"
MIN_TEST_SIZE = 128  # edge of the bioimage.io test tensors, unless the network needs more for its halo


def export_onnx(package: ModelPackage, path: str | os.PathLike) -> Path:
    """Write the generator as ONNX: input ``input`` (N, C, H, W) float32, already normalised; output ``output``.

    Batch, height and width are dynamic (H, W >= ``2**depth``). The model's metadata records the
    normalisation percentiles, the LQ pixel size, the package hash and the confocalize version.
    """
    program = onnx_program(package.generator, package.in_channels)
    program.model.metadata_props.update({k: str(v) for k, v in _metadata(package).items()})
    path = Path(path)
    with atomic_write(path) as tmp:
        program.save(tmp)
    return path


def export_bioimageio(
    package: ModelPackage,
    path: str | os.PathLike,
    sample: Image | None = None,
    authors: Sequence[str] = (),
    license: str = "CC-BY-4.0",
) -> Path:
    """Write a bioimage.io model zip (spec 0.5): state-dict and TorchScript weights, test tensors, cover, README.

    ``sample`` is a raw LQ image whose centre (middle plane of a stack) becomes the test input and
    cover (default: synthetic blobs). Preprocessing is percentile normalisation (``scale_range``) with the
    package's percentiles; the output is in the model's normalised HQ units (about 0..1).
    """
    need_module("bioimageio.core", EXPORT_EXTRA)
    from bioimageio.spec import save_bioimageio_package

    with tempfile.TemporaryDirectory(prefix="confocalize-bioimageio-") as tmp:
        folder = Path(tmp)
        descr = _model_descr(package, folder, _test_input(package, sample), authors, license)
        save_bioimageio_package(descr, output_path=folder / "model.zip")
        path = Path(path)
        with atomic_write(path) as out:
            shutil.copyfile(folder / "model.zip", out)
    return path


def _metadata(package: ModelPackage) -> dict[str, Any]:
    """Facts a consumer of an exported model needs to feed it correctly, and where it came from."""
    return {
        "confocalize_version": __version__,
        "package_sha256": package.sha256,
        "normalization_low_percentile": package.normalization.low,
        "normalization_high_percentile": package.normalization.high,
        "lq_pixel_size_um": package.lq_pixel_size,
        "min_size_px": package.generator.multiple,
    }


def _min_size(generator: UNet) -> int:
    """Smallest tile edge that leaves output after cropping the halo at both sides."""
    return 2 * default_halo(generator) + generator.multiple


def _test_input(package: ModelPackage, sample: Image | None) -> np.ndarray:
    """A ``(1, C, S, S)`` float32 test input: the centre of ``sample``, or synthetic blobs."""
    m = package.generator.multiple
    size = -(-max(_min_size(package.generator), MIN_TEST_SIZE) // m) * m
    if sample is None:
        return np.stack([_blobs(size, seed) for seed in range(package.in_channels)])[None]
    sample = next(frames(sample))  # a time-lapse: its first frame
    czyx = as_czyx(sample.data, sample.axes)
    cyx = czyx[:, czyx.shape[1] // 2]
    if cyx.shape[0] != package.in_channels or min(cyx.shape[1:]) < size:
        raise ConfocalizeError(
            f"{sample.path or 'sample image'}: {cyx.shape[0]} channel(s) of {cyx.shape[1]}x{cyx.shape[2]} pixels; the "
            f"model needs {package.in_channels} channel(s) of at least {size}x{size}: give another sample image"
        )
    y0, x0 = (cyx.shape[1] - size) // 2, (cyx.shape[2] - size) // 2
    return cyx[None, :, y0 : y0 + size, x0 : x0 + size].astype(np.float32)


def _blobs(size: int, seed: int) -> np.ndarray:
    """Blurred bright spots and a faint background with Poisson noise, like a small fluorescence image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = np.full((size, size), 20.0)
    for y, x, r in zip(rng.uniform(0, size, 12), rng.uniform(0, size, 12), rng.uniform(2, 8, 12), strict=True):
        image += 300 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * r**2))
    return rng.poisson(image).astype(np.float32)


def _expected_output(package: ModelPackage, test_input: np.ndarray) -> np.ndarray:
    """What the model gives for the test input, normalised as bioimage.io's ``scale_range`` does."""
    low, high = package.normalization.low, package.normalization.high
    normalised = np.stack([normalize(channel, low, high) for channel in test_input[0]])
    return predict_array(package.generator, normalised, tile=test_input.shape[-1])[None]


def _model_descr(package: ModelPackage, folder: Path, test_input: np.ndarray, authors: Sequence[str], license: str) -> Any:
    """The bioimage.io ``ModelDescr``, with its files written into ``folder``."""
    from bioimageio.spec.model import v0_5 as bio

    _write_files(package, folder, test_input)
    return bio.ModelDescr(
        name=_name(package),
        description=_description(package),
        authors=[bio.Author(name=name) for name in authors],
        cite=[bio.CiteEntry(text=text, doi=bio.Doi(doi)) for text, doi in CITATIONS],
        license=bio.LicenseId(license),
        documentation=bio.FileDescr(source=folder / "README.md"),
        covers=[bio.FileDescr(source=folder / "cover.png")],
        tags=["confocalize", "pix2pix", "image-restoration", "fluorescence-light-microscopy", "2d", "pytorch"],
        inputs=[_input_descr(package, folder)],
        outputs=[_output_descr(package, folder)],
        weights=_weights_descr(package, folder),
        config=bio.Config(confocalize=_config(package)),
    )


def _write_files(package: ModelPackage, folder: Path, test_input: np.ndarray) -> None:
    """Test and sample tensors, cover, README, architecture source and both kinds of weights."""
    gen = package.generator
    test_output = _expected_output(package, test_input)
    for name, tensor in (("input", test_input), ("output", test_output)):
        np.save(folder / f"test_{name}.npy", tensor)
        write_image(folder / f"sample_{name}.tif", tensor[0], "CYX")  # the same, for people and imageio
    low, high = package.normalization.low, package.normalization.high
    _write_cover(folder / "cover.png", normalize(test_input[0, 0], low, high, clip=True), test_output[0, 0])
    (folder / "README.md").write_text(_readme(package), encoding="utf-8")
    shutil.copyfile(inspect.getfile(UNet), folder / "unet.py")
    torch.save({k: v.detach().cpu().contiguous() for k, v in gen.state_dict().items()}, folder / "weights.pt")
    _trace(gen, test_input).save(str(folder / "weights_torchscript.pt"))


def _space_axis(package: ModelPackage) -> dict[str, Any]:
    """Scale and unit of the y and x axes: the LQ pixel size in whole nanometres, when known.

    Whole nanometres because the spec requires ``halo * scale / scale`` to be an integer, which float
    micrometres (0.1) can miss by rounding.
    """
    if package.lq_pixel_size is None:
        return {"scale": 1.0}
    return {"scale": float(max(1, round(package.lq_pixel_size * 1000))), "unit": "nanometer"}


def _input_descr(package: ModelPackage, folder: Path) -> Any:
    """Raw LQ input, any size from the halo-limited minimum in steps of ``2**depth``; percentile preprocessing."""
    from bioimageio.spec.model import v0_5 as bio

    gen, norm = package.generator, package.normalization
    size = bio.ParameterizedSize(min=_min_size(gen), step=gen.multiple)
    return bio.InputTensorDescr(
        id=bio.TensorId("raw"),
        description=_input_text(package),
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=_identifiers(input_channel_names(package)))]
        + [bio.SpaceInputAxis(id=bio.AxisId(a), size=size, **_space_axis(package)) for a in "yx"],
        test_tensor=bio.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=bio.FileDescr(source=folder / "sample_input.tif"),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            bio.ScaleRangeDescr(
                kwargs=bio.ScaleRangeKwargs(axes=[bio.AxisId("y"), bio.AxisId("x")], min_percentile=norm.low, max_percentile=norm.high)
            )
        ],
    )


def _output_descr(package: ModelPackage, folder: Path) -> Any:
    """Enhanced output of the input's size, with the halo that tiled prediction must drop."""
    from bioimageio.spec.model import v0_5 as bio

    halo = default_halo(package.generator)
    return bio.OutputTensorDescr(
        id=bio.TensorId("enhanced"),
        description="enhanced (HQ-like) image, normalised intensities (about 0..1)",
        axes=[bio.BatchAxis(), bio.ChannelAxis(channel_names=_identifiers(_plain_names(package.out_channels)))]
        + [
            bio.SpaceOutputAxisWithHalo(
                id=bio.AxisId(a), size=bio.SizeReference(tensor_id=bio.TensorId("raw"), axis_id=bio.AxisId(a)), halo=halo,
                **_space_axis(package),
            )  # fmt: skip
            for a in "yx"
        ],
        test_tensor=bio.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=bio.FileDescr(source=folder / "sample_output.tif"),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
    )


def _identifiers(names: list[str]) -> list[Any]:
    from bioimageio.spec.model import v0_5 as bio

    return [bio.Identifier(n) for n in names]


def _plain_names(n: int) -> list[str]:
    return [f"channel{i}" for i in range(n)]


def input_channel_names(package: ModelPackage) -> list[str]:
    """Names of the network's input channels: ``channelC``, or ``cC_zmK``/``cC_z0``/``cC_zpK`` for 2.5D models."""
    k = package.context_slices
    if k == 0:
        return _plain_names(package.in_channels)
    offsets = [f"zm{-o}" if o < 0 else f"zp{o}" if o > 0 else "z0" for o in range(-k, k + 1)]
    return [f"c{c}_{o}" for c in range(package.in_channels // (2 * k + 1)) for o in offsets]


def _input_text(package: ModelPackage) -> str:
    """The input tensor's description; 2.5D models say how the planes are laid out."""
    text = "LQ (wide-field) image, raw intensities"
    k = package.context_slices
    if k:
        text += f"; 2.5D: planes z-{k}..z+{k} of each channel as input channels, output plane z"
    return text  # the spec allows 128 characters; the README says more


def _weights_descr(package: ModelPackage, folder: Path) -> Any:
    """State dict (with ``unet.py`` as the architecture) and its TorchScript child."""
    from bioimageio.spec.model import v0_5 as bio

    torch_version = bio.Version(torch.__version__.split("+")[0])
    kwargs = {"in_channels": package.in_channels, "out_channels": package.out_channels, **package.generator_config.model_dump()}
    architecture = bio.ArchitectureFromFileDescr(source=folder / "unet.py", callable=bio.Identifier("UNet"), kwargs=kwargs)
    return bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt", architecture=architecture, pytorch_version=torch_version
        ),
        torchscript=bio.TorchscriptWeightsDescr(
            source=folder / "weights_torchscript.pt", pytorch_version=torch_version, parent="pytorch_state_dict"
        ),
    )


def _trace(generator: UNet, test_input: np.ndarray) -> torch.jit.ScriptModule:
    """TorchScript of the padded generator (traced; valid for every size, see the module docstring)."""
    with quiet_torch(), torch.no_grad():  # also hides tracer notes on UNet's padding branch, never taken here
        return torch.jit.trace(PadToMultiple(generator).eval(), torch.from_numpy(test_input))


def _write_cover(path: Path, lq: np.ndarray, enhanced: np.ndarray) -> None:
    """LQ and enhanced side by side (2:1), 8-bit grey."""
    pair = np.concatenate([lq, np.clip(enhanced, 0.0, 1.0)], axis=1)
    PILImage.fromarray(np.rint(pair * 255).astype(np.uint8)).save(path)


def _name(package: ModelPackage) -> str:
    """A bioimage.io model name: letters, digits, spaces and ``_+-()`` only."""
    p = package.provenance
    name = f"confocalize {p.lq_system.modality or 'wide-field'} to {p.hq_system.modality or 'confocal'}"
    return re.sub(r"[^A-Za-z0-9_+\-() ]", "", name)[:64]


def _description(package: ModelPackage) -> str:
    """One sentence: what the model turns into what."""
    p = package.provenance
    lq, hq = p.lq_system.modality or "wide-field (LQ)", p.hq_system.modality or "confocal (HQ)"
    return f"pix2pix U-Net generator that turns {lq} images into {hq}-like images; trained with confocalize."


def _config(package: ModelPackage) -> dict[str, Any]:
    """confocalize's own record in the bioimage.io config: identity and provenance (not the training config)."""
    return {**_metadata(package), "provenance": package.provenance.model_dump(mode="json", exclude={"config"}, exclude_none=True)}


def _readme(package: ModelPackage) -> str:
    """The model card: what it does, its input, the two systems, training data, validation, limitations."""
    summary = package_summary(package)
    lines = [f"# {_name(package)}", "", _description(package), ""]
    low, high = package.normalization.low, package.normalization.high
    lines += ["## Input", "", f"Raw LQ intensities; percentile-normalised ({low} to {high}) by the model's preprocessing.", ""]
    k = package.context_slices
    if k:
        lines += [f"2.5D model: the input channels are planes z-{k} .. z+{k} of each channel ({', '.join(input_channel_names(package))}; "
                  "repeat the end plane at the stack ends) and the output is plane z. The preprocessing here normalises "
                  "each input plane; confocalize normalises each channel over its whole stack, which keeps dim planes dim.", ""]  # fmt: skip
    px = package.lq_pixel_size
    if px:
        lines += [f"Trained at an LQ pixel size of {px:g} µm: resample inputs to it (within {FIT_TOLERANCE:.0%}).", ""]
    for title, key in (("LQ system", "lq_system"), ("HQ system", "hq_system"), ("Training data", "training_data")):
        lines += [f"## {title}", "", *_table(summary[key]), ""]
    lines += ["## Validation", "", "Metrics on held-out validation fields (images normalised to [0, 1], data_range 1):", ""]
    for name, values in package.metrics.items():
        lines += [f"### {name}", "", *_table(values), ""]
    lines += _trust_section(package)
    lines += ["## Citations", "", *[f"- {text} doi:{doi}" for text, doi in CITATIONS], ""]
    return "\n".join(lines)


def _trust_section(package: ModelPackage) -> list[str]:
    """What confocalize adds beside the output, which this bioimage.io model (the generator alone) does not."""
    lines = ["## Uncertainty and consistency maps", "",
             "This model returns the enhanced image only. Applied with confocalize (`confocalize enhance --uncertainty "
             "--consistency`), the same package also writes, beside each output on the same grid:", "",
             "- `NAME.uncertainty.ome.tif`: per-pixel uncertainty in output units, from the spread of the outputs over the "
             "8 flips/rotations of the input (8x the compute), calibrated as below;",
             "- `NAME.consistency.ome.tif`: the output re-imaged through the LQ optics, minus the input, in units of the "
             "input's noise (|value| > 3 marks structure the input does not support), and one score per image.", ""]  # fmt: skip
    cal = package.uncertainty
    if cal is None:
        return lines + ["No uncertainty calibration is recorded: the map is the raw spread.", ""]
    rank = f"; Spearman {cal.spearman:.2f} between uncertainty and absolute error per pixel" if cal.spearman is not None else ""
    return lines + [f"Calibration ({cal.estimator}, {cal.n_images} images: {cal.data or 'not named'}){rank}; images whose "
                    f"median uncertainty exceeds {cal.median_p95:.3g} are flagged as outside calibration.", ""]  # fmt: skip


def _table(values: dict[str, Any]) -> list[str]:
    """A two-column markdown table, or a note that nothing was recorded."""
    if not values:
        return ["(not recorded)"]
    return ["| | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in values.items()]]
