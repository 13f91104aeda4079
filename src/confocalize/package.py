"""Model packages: a folder or a ``.zip`` that a partner can apply without running foreign code.

Layout (the same three files in a folder or at the top level of a zip, nothing else)::

    model.json           format version, network settings, normalisation, LQ pixel size,
                         provenance (LQ/HQ systems, training data, training config), metrics
    weights.safetensors  generator state dict
    manifest.json        SHA-256 of the two files above and the package hash over them

Packages that ship inside confocalize (``confocalize/models/NAME/``, listed by ``confocalize
models``) are loaded by name wherever a package path is accepted. Format 3 adds the training run,
the data licence and the lineage (parent packages) to the provenance; format 4 the generator's
``residual`` setting and the normalisation's ``input_window`` (earlier packages load as non-residual
U-Nets normalised over single pixels).

Loading never unpickles: weights are safetensors, read from memory. A package is refused with a
one-line :class:`ConfocalizeError` when its format is not this one, it holds unexpected files, a
hash does not match, or the weights do not fit the described network. The hashes detect damage
and edits; they are no signature: compare :attr:`ModelPackage.sha256` (``confocalize info``) with
the one the sender gives you to know the package is theirs.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from confocalize import __version__
from confocalize.config import GeneratorConfig, NormalizationConfig, Strict, SystemDescription
from confocalize.errors import ConfocalizeError
from confocalize.io import atomic_write
from confocalize.nets import UNet

FORMAT_VERSION = 4
READABLE_FORMATS = (2, 3, 4)  # 2: before training runs, licences and lineage were recorded; 3: before residual U-Nets
BUILTIN_DIR = Path(__file__).resolve().parent / "models"  # packages that ship with confocalize, one folder each
DESCRIPTION = "model.json"
WEIGHTS = "weights.safetensors"
MANIFEST = "manifest.json"
MEMBERS = (DESCRIPTION, WEIGHTS, MANIFEST)
MAX_PACKAGE_BYTES = 4 << 30  # a zip unpacking to more is refused (zip bomb)


class TrainingData(Strict):
    """What the model was trained on: sources, counts, split and LQ pixel sizes."""

    source: dict[str, str] = {}
    n_pairs: int = Field(0, ge=0)
    n_fields: int = Field(0, ge=0)
    split: dict[str, dict[str, list[str]]] = Field({}, description="fields and pair names per set")
    lq_pixel_sizes_um: list[float] = []


class TrainingRun(Strict):
    """How long and where a model was trained, and the command that did it."""

    steps: int = Field(0, ge=0, description="generator steps, resumed runs included")
    seconds: float = Field(0.0, ge=0, description="training wall time, resumed runs included")
    hardware: str = ""
    command: str | None = None
    scores: dict[str, Any] = Field({}, description="benchmark scores, where a benchmark measured them")


class Parent(Strict):
    """A package this model was fine-tuned from (``train --init-from``)."""

    name: str = Field(description="the built-in name or the path it was given as")
    sha256: str
    confocalize_version: str | None = None


class Provenance(Strict):
    """Where a model comes from: the microscopes, the training data and run, the config, and its parents."""

    lq_system: SystemDescription = SystemDescription()
    hq_system: SystemDescription = SystemDescription()
    training_data: TrainingData | None = None
    config: dict[str, Any] | None = Field(None, description="the full TrainConfig of the run")
    training: TrainingRun | None = None
    data_licence: str | None = Field(None, description="licence of the training data, as its authors state it")
    lineage: list[Parent] = Field([], description="the parent package first, then its parent, and so on")


class UncertaintyCalibration(Strict):
    """How the spread of a package's test-time-augmented outputs maps to error (``confocalize.calibration``)."""

    estimator: Literal["dihedral-std"] = Field("dihedral-std", description="std over the 8 flips/rotations of the input")
    scale: float = Field(ge=0, description="factor on the spread: u² = (scale·spread)² + signal·max(mean, 0) + floor²")
    signal: float = Field(0.0, ge=0, description="error variance per unit of output signal")
    floor: float = Field(0.0, ge=0, description="error present everywhere, output units")
    median_p95: float = Field(ge=0, description="95th percentile of the calibration images' median calibrated uncertainty")
    spearman: float | None = Field(None, description="median per-image Spearman(uncertainty, |error|) on the calibration images")
    n_images: int = Field(ge=1)
    data: str = Field("", description="the calibration images, e.g. the validation fields of the training split")


