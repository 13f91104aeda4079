"""Bookkeeping of a batch enhancement: which outputs are complete, and what happened to each input.

A batch over thousands of files must neither stop at one bad file nor redo finished work
(:func:`confocalize.predict.enhance_files` drives it):

* every output ``NAME.ome.tif`` gets a sidecar ``NAME.ome.tif.sha256`` (JSON), written after the
  output, both atomically. It holds the SHA-256 of the output and of the input file, the model
  package hash and the settings that change the result (output type, axes, pixel size, resample;
  not the tile size or batch size, which do not).
* An output is complete, and skipped, only if its sidecar matches this run's input, model and
  settings *and* the output's own hash. Anything else (no sidecar, an edited or truncated output,
  another model, a changed input) is enhanced again, so an interrupted batch resumes where it stopped.
* A file that cannot be read or enhanced (a :class:`ConfocalizeError`, or too little memory) is
  recorded with its one-line reason. Writing errors are not per-file (a full disk or a read-only
  folder would fail every file), so they stop the batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confocalize.errors import ConfocalizeError
from confocalize.io import write_json

SIDECAR_SUFFIX = ".sha256"
SIDECAR_VERSION = 1


@dataclass(frozen=True)
class Failure:
    """An input that was skipped, and why (one line)."""

    path: Path
    reason: str


@dataclass(frozen=True)
class BatchSummary(Sequence[Path]):
    """What a batch did. As a sequence: the complete outputs (written now or before), in input order."""

    outputs: tuple[Path, ...] = ()
    written: tuple[Path, ...] = ()
    skipped: tuple[Path, ...] = ()  # complete from an earlier run
    failed: tuple[Failure, ...] = ()

    def __getitem__(self, index: Any) -> Any:
        return self.outputs[index]

    def __len__(self) -> int:
        return len(self.outputs)

    def describe(self) -> str:
        """One line: how many were written, skipped as complete and failed."""
        return f"wrote {len(self.written)}, skipped {len(self.skipped)} already complete, {len(self.failed)} failed"


def sidecar(output: Path) -> Path:
    """The checksum sidecar of an output file."""
    return output.with_name(output.name + SIDECAR_SUFFIX)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@dataclass
class Ledger:
    """The record of one batch run with one model (``model_sha256``) and one set of ``settings``."""

    model_sha256: str
    settings: Mapping[str, Any]
    outputs: list[Path] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    def complete(self, src: Path, dst: Path) -> bool:
        """True (and recorded as skipped) if ``dst`` is a verified, up-to-date result for ``src``."""
        record = _read_sidecar(dst)
        if record is None or not dst.is_file():
            return False
        try:
            ok = all(record.get(k) == v for k, v in self._fingerprint(src).items()) and record.get("output_sha256") == file_sha256(dst)
        except OSError:
            return False
        if ok:
            self.outputs.append(dst)
            self.skipped.append(dst)
        return ok

    def wrote(self, src: Path, dst: Path) -> None:
        """Record ``dst`` as written from ``src``: its sidecar makes it complete."""
        write_json(sidecar(dst), {"version": SIDECAR_VERSION, "output_sha256": file_sha256(dst), "input": str(src), **self._fingerprint(src)})
        self.outputs.append(dst)
        self.written.append(dst)

    def fail(self, src: Path, exc: BaseException) -> None:
        """Record ``src`` as failed with a one-line reason."""
        reason = str(exc) if isinstance(exc, ConfocalizeError) else f"{src}: out of memory ({type(exc).__name__}); lower --tile"
        self.failed.append(Failure(src, reason))

    def summary(self) -> BatchSummary:
        """The batch so far, as an immutable summary."""
        return BatchSummary(tuple(self.outputs), tuple(self.written), tuple(self.skipped), tuple(self.failed))

    def _fingerprint(self, src: Path) -> dict[str, Any]:
        """What an output depends on: the input's bytes, the model and the settings (JSON-normalised)."""
        return {"input_sha256": file_sha256(src), "model_sha256": self.model_sha256, "settings": json.loads(json.dumps(dict(self.settings)))}


def _read_sidecar(output: Path) -> dict[str, Any] | None:
    """The sidecar's record, or ``None`` if it is missing, unreadable or of another version."""
    try:
        record = json.loads(sidecar(output).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("version") == SIDECAR_VERSION else None
