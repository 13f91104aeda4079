"""The pairs folder: registered LQ/HQ images on one grid plus the ``pairs.json`` manifest.

Layout of a pairs folder::

    PAIRS_DIR/pairs.json     manifest (see :class:`PairRecord`)
    PAIRS_DIR/lq/NAME.ome.tif   LQ image (cropped to the common overlap when registered)
    PAIRS_DIR/hq/NAME.ome.tif   HQ image resampled onto the same grid, same shape as its LQ
    PAIRS_DIR/overlays/NAME.png registration overlay for a person to check (see :func:`overlay_path`)

Every record names the field of view it belongs to (``field``): splits into train, validation and
test are made by field so that no field contributes to two sets.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from confocalize.errors import ConfocalizeError
from confocalize.io import image_stem, list_images, read_image, write_image, write_json

if TYPE_CHECKING:
    from confocalize.register import RegistrationOptions

MANIFEST = "pairs.json"
MANIFEST_VERSION = 1
OVERLAYS = "overlays"


@dataclass
class PairRecord:
    """One LQ/HQ pair in a manifest.

    ``lq_from_hq`` is a 3x3 matrix mapping HQ pixel coordinates (x = column, y = row, 1; pixel
    centres at integers) of the ORIGINAL HQ file to LQ pixel coordinates of the ORIGINAL LQ file.
    ``crop`` is ``[y0, x0, y1, x1]`` of the stored LQ image within the original LQ file.
    """

    name: str
    field: str
    lq: str  # path relative to the manifest's folder (or absolute)
    hq: str
    status: str = "ok"  # "ok" or "rejected"
    reason: str | None = None
    source_lq: str | None = None
    source_hq: str | None = None
    lq_from_hq: list[list[float]] | None = None
    crop: list[int] | None = None
    pixel_size: float | None = None  # µm, of the stored (LQ-grid) images
    quality: dict[str, Any] = field(default_factory=dict)

    def paths(self, root: Path) -> tuple[Path, Path]:
        """Absolute LQ and HQ paths, resolving relative entries against ``root``."""
        return root / self.lq, root / self.hq


def write_manifest(pairs_dir: str | os.PathLike, records: Sequence[PairRecord], extra: dict[str, Any] | None = None) -> Path:
    """Write ``pairs.json`` into ``pairs_dir`` atomically."""
    doc = {"version": MANIFEST_VERSION, **(extra or {}), "pairs": [asdict(r) for r in records]}
    return write_json(Path(pairs_dir) / MANIFEST, doc)


def read_manifest(pairs_dir: str | os.PathLike) -> list[PairRecord]:
    """All records of a pairs folder's manifest (rejected ones included)."""
    path = Path(pairs_dir) / MANIFEST
    if not path.is_file():
        raise ConfocalizeError(f"{pairs_dir}: no {MANIFEST} here; make one with 'confocalize register LQ_DIR HQ_DIR -o {pairs_dir}'")
    try:
        doc = json.loads(path.read_text())
        return [PairRecord(**item) for item in doc["pairs"]]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfocalizeError(f"{path}: not a valid pairs manifest ({exc}); regenerate it with 'confocalize register'") from None


def field_of(name: str, field_pattern: str | None) -> str:
    """Field-of-view id of an image name: the first group of ``field_pattern``, else the name."""
    if not field_pattern:
        return name
    match = re.search(field_pattern, name)
    if match is None:
        raise ConfocalizeError(f"{name}: does not match the field pattern '{field_pattern}'; fix --field-pattern")
    return match.group(1) if match.groups() else match.group(0)