class _Description(Strict):
    """The schema of ``model.json``."""

    format_version: int
    confocalize_version: str
    architecture: Literal["unet"]
    generator: GeneratorConfig
    in_channels: int = Field(ge=1)
    out_channels: int = Field(ge=1)
    context_slices: int = Field(0, ge=0, description="2.5D: z-planes on each side in the input (confocalize.stacks)")
    normalization: NormalizationConfig
    lq_pixel_size_um: float | None = Field(gt=0)
    provenance: Provenance
    metrics: dict[str, dict[str, float | None]]
    uncertainty: UncertaintyCalibration | None = None  # omitted when None

    @field_validator("generator")
    @classmethod
    def _residual_decided(cls, generator: GeneratorConfig) -> GeneratorConfig:
        if generator.residual == "auto":
            raise ValueError("generator.residual must be true or false in a trained model, not auto")
        return generator


@dataclass
class ModelPackage:
    """A trained generator with everything needed to apply it to new images and to trust it."""

    generator: UNet
    generator_config: GeneratorConfig
    normalization: NormalizationConfig
    in_channels: int = 1
    out_channels: int = 1
    context_slices: int = 0  # 2.5D: z-planes on each side fed with each plane (see confocalize.stacks)
    lq_pixel_size: float | None = None  # µm of the LQ images it was trained on
    provenance: Provenance = field(default_factory=Provenance)
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)  # set -> metric -> value
    path: Path | None = None  # where it was loaded from
    sha256: str | None = None  # package hash, when loaded
    confocalize_version: str | None = None  # version that wrote it, when loaded
    uncertainty: UncertaintyCalibration | None = None  # calibration of enhance --uncertainty, when measured


def build_generator(cfg: GeneratorConfig, in_channels: int = 1, out_channels: int = 1) -> UNet:
    """A U-Net generator from its settings (``residual`` already decided: see :mod:`confocalize.residual_choice`)."""
    if cfg.residual == "auto":
        raise ValueError("generator.residual is 'auto': decide it from the training pairs (residual_choice) first")
    return UNet(in_channels, out_channels, cfg.depth, cfg.base_channels, cfg.max_channels, cfg.norm, cfg.dropout, cfg.residual)


def save_package(package: ModelPackage, target: str | os.PathLike) -> Path:
    """Write ``package`` as a folder, or as a zip when ``target`` ends in ``.zip`` (atomically per file)."""
    target = Path(target)
    members = _members(package)
    if target.suffix.lower() == ".zip":
        with atomic_write(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name, data in members.items():  # manifest last: a crash leaves no package that checks out
        with atomic_write(target / name) as tmp:
            tmp.write_bytes(data)
    return target


def manifest(files: Mapping[str, bytes]) -> dict[str, Any]:
    """SHA-256 of each file and the package hash over all of them (names sorted)."""
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    package_hash = hashlib.sha256("".join(f"{h}  {name}\n" for name, h in hashes.items()).encode()).hexdigest()
    return {"format_version": FORMAT_VERSION, "files": hashes, "sha256": package_hash}


def content_sha256(package: ModelPackage) -> str:
    """The hash :func:`save_package` would record for ``package`` as it is now (edits since loading included)."""
    return json.loads(_members(package)[MANIFEST])["sha256"]


def weights_bytes(package: ModelPackage) -> bytes:
    """The generator's state dict as safetensors bytes (the package's weights file)."""
    state = {k: v.detach().cpu().contiguous() for k, v in package.generator.state_dict().items()}
    return save_safetensors(state, metadata={"format": "pt"})


def _members(package: ModelPackage) -> dict[str, bytes]:
    """The package's files by name, manifest last."""
    description = _Description(
        format_version=FORMAT_VERSION,
        confocalize_version=__version__,
        architecture="unet",
        generator=package.generator_config,
        in_channels=package.in_channels,
        out_channels=package.out_channels,
        context_slices=package.context_slices,
        normalization=package.normalization,
        lq_pixel_size_um=package.lq_pixel_size,
        provenance=package.provenance,
        metrics=package.metrics,
        uncertainty=package.uncertainty,
    )
    # 2D packages stay as before 2.5D existed, uncalibrated ones as before calibrations existed
    omitted = {name for name, unset in (("context_slices", package.context_slices == 0), ("uncertainty", package.uncertainty is None)) if unset}
    files = {
        DESCRIPTION: (description.model_dump_json(indent=2, exclude=omitted or None) + "\n").encode(),
        WEIGHTS: weights_bytes(package),
    }
    return {**files, MANIFEST: _json_bytes(manifest(files))}


def builtin_names() -> list[str]:
    """Names of the packages that ship with confocalize."""
    if not BUILTIN_DIR.is_dir():
        return []
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / DESCRIPTION).is_file())


