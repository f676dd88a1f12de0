"""The data's list files: the one reader of manifest CSVs (for data sets, ``partreid extract``
and ``partreid ingest``) and the one way the bad lines of a list file are shown.

A manifest is a CSV with a header. ``image`` (a path relative to the CSV's folder, or absolute)
is required; the other columns are optional, and a blank cell is "unknown":

* ``pid``: the identity; integers are kept, other labels mapped to ``0..K-1`` in sorted order
  (said in the notes); unknown: -1.
* ``camid``: the camera id as written (-1 = unknown), or ``camera``: the camera number as a
  store numbers it (1, 2, ...; camid = camera - 1). A manifest has one of the two, not both.
* ``track_id``, ``frame``: integers (-1 = unknown).
* ``timestamp``: when the crop was seen, ISO 8601 or seconds since the epoch
  (:func:`partreid.utils.times.parse_time`); with the column every row needs one.
* ``split``: ``train`` / ``query`` / ``gallery`` (a data set's split column).

Every bad row is named by its line in one error that names the file; every image must exist.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InvalidValueError
from ..utils.times import parse_time
from .datasets.base import DatasetError, DatasetNotFoundError

INTEGER_COLUMNS = ("camid", "camera", "track_id", "frame")
MANIFEST_COLUMNS = ("image", "pid", *INTEGER_COLUMNS, "timestamp", "split")

_INT = re.compile(r"^[-+]?\d+$")


def shown_lines(lines: Sequence[str], limit: int = 10) -> str:
    """The first ``limit`` of ``lines``, one per indented line, and how many more there are."""
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "  " + "\n  ".join(lines[:limit]) + more


@dataclass
class Manifest:
    """The rows of a manifest CSV as columns (see the module docstring)."""

    path: str
    columns: List[str]
    paths: List[str]  # resolved against the CSV's folder
    pids: np.ndarray  # int64
    camids: np.ndarray  # int64
    cameras: Optional[np.ndarray]  # int64, the ``camera`` column as written; None without it
    track_ids: np.ndarray  # int64
    frames: np.ndarray  # int64
    timestamps: Optional[np.ndarray]  # float64 seconds since the epoch; None without the column
    splits: List[str]  # lower case; [] without the column
    notes: List[str]

    def __len__(self) -> int:
        return len(self.paths)


def _read_rows(csv_path: str, required: Sequence[str]) -> Tuple[List[str], List[Dict[str, str]]]:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            optional = [c for c in MANIFEST_COLUMNS if c not in required]
            raise DatasetError(
                f"{csv_path}: header must contain {','.join(required)}[,{','.join(optional)}]; "
                f"missing {', '.join(missing)} (found: {','.join(header) or 'nothing'})"
            )
        if "camid" in header and "camera" in header:
            raise DatasetError(
                f"{csv_path}: give the camera as camid or as camera (= camid + 1), not both"
            )
        reader.fieldnames = header
        rows = [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise DatasetError(f"{csv_path} has a header but no rows")
    return header, rows


def _pids(labels: List[str], notes: List[str]) -> np.ndarray:
    known = [p for p in labels if p]
    if all(_INT.match(p) for p in known):
        return np.array([int(p) if p else -1 for p in labels], np.int64)
    mapping = {lab: i for i, lab in enumerate(sorted(set(known)))}
    notes.append(
        f"pid labels are not all integers: mapped to 0..{len(mapping) - 1} in sorted order"
    )
    return np.array([mapping[p] if p else -1 for p in labels], np.int64)


def _row_problems(line: int, row: Dict[str, str], required: Sequence[str]) -> List[str]:
    out = [f"line {line}: empty {c}" for c in required if c in row and not row[c]]
    for c in INTEGER_COLUMNS:
        if row.get(c) and not _INT.match(row[c]):
            out.append(f"line {line}: {c} {row[c]!r} is not an integer")
        elif row.get(c) and (len(row[c]) > 21 or not -(2**63) <= int(row[c]) < 2**63):
            out.append(f"line {line}: {c} {row[c]} is outside the 64-bit integers")
    if "timestamp" in row:
        try:
            parse_time(row["timestamp"], f"line {line}: timestamp")
        except InvalidValueError as exc:
            out.append(str(exc))
    return out


def read_manifest_rows(csv_path: str, required: Sequence[str] = ("image",)) -> Manifest:
    """Read a manifest (see the module docstring); ``required`` columns must be in the header
    and set on every row. One error lists every bad row (by line), another every missing image."""
    required = tuple(dict.fromkeys(("image", *required)))
    header, rows = _read_rows(csv_path, required)
    bad = [p for line, row in enumerate(rows, 2) for p in _row_problems(line, row, required)]
    if bad:
        raise DatasetError(
            f"{len(bad)} row(s) of {csv_path} are invalid ({', '.join(required)} must be set, "
            f"{'/'.join(INTEGER_COLUMNS)} integers (-1 = unknown), timestamp a time):\n"
            + shown_lines(bad)
        )
    base = os.path.dirname(os.path.abspath(csv_path))
    paths = [os.path.join(base, r["image"]) for r in rows]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} of {len(paths)} images listed in {csv_path} do not exist "
            f"(paths are relative to the CSV's folder {base}):\n{shown_lines(missing)}"
        )

    def integers(name: str) -> np.ndarray:
        return np.array([int(r.get(name) or -1) for r in rows], np.int64)

    notes: List[str] = []
    cameras = integers("camera") if "camera" in header else None
    camids = integers("camid") if cameras is None else np.where(cameras >= 1, cameras - 1, -1)
    stamps = [parse_time(r["timestamp"]) for r in rows] if "timestamp" in header else None
    return Manifest(
        path=csv_path,
        columns=header,
        paths=paths,
        pids=_pids([r.get("pid", "") for r in rows], notes),
        camids=camids,
        cameras=cameras,
        track_ids=integers("track_id"),
        frames=integers("frame"),
        timestamps=None if stamps is None else np.asarray(stamps, np.float64),
        splits=[r["split"].lower() for r in rows] if "split" in header else [],
        notes=notes,
    )