def match_by_name(lq_dir: str | os.PathLike, hq_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """Pair the images of two folders whose names (without suffixes) are equal."""
    lq = {image_stem(p): p for p in list_images([lq_dir])}
    hq = {image_stem(p): p for p in list_images([hq_dir])}
    common = sorted(lq.keys() & hq.keys())
    if not common:
        raise ConfocalizeError(f"{lq_dir} and {hq_dir}: no file names in common; name pairs alike or give a CSV of pairs (--pairs-csv)")
    return [(lq[k], hq[k]) for k in common]


def read_pairs_csv(csv_path: str | os.PathLike) -> list[tuple[Path, Path, str | None]]:
    """Read a CSV with columns ``lq,hq`` and optionally ``field``; relative paths are from its folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ConfocalizeError(f"{csv_path}: no such CSV file; check the path")
    root = csv_path.parent
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"lq", "hq"} <= set(reader.fieldnames):
            raise ConfocalizeError(f"{csv_path}: needs a header with columns 'lq,hq' (and optionally 'field')")
        rows = [(root / row["lq"], root / row["hq"], row.get("field") or None) for row in reader]
    if not rows:
        raise ConfocalizeError(f"{csv_path}: lists no pairs; add rows 'lq,hq'")
    return rows


@dataclass(frozen=True)
class PairPaths:
    """Where one usable pair lives, its name and its field of view."""

    name: str
    field: str
    lq: Path
    hq: Path


def overlay_path(pair: PairPaths) -> Path | None:
    """The registration overlay of a pair from a pairs folder (``PAIRS_DIR/overlays/NAME.png``), if it has one."""
    path = Path(pair.lq).parent.parent / OVERLAYS / f"{pair.name}.png"
    return path if path.is_file() else None


def collect_pairs(
    pairs_dir: str | os.PathLike | None = None,
    lq_dir: str | os.PathLike | None = None,
    hq_dir: str | os.PathLike | None = None,
    pairs_csv: str | os.PathLike | None = None,
    field_pattern: str | None = None,
) -> list[PairPaths]:
    """The usable pairs from exactly one source: a pairs folder, two folders of
    already-registered images matched by name, or a CSV of already-registered pairs.

    Rejected manifest entries are left out. ``field_pattern`` (a regular expression whose first
    group is the field id, e.g. ``^(\\d+)_`` for W2S names ``001_0``) groups images of one field.
    """
    given = [s for s in (pairs_dir, lq_dir or hq_dir, pairs_csv) if s is not None]
    if len(given) != 1 or (lq_dir is None) != (hq_dir is None):
        raise ConfocalizeError("give exactly one source of pairs: a PAIRS_DIR, or --lq DIR with --hq DIR, or --pairs-csv FILE")
    if pairs_dir is not None:
        root = Path(pairs_dir)
        out = []
        for rec in read_manifest(root):
            if rec.status == "ok":
                lq, hq = rec.paths(root)
                out.append(PairPaths(rec.name, field_of(rec.field, field_pattern) if field_pattern else rec.field, lq, hq))
        if not out:
            raise ConfocalizeError(f"{root / MANIFEST}: no pair has status 'ok'; check the registration summary")
        return out
    if pairs_csv is not None:
        rows = read_pairs_csv(pairs_csv)
        return [
            PairPaths(image_stem(lq), fld or field_of(image_stem(lq), field_pattern), lq, hq) for lq, hq, fld in rows
        ]
    assert lq_dir is not None and hq_dir is not None
    return [PairPaths(image_stem(lq), field_of(image_stem(lq), field_pattern), lq, hq) for lq, hq in match_by_name(lq_dir, hq_dir)]


def register_folder(
    pairs: Sequence[tuple[Path, Path] | tuple[Path, Path, str | None]],
    out_dir: str | os.PathLike,
    options: RegistrationOptions | None = None,
    field_pattern: str | None = None,
    lq_pixel_size: float | None = None,
    hq_pixel_size: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[PairRecord]:
    """Register every (LQ, HQ[, field]) pair and write the pairs folder: cropped LQ, registered HQ,
    an overlay PNG per pair and ``pairs.json`` (with the registration options). Pairs that cannot
    be read or registered are listed as rejected with their reason, never kept; files an earlier run left
    for them are removed. A field given with a pair wins over ``field_pattern``; names are made
    unique (``NAME_2`` ...) when two LQ files share one."""
    from confocalize.register import RegistrationOptions, register_pair, write_overlay

    out = Path(out_dir)
    options = options or RegistrationOptions()
    records: list[PairRecord] = []
    used: set[str] = set()
    for i, (lq_path, hq_path, *given) in enumerate(pairs):
        name = _unique(image_stem(lq_path), used)
        fld = given[0] if given and given[0] else field_of(image_stem(lq_path), field_pattern)
        record = PairRecord(name=name, field=fld, lq=f"lq/{name}.ome.tif", hq=f"hq/{name}.ome.tif",
                            source_lq=str(lq_path), source_hq=str(hq_path))  # fmt: skip
        overlay = out / OVERLAYS / f"{name}.png"
        try:
            lq = read_image(lq_path, pixel_size=lq_pixel_size)
            hq = read_image(hq_path, pixel_size=hq_pixel_size)
            reg = register_pair(lq, hq, options)
        except ConfocalizeError as exc:  # unreadable or unregistrable: listed with its reason, the others go on
            record.status, record.reason = "rejected", str(exc)
            for stale in (*record.paths(out), overlay):
                stale.unlink(missing_ok=True)
        else:
            y0, x0, y1, x1 = reg.crop
            write_image(out / record.lq, lq.data[..., y0:y1, x0:x1], lq.axes, lq.pixel_size, lq.z_step, lq.time_increment)
            write_image(out / record.hq, reg.hq_on_lq[..., y0:y1, x0:x1], reg.axes, lq.pixel_size, hq.z_step, lq.time_increment)
            write_overlay(overlay, lq, reg)
            record.lq_from_hq = np.asarray(reg.lq_from_hq).tolist()
            record.crop, record.pixel_size, record.quality = list(reg.crop), lq.pixel_size, reg.quality
        records.append(record)
        if progress:
            progress(i + 1, len(pairs))
    write_manifest(out, records, {"registration_options": options.model_dump()})
    return records


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3`` ... if taken; records the result in ``used``."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}_{n}"
    used.add(candidate)
    return candidate


def summary_rows(records: Sequence[PairRecord]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a registration summary table, one row per pair."""
    header = ["pair", "status", "NCC before", "NCC after", "overlap", "rotation", "scale", "reason"]
    rows = []
    for r in records:
        q = r.quality
        rows.append([
            r.name, r.status, _fmt(q.get("ncc_before")), _fmt(q.get("ncc_after")), _fmt(q.get("overlap_fraction")),
            _fmt(q.get("rotation_deg"), "{:.1f}°"), _fmt(q.get("scale"), "{:.3f} (estimated)" if q.get("scale_estimated") else "{:.3f}"),
            r.reason or "",
        ])
    return header, rows


def _fmt(value: float | None, pattern: str = "{:.3f}") -> str:
    return "" if value is None else pattern.format(value)
