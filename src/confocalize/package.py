"""Model packages: a folder with safetensors weights and a JSON description; loading never unpickles.

Layout::

    MODEL_DIR/model.json            format version, generator settings, normalisation, pixel size,
                                    provenance, metrics, SHA-256 of the weights file
    MODEL_DIR/weights.safetensors   generator state dict
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from confocalize import __version__
from confocalize.config import GeneratorConfig, NormalizationConfig
from confocalize.errors import ConfocalizeError
from confocalize.io import atomic_write, write_json
from confocalize.nets import UNet

FORMAT_VERSION = 1
DESCRIPTION = "model.json"
WEIGHTS = "weights.safetensors"


@dataclass
class ModelPackage:
    """A trained generator with everything needed to apply it to new images."""

    generator: UNet
    generator_config: GeneratorConfig
    normalization: NormalizationConfig
    in_channels: int = 1
    out_channels: int = 1
    lq_pixel_size: float | None = None  # µm of the LQ images it was trained on
    provenance: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def build_generator(cfg: GeneratorConfig, in_channels: int = 1, out_channels: int = 1) -> UNet:
    """A U-Net generator from its settings."""
    return UNet(in_channels, out_channels, cfg.depth, cfg.base_channels, cfg.max_channels, cfg.norm, cfg.dropout)


def save_package(package: ModelPackage, model_dir: str | os.PathLike) -> Path:
    """Write ``package`` as a model folder (weights first, description last, each atomically)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in package.generator.state_dict().items()}
    with atomic_write(model_dir / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    description = {
        "format_version": FORMAT_VERSION,
        "confocalize_version": __version__,
        "architecture": "unet",
        "generator": package.generator_config.model_dump(),
        "in_channels": package.in_channels,
        "out_channels": package.out_channels,
        "normalization": package.normalization.model_dump(),
        "lq_pixel_size": package.lq_pixel_size,
        "provenance": package.provenance,
        "metrics": package.metrics,
        "weights_sha256": _sha256(model_dir / WEIGHTS),
    }
    write_json(model_dir / DESCRIPTION, description)
    return model_dir


def load_package(model_dir: str | os.PathLike) -> ModelPackage:
    """Load a model folder, refusing anything that does not check out (never unpickles)."""
    model_dir = Path(model_dir)
    desc_path = model_dir / DESCRIPTION
    if not desc_path.is_file():
        raise ConfocalizeError(f"{model_dir}: not a confocalize model (no {DESCRIPTION}); give the model folder written by 'confocalize train'")
    try:
        desc = json.loads(desc_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfocalizeError(f"{desc_path}: corrupt model description ({exc}); re-export the model") from None
    version = desc.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfocalizeError(
            f"{model_dir}: model format {version} is not supported by confocalize {__version__} (format {FORMAT_VERSION}); "
            "upgrade confocalize or re-export the model"
        )
    weights = model_dir / WEIGHTS
    if not weights.is_file() or _sha256(weights) != desc.get("weights_sha256"):
        raise ConfocalizeError(f"{weights}: missing or does not match the hash in {DESCRIPTION}; the model was altered, get a fresh copy")
    try:
        gen_cfg = GeneratorConfig.model_validate(desc["generator"])
        norm = NormalizationConfig.model_validate(desc["normalization"])
        generator = build_generator(gen_cfg, desc["in_channels"], desc["out_channels"])
        generator.load_state_dict(load_file(str(weights)))
    except (KeyError, ValueError, RuntimeError, SafetensorError) as exc:
        reason = str(exc).splitlines()[0]
        raise ConfocalizeError(f"{model_dir}: weights do not fit the described network ({reason}); re-export the model") from None
    generator.eval()
    return ModelPackage(
        generator=generator,
        generator_config=gen_cfg,
        normalization=norm,
        in_channels=desc["in_channels"],
        out_channels=desc["out_channels"],
        lq_pixel_size=desc.get("lq_pixel_size"),
        provenance=desc.get("provenance", {}),
        metrics=desc.get("metrics", {}),
        path=model_dir,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
