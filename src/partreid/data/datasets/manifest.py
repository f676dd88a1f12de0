"""Any data set described by a CSV manifest with header ``image,pid,camid[,split]``.

``image`` is a path relative to the CSV's folder (or absolute), ``pid`` any identity label
(integers are kept as they are; other labels are mapped to ``0..K-1`` in sorted order), ``camid``
an integer as given in the CSV (``-1`` = unknown camera; it is NOT shifted to 0-based, so the
camera numbers of ``query_cams``/``gallery_cams`` are those written in the CSV). The file is read
by the one manifest reader (:func:`partreid.data.list_files.read_manifest_rows`, which
``partreid extract`` and ``partreid ingest`` use too), with image, pid and camid required.

Protocols (``protocol=``):

* ``"split_column"``: the ``split`` column says ``train``, ``query`` or ``gallery`` per row.
* ``"random_ids"``: a seeded random identity split. ``num_test_ids`` identities (or
  ``round(test_fraction * #ids)``; ``test_fraction=0`` trains on everything) go to test, the
  rest to train. Among the test images, one random image per identity per camera
  (``query_per="camera"``) or per identity (``query_per="identity"``) is a query, the rest form
  the gallery; images with camid -1 count as one camera, i.e. one query per identity. A query left
  without a cross-camera gallery match is kept (the metric skips and counts it) and counted in the
  notes. ``query_cams``/``gallery_cams`` restrict queries/gallery to those cameras (VIPeR: cam a
  query, cam b gallery). ``gallery_only_ids=True`` keeps identities seen by a single known camera
  out of the identity split and puts their images into the gallery as distractors (only those
  taken by a gallery camera when ``gallery_cams`` is given; GRID, PRID).
* ``"auto"`` (default): ``split_column`` when the CSV has a ``split`` column, else ``random_ids``.

:data:`CLASSIC_PROTOCOLS` holds the options of the standard protocols of the classic sets.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..list_files import read_manifest_rows, shown_lines
from .base import (
    DatasetError,
    DatasetNotFoundError,
    Item,
    ReIDDataset,
    check_choice,
    register_dataset,
    split_query_gallery,
)

REQUIRED_COLUMNS = ("image", "pid", "camid")
SPLITS = ("train", "query", "gallery")

#: Options of the standard single-shot protocols of the classic sets (camera numbers as in the
#: manifests of ../shared/data/classic, where cam a = 1 and cam b = 2). Vary ``seed`` for the
#: usual 10 random splits.
CLASSIC_PROTOCOLS: Dict[str, Dict[str, object]] = {
    "viper": dict(test_fraction=0.5, query_cams=[1], gallery_cams=[2]),
    "prid": dict(num_test_ids=100, query_cams=[1], gallery_cams=[2], gallery_only_ids=True),
    "grid": dict(num_test_ids=125, query_per="identity", gallery_only_ids=True),
    "ilid": dict(test_fraction=0.5),
    "caviar4reid": dict(test_fraction=0.5),
}


def named_test_set(name: str, root: str) -> Dict[str, object]:
    """A ``data.test`` entry: a classic set's manifest with its standard protocol, else ``name``."""
    if name in CLASSIC_PROTOCOLS:
        return {
            "name": "manifest",
            "root": root,
            "label": name,
            "options": dict(CLASSIC_PROTOCOLS[name]),
        }
    return {"name": name, "root": root}


def _bad_lines(csv_path: str, bad: Sequence[str], expected: str) -> DatasetError:
    return DatasetError(
        f"{len(bad)} row(s) of {csv_path} are invalid ({expected}):\n{shown_lines(bad)}"
    )


def read_manifest(csv_path: str) -> tuple[List[Item], List[str], bool, List[str]]:
    """Return ``(items, splits, has_split_column, notes)`` of a data set's manifest (the one
    reader, :func:`partreid.data.list_files.read_manifest_rows`, with image, pid and camid set
    on every row); paths are resolved."""
    m = read_manifest_rows(csv_path, REQUIRED_COLUMNS)
    items = list(zip(m.paths, m.pids.tolist(), m.camids.tolist()))
    return items, m.splits, "split" in m.columns, m.notes


