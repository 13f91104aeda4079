"""Inference backends: the generator applied to a batch of tiles, in PyTorch or in ONNX Runtime.

:func:`confocalize.predict.predict_array` cuts an image into tiles, halos and blend weights; a
:class:`Runner` only computes ``(N, C_in, H, W)`` float32 tiles -> ``(N, C_out, H, W)``. Tiling,
blending, streaming, dask chunks and batch sidecars are therefore the same whatever the backend.

* :class:`TorchRunner`: the generator itself, channels_last, in eval mode and without autograd;
  optionally under bf16/fp16 autocast (``enhance --precision``), tiles through pinned memory on a GPU.
* :class:`OnnxRunner`: ONNX Runtime's CPU execution provider on the generator's ONNX graph (the graph
  ``confocalize export --onnx`` writes, :func:`onnx_program`). Its results equal PyTorch's to about
  1e-6 (tested to 1e-4), and it is faster than PyTorch on CPUs (``benchmarks/speed.py`` times both).
* :class:`ObservedRunner`: either of them, reporting each batch of tiles (progress and cancel in the napari plugin).

The ONNX graph takes seconds to build, so :func:`onnx_graph` builds it once per package: it keeps
the last few in memory and stores them in a user cache folder (:func:`cache_dir`) as
``onnx/<package sha256>-<toolchain>.onnx``, where the toolchain tag hashes the confocalize, torch and
onnxscript versions that shaped the graph. The file is written atomically and never inside the
package being read. An ONNX file holds no code (unlike a pickle), so a cached graph cannot run any.

Settings, as measured on 2 shared CPU cores with the default generator (1024² input, load 3-5, so
ratios rather than speeds): ONNX Runtime's default graph optimisation (all levels) beats "extended"
by ~1.3x and "basic" by ~1.5x; its CPU memory arena is kept (without it, ~1.8x slower); intra-op
threads follow torch's count (1 and 2 threads measured alike on the loaded cores); tiles stay at
:data:`confocalize.predict.DEFAULT_TILE` (512-pixel tiles were ~2.5x slower, batched by 4 still
~2.2x: halos dominate; 2048-pixel tiles ran a 2048² image ~1.35x faster but doubled the peak
memory, 2 GiB).

``auto`` (:func:`make_runner`) takes ONNX Runtime for a generator on the CPU when onnxruntime is
installed and the generator exports, PyTorch for a generator on a GPU; when ONNX Runtime is not
available it falls back to PyTorch with a :class:`BackendWarning` that says why.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import logging
import os
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from confocalize import __version__
from confocalize.errors import ConfocalizeError
from confocalize.io import atomic_write
from confocalize.nets.unet import pad_to_multiple
from confocalize.package import ModelPackage, content_sha256

Backend = Literal["auto", "torch", "onnxruntime"]
BACKENDS: tuple[str, ...] = get_args(Backend)
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
_AUTOCAST: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
Forward = Callable[[np.ndarray], np.ndarray]
CACHE_ENV = "CONFOCALIZE_CACHE_DIR"  # the cache folder; set to an empty value to keep graphs in memory only
MEMORY_GRAPHS = 4  # ONNX graphs kept in memory (a few MB each for the default generator)
_GRAPHS: OrderedDict[str, bytes] = OrderedDict()  # this process's graphs by cache key, most recent last


class BackendWarning(UserWarning):
    """``auto`` could not use ONNX Runtime and runs PyTorch instead."""


class Runner(Protocol):
    """Runs a generator on batches of tiles; :meth:`session` yields the function that does it."""

    name: str

    def session(self) -> contextlib.AbstractContextManager[Forward]: ...


@dataclass
class TorchRunner:
    """The generator in PyTorch on its own device: eval mode and channels_last, its training flag restored after.

    ``precision`` bf16 or fp16 runs it under autocast (weights stay float32, convolutions in the
    half type, outputs back to float32); on a GPU the tiles go through pinned memory.
    """

    generator: nn.Module
    precision: Precision = "fp32"
    name: ClassVar[str] = "torch"

    @contextlib.contextmanager
    def session(self) -> Iterator[Forward]:
        """Yield ``forward(tiles) -> outputs`` (numpy float32) for the block."""
        generator = self.generator
        was_training = generator.training
        generator.eval().to(memory_format=torch.channels_last)
        device = next(generator.parameters()).device
        half, pinned = _AUTOCAST[self.precision], device.type == "cuda"

        def forward(tiles: np.ndarray) -> np.ndarray:
            batch = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32))
            batch = (batch.pin_memory() if pinned else batch).to(device, non_blocking=pinned)
            with torch.autocast(device.type, dtype=half, enabled=half is not None):
                out = generator(batch.contiguous(memory_format=torch.channels_last))
            return out.float().cpu().numpy()

        try:
            with torch.inference_mode():
                yield forward
        finally:
            generator.train(was_training)


@dataclass
class ObservedRunner:
    """Another runner, with ``observe(tiles_done)`` called after every batch: progress for a GUI or a notebook.

    ``observe`` may raise to abandon the computation (a cancel button): the exception leaves
    :func:`confocalize.predict.predict_array` and everything above it, and the inner runner's session closes.
    """

    inner: Runner
    observe: Callable[[int], None]
    done: int = 0  # tiles computed so far, over all sessions

    @property
    def name(self) -> str:
        """The inner runner's name."""
        return self.inner.name

    @contextlib.contextmanager
    def session(self) -> Iterator[Forward]:
        """The inner session's ``forward``, counting tiles and calling ``observe`` after each batch."""
        with self.inner.session() as forward:

            def observed(tiles: np.ndarray) -> np.ndarray:
                outputs = forward(tiles)
                self.done += len(tiles)
                self.observe(self.done)
                return outputs

            yield observed