def resolve_source(source: str | os.PathLike) -> Path:
    """A package path: ``source`` itself, or the built-in package of that name when no such path exists."""
    path = Path(source)
    if not path.exists() and str(source) in builtin_names():
        return BUILTIN_DIR / str(source)
    return path


def load_package(source: str | os.PathLike) -> ModelPackage:
    """Load a model folder, zip or built-in name, refusing anything that does not check out (never unpickles)."""
    source = resolve_source(source)
    members = _read_members(source)
    package_hash = _check_manifest(source, members)
    try:
        desc = _Description.model_validate(_as_current(json.loads(members[DESCRIPTION])))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfocalizeError(f"{source}: corrupt {DESCRIPTION} ({where}: {err['msg']}); get a fresh copy") from None
    return ModelPackage(
        generator=_generator(source, desc, members[WEIGHTS]),
        generator_config=desc.generator,
        normalization=desc.normalization,
        in_channels=desc.in_channels,
        out_channels=desc.out_channels,
        context_slices=desc.context_slices,
        lq_pixel_size=desc.lq_pixel_size_um,
        provenance=desc.provenance,
        metrics=desc.metrics,
        path=source,
        sha256=package_hash,
        confocalize_version=desc.confocalize_version,
        uncertainty=desc.uncertainty,
    )


def _as_current(desc: dict[str, Any]) -> dict[str, Any]:
    """A description of an earlier format in this format's terms: before format 4 no U-Net was residual
    and input percentiles were taken over single pixels."""
    if desc.get("format_version", FORMAT_VERSION) < 4:
        for key, before in (("generator", {"residual": False}), ("normalization", {"input_window": 1})):
            if isinstance(desc.get(key), dict):
                desc[key] = {**before, **desc[key]}
    return desc


def _read_members(source: Path) -> dict[str, bytes]:
    """The package's files, after checking the format version and that nothing else is in it."""
    if not source.exists():
        names = builtin_names()
        builtin = f" or a built-in model ({', '.join(names)}; 'confocalize models' lists them)" if names else ""
        raise ConfocalizeError(f"{source}: no such model folder or .zip{builtin}; check the path")
    if not source.is_dir() and not zipfile.is_zipfile(source):
        raise ConfocalizeError(f"{source}: not a confocalize model; give the model folder or .zip written by 'confocalize train'")
    try:
        if source.is_dir():
            entries = {p.name: p for p in source.iterdir()}
            return _checked_members(source, list(entries), lambda name: entries[name].read_bytes())
        with zipfile.ZipFile(source) as zf:
            infos = zf.infolist()
            if sum(info.file_size for info in infos) > MAX_PACKAGE_BYTES:
                raise ConfocalizeError(f"{source}: unpacks to more than {MAX_PACKAGE_BYTES >> 30} GiB; not a model package")
            return _checked_members(source, [info.filename for info in infos], zf.read)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise ConfocalizeError(f"{source}: damaged, altered or unreadable package ({exc}); get a fresh copy") from None


def _checked_members(source: Path, names: list[str], read: Callable[[str], bytes]) -> dict[str, bytes]:
    """Read the allowed members once the names (and the description's format version) check out."""
    if DESCRIPTION not in names:
        raise ConfocalizeError(
            f"{source}: not a confocalize model (no {DESCRIPTION} at its top level); give the model folder or .zip "
            "written by 'confocalize train'"
        )
    _check_format(source, read(DESCRIPTION))
    if len(set(names)) != len(names):
        raise ConfocalizeError(f"{source}: the model package lists a file twice; get a clean copy from the sender")
    unexpected = sorted(set(names) - set(MEMBERS))
    if unexpected:
        raise ConfocalizeError(
            f"{source}: unexpected file(s) {', '.join(unexpected)} in the model package; a package holds only "
            f"{', '.join(MEMBERS)}: get a clean copy from the sender"
        )
    missing = [name for name in MEMBERS if name not in names]
    if missing:
        raise ConfocalizeError(f"{source}: {', '.join(missing)} missing from the model package; get a complete copy")
    return {name: read(name) for name in MEMBERS}


def _check_format(source: Path, description: bytes) -> None:
    """Refuse a description that is not JSON or not of this format version."""
    try:
        desc = json.loads(description)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfocalizeError(f"{source}: corrupt {DESCRIPTION} ({exc}); get a fresh copy of the model") from None
    version = desc.get("format_version") if isinstance(desc, dict) else None
    if version in READABLE_FORMATS:
        return
    written_by = desc.get("confocalize_version", "?") if isinstance(desc, dict) else "?"
    if isinstance(version, int) and version > FORMAT_VERSION:
        fix = "upgrade confocalize"
    else:
        fix = f"retrain the model, or apply it with the confocalize that wrote it ({written_by})"
    raise ConfocalizeError(
        f"{source}: model format {version} is not supported by confocalize {__version__} (format {FORMAT_VERSION}); {fix}"
    )