def load_manifest(
    root: str,
    *,
    csv: str = "manifest.csv",
    protocol: str = "auto",
    seed: int = 0,
    num_test_ids: Optional[int] = None,
    test_fraction: float = 0.5,
    query_per: str = "camera",
    query_cams: Optional[Sequence[int]] = None,
    gallery_cams: Optional[Sequence[int]] = None,
    gallery_only_ids: bool = False,
) -> ReIDDataset:
    """A data set described by a CSV manifest (``root/<csv>``, or ``root`` if it is the CSV)."""
    check_choice("protocol", protocol, ("auto", "split_column", "random_ids"))
    csv_path = root if os.path.isfile(root) else os.path.join(root, csv)
    if not os.path.isfile(csv_path):
        raise DatasetNotFoundError(
            f"manifest {csv_path} not found (option csv={csv!r}, relative to root {root})"
        )
    items, splits, has_split, notes = read_manifest(csv_path)
    name = f"manifest:{os.path.basename(os.path.dirname(os.path.abspath(csv_path))) or 'manifest'}"
    split = dict(
        num_test_ids=num_test_ids,
        test_fraction=test_fraction,
        query_per=query_per,
        query_cams=query_cams,
        gallery_cams=gallery_cams,
        gallery_only_ids=gallery_only_ids,
    )
    if protocol == "auto":
        protocol = "split_column" if has_split else "random_ids"
    if protocol == "split_column":
        if not has_split:
            raise DatasetError(f"protocol='split_column' but {csv_path} has no 'split' column")
        return _split_column_dataset(name, csv_path, items, splits, notes, split)
    if has_split:
        notes.append("the 'split' column is ignored (protocol='random_ids')")
    train, query, gallery, split_notes = random_identity_split(
        items, SplitOptions(seed=seed, **split)
    )
    return ReIDDataset(
        name=name,
        root=csv_path,
        train=train,
        query=query,
        gallery=gallery,
        notes=notes + split_notes,
    )


def _split_column_dataset(
    name: str,
    csv_path: str,
    items: List[Item],
    splits: List[str],
    notes: List[str],
    split_options: Dict[str, object],
) -> ReIDDataset:
    """The data set as the manifest's ``split`` column divides it; refuses the options of the
    random identity split that differ from their defaults (:class:`SplitOptions`)."""
    defaults = SplitOptions()
    changed = [k for k, v in split_options.items() if v != getattr(defaults, k)]
    if changed:
        raise DatasetError(
            f"option(s) {', '.join(changed)} only apply to protocol='random_ids', but "
            f"{csv_path} is split by its 'split' column (pass protocol='random_ids' to ignore it)"
        )
    bad = [f"line {i + 2}: split {s!r}" for i, s in enumerate(splits) if s not in SPLITS]
    if bad:
        raise _bad_lines(csv_path, bad, "split must be one of train, query, gallery")
    subsets = {s: [it for it, sp in zip(items, splits) if sp == s] for s in SPLITS}
    notes.append(f"split from the 'split' column of {os.path.basename(csv_path)}")
    return ReIDDataset(name=name, root=csv_path, notes=notes, **subsets)


@dataclass(frozen=True)
class SplitOptions:
    """The options of :func:`random_identity_split` (the ``random_ids`` protocol of the module
    doc), checked when made; the camera lists are kept as tuples.

    The checks that need the images (cameras that no image has, more test identities than there
    are) are made by the split itself."""

    seed: int = 0
    num_test_ids: Optional[int] = None
    test_fraction: float = 0.5
    query_per: str = "camera"
    query_cams: Optional[Tuple[int, ...]] = None
    gallery_cams: Optional[Tuple[int, ...]] = None
    gallery_only_ids: bool = False

    def __post_init__(self) -> None:
        check_choice("query_per", self.query_per, ("camera", "identity"))
        if self.num_test_ids is None and not 0.0 <= float(self.test_fraction) <= 1.0:
            raise DatasetError(f"test_fraction must be in [0, 1], got {self.test_fraction}")
        for opt in ("query_cams", "gallery_cams"):
            cams = getattr(self, opt)
            if cams is not None:
                object.__setattr__(self, opt, tuple(cams))


