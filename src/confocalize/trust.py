"""What ``enhance --uncertainty`` and ``--consistency`` add to each image: maps beside the output and a line to judge it by.

:class:`TrustedEnhancer` takes the place of :func:`confocalize.predict.enhance_image` in
:func:`confocalize.predict.enhance_files`. With ``uncertainty`` the output is the mean over the 8
flips and rotations and ``NAME.uncertainty.ome.tif`` its calibrated uncertainty
(:mod:`confocalize.uncertainty`); with ``consistency`` ``NAME.consistency.ome.tif`` is the residual of
the output imaged again through the LQ microscope against the input, in units of the input's noise
(:mod:`confocalize.consistency`). Each image gets a :class:`TrustReport`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from confocalize import consistency
from confocalize.consistency import CONSISTENCY
from confocalize.batch import file_sha256
from confocalize.io import Image, image_stem
from confocalize.lazyio import open_lazy
from confocalize.normalize import percentile_sample
from confocalize.package import ModelPackage
from confocalize.engine import Runner
from confocalize.predict import DEFAULT_BATCH, DEFAULT_TILE, enhance_image
from confocalize.uncertainty import UNCERTAINTY, enhance_with_uncertainty, outside_calibration

@dataclass(frozen=True)
class TrustReport:
    """What the extra outputs say about one image."""

    name: str
    median_uncertainty: float | None = None
    calibrated: bool = False
    outside_calibration: bool | None = None
    consistency: float | None = None

    def line(self) -> str:
        """One line: median uncertainty, consistency score and, when it applies, the out-of-calibration flag."""
        parts = []
        if self.median_uncertainty is not None:
            kind = "" if self.calibrated else " (raw spread: the model has no calibration)"
            parts.append(f"median uncertainty {self.median_uncertainty:.4f}{kind}")
        if self.consistency is not None:
            parts.append(f"consistency {self.consistency:.2f} x noise")
        flag = "  OUTSIDE CALIBRATION: uncertainty above 95% of the calibration images'" if self.outside_calibration else ""
        return f"{self.name}: {', '.join(parts)}{flag}"


@dataclass
class TrustedEnhancer:
    """An enhancer for ``enhance_files``: the result, the extra maps by file key, and a report per image."""

    package: ModelPackage
    uncertainty: bool = False
    consistency: bool = False
    lq_psf: Path | None = None
    tile: int = DEFAULT_TILE
    batch_size: int = DEFAULT_BATCH
    resample: bool = False
    reports: list[TrustReport] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Refuse a consistency check without LQ optics or with an unreadable PSF before any image is enhanced."""
        self._psf = consistency_psf(self.package, self.lq_psf) if self.consistency else None

    @property
    def settings(self) -> dict[str, Any]:
        """What changes the outputs, for the batch sidecars."""
        return {UNCERTAINTY: self.uncertainty, CONSISTENCY: self.consistency,
                "lq_psf_sha256": file_sha256(self.lq_psf) if self._psf is not None and self.lq_psf else None}  # fmt: skip

    def __call__(self, image: Image, runner: Runner | None = None) -> tuple[Image, dict[str, Image]]:
        """Enhance ``image`` (with ``runner``, else the default backend); the result and
        ``{"uncertainty": ..., "consistency": ...}`` as asked."""
        psf = self._psf.for_image(image.pixel_size, str(image.path or "image")) if self._psf is not None else None
        extras: dict[str, Image] = {}
        report: dict[str, Any] = {}
        if self.uncertainty:
            enhanced = enhance_with_uncertainty(self.package, image, self.tile, self.batch_size, self.resample, runner or "auto")
            result, extras[UNCERTAINTY] = enhanced.image, enhanced.uncertainty
            report |= {"median_uncertainty": enhanced.median, "calibrated": enhanced.calibrated,
                       "outside_calibration": outside_calibration(self.package, enhanced.median)}  # fmt: skip
        else:
            result = enhance_image(self.package, image, self.tile, self.batch_size, self.resample, runner or "auto")
        if psf is not None:
            check = consistency.check(result.data, result.axes, image.data, image.axes, psf, str(image.path or "image"))
            extras[CONSISTENCY] = result.with_data(check.residual)
            report["consistency"] = check.score
        self.reports.append(TrustReport(image.name, **report))
        return result, extras


def consistency_psf(package: ModelPackage, psf_file: Path | None) -> consistency.LqPsf:
    """The LQ PSF of ``package``'s consistency check: ``psf_file``'s, else its recorded optics' (refused without)."""
    return consistency.LqPsf.of(package.provenance.lq_system, package.lq_pixel_size, psf_file, str(package.path or "model"))


def stored_reports(package: ModelPackage, paths: Sequence[Path]) -> list[TrustReport]:
    """The trust lines of written maps among ``paths`` (``NAME.uncertainty.ome.zarr``/``.ome.tif`` and
    ``NAME.consistency...``), one per NAME, in order; each map is read lazily.

    The median uncertainty is taken over a regular sample of about a million pixels, the consistency
    score is the RMS of the whole residual map (:func:`confocalize.consistency.rms`).
    """
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        stem = image_stem(path)
        if stem.endswith(f".{UNCERTAINTY}"):
            median = float(np.median(np.asarray(percentile_sample(open_lazy(path).data))))
            found.setdefault(stem.removesuffix(f".{UNCERTAINTY}"), {}).update(
                median_uncertainty=median, calibrated=package.uncertainty is not None,
                outside_calibration=outside_calibration(package, median),
            )  # fmt: skip
        elif stem.endswith(f".{CONSISTENCY}"):
            found.setdefault(stem.removesuffix(f".{CONSISTENCY}"), {})["consistency"] = consistency.rms(open_lazy(path).data)
    return [TrustReport(name, **fields) for name, fields in found.items()]