class OnnxRunner:
    """An ONNX Runtime session (CPU) on a generator graph with input ``input`` and output ``output``."""

    name: ClassVar[str] = "onnxruntime"

    def __init__(self, graph: bytes, multiple: int, threads: int | None = None) -> None:
        """``multiple``: the generator's; ``threads``: intra-op threads, by default torch's (``torch.set_num_threads``
        governs both backends)."""
        self.multiple = multiple
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # errors only
        options.enable_mem_pattern = False  # plans for one input shape; with tiles of several it held ~150 MB more, no faster
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep: no CPU taken from
        # blending, dask workers or other processes (measured on 2 shared cores: no slower, PyTorch beside it faster)
        self._session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    @contextlib.contextmanager
    def session(self) -> Iterator[Forward]:
        """Yield ``forward(tiles) -> outputs`` (numpy float32); the session is thread-safe and stays open."""
        yield self._run

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        tiles = np.ascontiguousarray(tiles, dtype=np.float32)
        h, w = tiles.shape[-2:]
        if min(h, w) < self.multiple:  # below the graph's smallest size (its reflection padding): pad as UNet.forward does
            return self._run(pad_to_multiple(torch.from_numpy(tiles), self.multiple).numpy())[..., :h, :w]
        return self._session.run(["output"], {"input": tiles})[0]


def make_runner(package: ModelPackage, backend: Backend | Runner = "auto", precision: Precision = "fp32") -> Runner:
    """The runner of ``backend`` for ``package`` (a runner is returned as it is); see :func:`graph_for`.

    ``precision`` bf16/fp16 is PyTorch's autocast: ``auto`` then means PyTorch, ``onnxruntime`` is refused.
    """
    if not isinstance(backend, str):
        return backend
    check_precision(package, backend, precision)
    if precision != "fp32":
        return TorchRunner(package.generator, precision)
    graph = graph_for(package, backend)
    return TorchRunner(package.generator) if graph is None else OnnxRunner(graph, package.generator.multiple)