def random_identity_split(
    items: Sequence[Item], options: SplitOptions = SplitOptions()
) -> tuple[List[Item], List[Item], List[Item], List[str]]:
    """Seeded identity split of ``items`` into train / query / gallery (see the module doc)."""
    all_cams = sorted({c for _, _, c in items})
    for opt, cams in (("query_cams", options.query_cams), ("gallery_cams", options.gallery_cams)):
        if cams is not None:
            unknown = sorted(set(int(c) for c in cams) - set(all_cams))
            if unknown:
                raise DatasetError(
                    f"{opt} {list(cams)} names camera(s) {unknown} that no image has; "
                    f"the cameras of this data set are {all_cams}"
                )
    qcams = None if options.query_cams is None else {int(c) for c in options.query_cams}
    gcams = None if options.gallery_cams is None else {int(c) for c in options.gallery_cams}

    cams_of: Dict[int, set] = {}
    for _, pid, cam in items:
        cams_of.setdefault(pid, set()).add(cam)
    pids = sorted(cams_of)
    single = set()
    if options.gallery_only_ids:
        single = {p for p in pids if len(cams_of[p]) == 1 and min(cams_of[p]) >= 0}
    pool = [p for p in pids if p not in single]

    if options.num_test_ids is None:
        n_test = int(round(float(options.test_fraction) * len(pool)))
    else:
        n_test = int(options.num_test_ids)
        if not 0 <= n_test <= len(pool):
            raise DatasetError(
                f"num_test_ids={n_test} is not in [0, {len(pool)}] (identities available for the split)"
            )
    rng = np.random.default_rng(options.seed)
    test_ids = set(np.asarray(pool, dtype=np.int64)[rng.permutation(len(pool))[:n_test]].tolist())

    train = [it for it in items if it[1] not in single and it[1] not in test_ids]
    test = [it for it in items if it[1] in test_ids]
    candidates = [it for it in test if qcams is None or it[2] in qcams]
    query, _ = split_query_gallery(candidates, rng, per=options.query_per)
    chosen = set(query)
    gallery = [it for it in test if it not in chosen and (gcams is None or it[2] in gcams)]
    distractors = [it for it in items if it[1] in single and (gcams is None or it[2] in gcams)]
    gallery += distractors

    notes = [
        f"random identity split (seed {options.seed}): {len(pool) - n_test} train / {n_test} test identities; "
        f"query = one image per {'identity and camera' if options.query_per == 'camera' else 'identity'}"
        + (
            " (camid -1 counts as one camera)"
            if options.query_per == "camera" and any(c < 0 for _, _, c in test)
            else ""
        )
        + (f" of cameras {sorted(qcams)}" if qcams is not None else "")
        + (f", gallery restricted to cameras {sorted(gcams)}" if gcams is not None else "")
    ]
    if single:
        dropped = sum(1 for it in items if it[1] in single) - len(distractors)
        notes.append(
            f"gallery_only_ids: {len(single)} single-camera identities kept out of the split; "
            f"{len(distractors)} of their images added to the gallery as distractors"
            + (f", {dropped} dropped (not taken by a gallery camera)" if dropped else "")
        )
    no_match = count_queries_without_match(query, gallery)
    if no_match:
        notes.append(
            f"{no_match} query image(s) have no cross-camera gallery match (kept; the metric skips them)"
        )
    return train, query, gallery, notes


def count_queries_without_match(query: Sequence[Item], gallery: Sequence[Item]) -> int:
    """Queries with no gallery image of the same pid from another (or an unknown) camera."""
    gal: Dict[int, set] = {}
    for _, pid, cam in gallery:
        gal.setdefault(pid, set()).add(cam)
    missing = 0
    for _, pid, cam in query:
        cams = gal.get(pid, set())
        if not any(c != cam or c < 0 or cam < 0 for c in cams):
            missing += 1
    return missing


register_dataset("manifest", load_manifest)