def _check_manifest(source: Path, members: Mapping[str, bytes]) -> str:
    """The package hash, after checking every file against the manifest."""
    files = {name: data for name, data in members.items() if name != MANIFEST}
    expected = manifest(files)
    try:
        recorded = json.loads(members[MANIFEST])
    except (json.JSONDecodeError, UnicodeDecodeError):
        recorded = None
    if not isinstance(recorded, dict) or recorded.get("sha256") != expected["sha256"]:
        recorded_files = recorded.get("files", {}) if isinstance(recorded, dict) else {}
        altered = [n for n, h in expected["files"].items() if recorded_files.get(n) != h] or [MANIFEST]
        raise ConfocalizeError(
            f"{source}: hash mismatch for {', '.join(altered)} (see {MANIFEST}); the model was altered or damaged, "
            "get a fresh copy"
        )
    return expected["sha256"]


def _generator(source: Path, desc: _Description, weights: bytes) -> UNet:
    """The described network with the package's weights (eval mode), or a one-line error."""
    try:
        state = load_safetensors(weights)
    except (SafetensorError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfocalizeError(
            f"{source}: {WEIGHTS} is not a safetensors file ({reason}); refusing to load it, get a proper copy of the model"
        ) from None
    generator = build_generator(desc.generator, desc.in_channels, desc.out_channels)
    try:
        generator.load_state_dict(state)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise ConfocalizeError(f"{source}: weights do not fit the described network ({reason}); get a proper copy") from None
    return generator.eval()


def _normalization_words(norm: NormalizationConfig) -> str:
    """The input normalisation in words, e.g. "percentiles 1.0 - 99.8 of 3x3 local means"."""
    window = f" of {norm.input_window}x{norm.input_window} local means" if norm.input_window > 1 else ""
    return f"percentiles {norm.low} - {norm.high}{window}"


def package_summary(package: ModelPackage) -> dict[str, dict[str, Any]]:
    """What ``confocalize info`` shows, by section: identity, network, systems, training data, metrics."""
    gen = package.generator
    return {
        "package": {
            "path": str(package.path) if package.path else None,
            "sha256": package.sha256,
            "format_version": FORMAT_VERSION,
            "written_by": f"confocalize {package.confocalize_version}" if package.confocalize_version else None,
        },
        "network": {
            "architecture": "U-Net (pix2pix generator)",
            **package.generator_config.model_dump(),
            "in_channels": package.in_channels,
            "out_channels": package.out_channels,
            "context_slices": package.context_slices,
            "parameters": sum(p.numel() for p in gen.parameters()),
            "receptive_field_px": gen.receptive_field,
            "normalization": _normalization_words(package.normalization),
            "lq_pixel_size_um": package.lq_pixel_size,
        },
        "lq_system": package.provenance.lq_system.model_dump(exclude_none=True),
        "hq_system": package.provenance.hq_system.model_dump(exclude_none=True),
        "training_data": _training_summary(package.provenance.training_data),
        "training_run": _run_summary(package.provenance),
        "lineage": {f"parent {i + 1}" if i else "parent": f"{p.name} (sha256 {p.sha256})" for i, p in enumerate(package.provenance.lineage)},
        "metrics": package.metrics,
        "uncertainty_calibration": package.uncertainty.model_dump() if package.uncertainty else {},
    }


def _run_summary(provenance: Provenance) -> dict[str, Any]:
    """Steps, minutes, hardware, command and scores of the training run, and the data licence."""
    run = provenance.training
    summary: dict[str, Any] = {"data_licence": provenance.data_licence} if provenance.data_licence else {}
    if run is None:
        return summary
    summary |= {"steps": run.steps, "minutes": round(run.seconds / 60, 1), "hardware": run.hardware or None, "command": run.command}
    return summary | {f"score {k}": v for k, v in run.scores.items()}


def _training_summary(data: TrainingData | None) -> dict[str, Any]:
    """Sources, counts per set and LQ pixel sizes (not the field and pair names)."""
    if data is None:
        return {}
    return {
        **data.source,
        "n_pairs": data.n_pairs,
        "n_fields": data.n_fields,
        **{f"{name}_fields": len(part.get("fields", [])) for name, part in data.split.items()},
        "lq_pixel_sizes_um": ", ".join(f"{p:g}" for p in data.lq_pixel_sizes_um) or None,
    }


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()