def check_precision(package: ModelPackage, backend: Backend, precision: Precision) -> None:
    """Refuse (one line) a precision that is not known or that ``backend`` cannot run: half precision is PyTorch's."""
    if precision not in PRECISIONS:
        raise ConfocalizeError(f"precision '{precision}' is not known; use one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and resolve_backend(package, backend) == "onnxruntime":
        raise ConfocalizeError(f"precision {precision} runs in PyTorch (autocast); use --backend torch or auto, or fp32")


def graph_for(package: ModelPackage, backend: Backend) -> bytes | None:
    """The ONNX graph that ``backend`` runs for ``package``, or None for PyTorch.

    ``auto``: the graph for a generator on the CPU, None on a GPU; None with a :class:`BackendWarning`
    when ONNX Runtime is not installed or the generator does not export. ``onnxruntime`` raises a
    one-line :class:`ConfocalizeError` in those cases.
    """
    if resolve_backend(package, backend) == "torch":
        return None
    try:
        return onnx_graph(package)
    except ConfocalizeError as exc:
        if backend == "onnxruntime":
            raise
        warnings.warn(f"{exc}; running PyTorch instead (slower on CPU)", BackendWarning, stacklevel=3)
        return None


def resolve_backend(package: ModelPackage, backend: Backend) -> Backend:
    """``backend``, with ``auto`` decided as far as the device tells: ``torch`` on a GPU, else ``auto`` stays."""
    if backend not in BACKENDS:
        raise ConfocalizeError(f"backend '{backend}' is not known; use one of {', '.join(BACKENDS)}")
    if backend == "auto" and next(package.generator.parameters()).device.type != "cpu":
        return "torch"
    return backend


def onnx_graph(package: ModelPackage) -> bytes:
    """The serialised ONNX graph of ``package``'s generator, built once per package (see the module docstring)."""
    _import_onnxruntime()  # no graph is of use without it: say so before spending seconds on one
    key = f"{content_sha256(package)}-{_toolchain()}"
    if key in _GRAPHS:
        _GRAPHS.move_to_end(key)
        return _GRAPHS[key]
    path = _cache_file(key, package.path)
    graph = _read_cached(path)
    if graph is None:
        graph = _build_graph(package)
        if path is not None:
            _write_cached(path, graph)
    _GRAPHS[key] = graph
    while len(_GRAPHS) > MEMORY_GRAPHS:
        _GRAPHS.popitem(last=False)
    return graph


def cache_dir() -> Path | None:
    """``$CONFOCALIZE_CACHE_DIR``, else ``$XDG_CACHE_HOME/confocalize``, else ``~/.cache/confocalize``; None if
    ``CONFOCALIZE_CACHE_DIR`` is set empty (no files: graphs are kept in memory only)."""
    if CACHE_ENV in os.environ:
        return Path(os.environ[CACHE_ENV]) if os.environ[CACHE_ENV] else None
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "confocalize"


def _cache_file(key: str, package_path: Path | None) -> Path | None:
    """Where the graph of ``key`` is cached; None without a cache folder or if it lies inside the package."""
    folder = cache_dir()
    if folder is None:
        return None
    path = (folder / "onnx" / f"{key}.onnx").absolute()
    if package_path is not None and path.resolve().is_relative_to(Path(package_path).resolve()):
        return None  # never write into a package folder that is being read
    return path


def _read_cached(path: Path | None) -> bytes | None:
    """A cached graph that parses as ONNX; None if absent or damaged (it is then rebuilt and replaced)."""
    from google.protobuf.message import DecodeError

    onnx = need_module("onnx", "pip install onnx (a dependency of confocalize)")
    try:
        graph = path.read_bytes() if path is not None else None
        return graph if graph is not None and onnx.load_model_from_string(graph).graph.node else None
    except (OSError, DecodeError, ValueError):
        return None


def _write_cached(path: Path, graph: bytes) -> None:
    """Store a graph; a cache folder that cannot be written costs only the rebuild next time."""
    with contextlib.suppress(ConfocalizeError):
        with atomic_write(path) as tmp:
            tmp.write_bytes(graph)


def _toolchain() -> str:
    """12 hex digits naming the versions that shape a graph: confocalize, torch and onnxscript."""
    try:
        onnxscript = version("onnxscript")
    except PackageNotFoundError:
        onnxscript = "none"
    text = f"confocalize {__version__} torch {torch.__version__} onnxscript {onnxscript}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _build_graph(package: ModelPackage) -> bytes:
    """Export the generator; any exporter failure becomes a one-line error."""
    try:
        return onnx_program(package.generator, package.in_channels).model_proto.SerializeToString()
    except ConfocalizeError:
        raise
    except Exception as exc:  # the exporter fails in many ways (unsupported operators, shapes, versions)
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # the exporter colours its messages
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise ConfocalizeError(f"the model does not export to ONNX ({reason}); use --backend torch") from None


class PadToMultiple(nn.Module):
    """``generator`` on any input of at least ``generator.multiple`` pixels per edge, in a traceable form.

    Reflection-pads to the generator's multiple and crops back, as ``UNet.forward`` does, but with shape
    arithmetic that tracing and ``torch.export`` record for every size (inside the wrapper the input is
    always a multiple, so ``UNet.forward``'s own padding branch is never taken).
    """

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        m = self.generator.multiple
        x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        return self.generator(x)[..., :h, :w]


def onnx_program(generator: nn.Module, in_channels: int) -> Any:
    """``torch.onnx.export`` of the padded generator in eval mode: input ``input`` ``(N, C, H, W)`` float32 with
    dynamic batch, height and width (>= ``generator.multiple``), output ``output``.

    A contiguous copy is exported (``generator`` is left as it is): channels_last weights, which
    :class:`TorchRunner` leaves behind, make ``torch.export`` fail on several input channels.
    """
    from torch.export import Dim

    need_module("onnxscript", "pip install onnxscript (a dependency of confocalize)")
    module = PadToMultiple(copy.deepcopy(generator)).eval().to(memory_format=torch.contiguous_format)
    m = generator.multiple
    example = torch.zeros(1, in_channels, 2 * m, 3 * m, device=next(generator.parameters()).device)
    dims = {"x": {0: Dim("batch", min=1), 2: Dim("height", min=m), 3: Dim("width", min=m)}}
    with quiet_torch(), torch.no_grad():
        return torch.onnx.export(
            module, (example,), dynamo=True, input_names=["input"], output_names=["output"], dynamic_shapes=dims, verbose=False
        )


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Hide torch's warnings and exporter log lines (deprecations, "torchvision is not installed") for the block."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def need_module(module: str, fix: str) -> Any:
    """Import ``module``, or raise a one-line error that ends with ``fix`` (how to install it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfocalizeError(f"{module} is not installed; {fix}") from None


def _import_onnxruntime() -> Any:
    return need_module("onnxruntime", "pip install onnxruntime, or use --backend torch")
