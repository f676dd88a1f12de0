"""The ``ReIDDataset`` container, the data-set registry and helpers shared by the loaders.

A data set is three lists of ``(image_path, pid, camid)`` items: ``train`` (pids relabelled to
``0..N-1``), ``query`` and ``gallery`` (original pids kept, so that query and gallery pids can be
compared). ``camid`` is 0-based for the standard sets; ``-1`` means "camera unknown".

Bad data, decided per case (a real data set folder has all of these):

* **names that do not parse** (folder loaders): skipped; count and examples in a WARNING and in
  the data set's ``notes`` (summary table). A subset left with no parsable name is refused.
* **empty (0-byte) files**: skipped at listing time (a cheap ``stat``, no decoding); count and
  examples logged and noted.
* **unreadable content** (truncated, corrupt, not an image): refused, naming the file -- all of
  them at once before training with ``verify=True`` / ``data.verify_images=true`` (decodes every
  image), otherwise when the loader first reads it (also from loader worker processes; the
  training run then stops with its last checkpoint intact, to be resumed once the file is
  fixed). Such files are never silently dropped or replaced.
* **grayscale, palette, RGBA, CMYK, 16-bit or float images**: read as RGB 8-bit
  (:func:`partreid.data.io.read_image`).
* **identities with a single image**: kept. In ``train`` the P x K sampler repeats the image to
  fill its K slots (counted in the notes); a query whose identity has no other-camera gallery
  image is left out of the scores by the evaluation, which counts it.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import PartreidError
from ..io import check_images, list_image_files

Item = Tuple[str, int, int]

logger = logging.getLogger("partreid.data")


#: Options every data set accepts (handled by :func:`build_dataset` itself).
COMMON_OPTIONS: Dict[str, object] = {"verify": False}


class DatasetError(PartreidError, ValueError):
    """A data set cannot be loaded as asked (bad option, bad layout, bad list or CSV)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The expected data-set folder or file is not where it was looked for."""


# --------------------------------------------------------------------------------------------
# The container
# --------------------------------------------------------------------------------------------
def relabel(items: Sequence[Item]) -> Tuple[List[Item], Dict[int, int]]:
    """Map pids to ``0..N-1`` in increasing order of the original pid; return items and the map."""
    mapping = {pid: label for label, pid in enumerate(sorted({pid for _, pid, _ in items}))}
    return [(path, mapping[pid], cam) for path, pid, cam in items], mapping


def _count(items: Sequence[Item]) -> Tuple[int, int, int]:
    """(#identities, #images, #known cameras) of a subset."""
    pids = {pid for _, pid, _ in items}
    cams = {cam for _, _, cam in items if cam >= 0}
    return len(pids), len(items), len(cams)


@dataclass(repr=False)
class ReIDDataset:
    """Train / query / gallery lists of ``(image_path, pid, camid)`` for one data set.

    ``train`` pids are relabelled to ``0..num_train_pids-1`` on construction (pass
    ``relabel_train=False`` if they already are); ``train_pid_map`` maps original pid -> label.
    ``notes`` are human-readable lines about what the loader did (junk dropped, split used...).
    """

    name: str
    root: str
    train: List[Item]
    query: List[Item] = field(default_factory=list)
    gallery: List[Item] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    relabel_train: bool = True
    train_pid_map: Dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.train = [(str(p), int(pid), int(c)) for p, pid, c in self.train]
        self.query = [(str(p), int(pid), int(c)) for p, pid, c in self.query]
        self.gallery = [(str(p), int(pid), int(c)) for p, pid, c in self.gallery]
        if self.relabel_train:
            self.train, self.train_pid_map = relabel(self.train)
        elif not self.train_pid_map:
            self.train_pid_map = {pid: pid for _, pid, _ in self.train}

    # --- counts ---------------------------------------------------------------------------
    @property
    def num_train_pids(self) -> int:
        """Number of training identities (= number of classes)."""
        return len({pid for _, pid, _ in self.train})

    @property
    def num_train_cams(self) -> int:
        """Number of distinct known cameras (camid >= 0) in the train split."""
        return _count(self.train)[2]

    @property
    def num_train_images(self) -> int:
        return len(self.train)

    @property
    def num_query_pids(self) -> int:
        return _count(self.query)[0]

    @property
    def num_gallery_pids(self) -> int:
        return _count(self.gallery)[0]

    def subsets(self) -> Dict[str, List[Item]]:
        """``{"train": ..., "query": ..., "gallery": ...}``."""
        return {"train": self.train, "query": self.query, "gallery": self.gallery}

    # --- reporting --------------------------------------------------------------------------
    def summary(self) -> str:
        """A small table: subset, #ids, #images, #cameras, followed by the loader's notes."""
        rows = [("subset", "# ids", "# images", "# cameras")]
        for subset, items in self.subsets().items():
            ids, images, cams = _count(items)
            unknown = any(c < 0 for _, _, c in items)
            if not unknown:
                cams_text = str(cams)
            else:
                cams_text = f"{cams} + unknown" if cams else "unknown"
            rows.append((subset, str(ids), str(images), cams_text))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]

        def fmt(row: Tuple[str, ...]) -> str:
            cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, 4)]
            return "  " + " | ".join(cells)

        lines = [f"Data set {self.name!r} ({self.root})"]
        lines.append(fmt(rows[0]))
        lines.append("  " + "-+-".join("-" * w for w in widths))
        lines.extend(fmt(r) for r in rows[1:])
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{k}={len(v)} images/{_count(v)[0]} ids" for k, v in self.subsets().items()
        )
        return f"ReIDDataset(name={self.name!r}, root={self.root!r}, {parts})"

    def verify(self) -> None:
        """Decode every image of every subset; raise one error that counts and lists failures."""
        paths = list(dict.fromkeys(p for items in self.subsets().values() for p, _, _ in items))
        check_images(paths, what=f"images of data set {self.name!r}")


# --------------------------------------------------------------------------------------------
# Helpers for the loaders
# --------------------------------------------------------------------------------------------
def list_images(folder: str) -> List[str]:
    """Sorted file names in ``folder`` with an image extension (other files are ignored)."""
    return [os.path.basename(p) for p in list_image_files(folder, recursive=False)[0]]


def describe_folder(path: str, limit: int = 12) -> str:
    """'a/, b/, c.txt, ... (N entries)' for error messages; tells when ``path`` is missing."""
    if not os.path.exists(path):
        return f"{path} does not exist"
    if not os.path.isdir(path):
        return f"{path} is a file, not a folder"
    names = sorted(e.name + ("/" if e.is_dir() else "") for e in os.scandir(path))
    if not names:
        return f"{path} is empty"
    shown = ", ".join(names[:limit]) + (
        f", ... ({len(names)} entries)" if len(names) > limit else ""
    )
    return f"{path} contains: {shown}"


def find_dataset_dir(
    root: str, candidates: Sequence[str], required: Sequence[str], what: str
) -> str:
    """Return ``root`` or the first ``root/<candidate>`` that contains every entry of ``required``.

    Raises :class:`DatasetNotFoundError` naming the folders it expected and what it found.
    """
    root = os.fspath(root)
    for rel in ("", *candidates):
        d = os.path.join(root, rel) if rel else root
        if all(os.path.exists(os.path.join(d, r)) for r in required):
            return d
    need = ", ".join(required)
    where = " or ".join(f"{os.path.join(root, c)}/" for c in candidates)
    raise DatasetNotFoundError(
        f"{what} not found under {root}: expected {need} directly in it"
        + (f" or in {where}" if candidates else "")
        + f"; {describe_folder(root)}"
    )


def skip_empty_files(folder: str, names: Sequence[str], notes: Optional[List[str]]) -> List[str]:
    """``names`` without the empty (0-byte) files of ``folder``; those are logged and noted."""
    empty = [n for n in names if os.path.getsize(os.path.join(folder, n)) == 0]
    if empty:
        examples = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        msg = f"skipped {len(empty)} empty (0-byte) image file(s) in {folder} (e.g. {examples})"
        logger.warning(msg)
        if notes is not None:
            notes.append(msg)
    return [n for n in names if n not in set(empty)]


def parse_folder(
    folder: str,
    pattern: re.Pattern[str],
    camid_base: int = 1,
    drop_junk: bool = True,
    notes: Optional[List[str]] = None,
) -> Tuple[List[Item], int, List[str]]:
    """Parse ``pid`` and ``camid`` out of the image names of ``folder`` with ``pattern``.

    ``pattern`` has two groups: pid and camera number; camid = camera - ``camid_base``.
    Returns ``(items, num_junk, unmatched_names)``; pid -1 (junk) is dropped when ``drop_junk``.
    Empty (0-byte) files are skipped, logged and added to ``notes``.
    """
    items: List[Item] = []
    unmatched: List[str] = []
    junk = 0
    for name in skip_empty_files(folder, list_images(folder), notes):
        m = pattern.match(name)
        if m is None:
            unmatched.append(name)
            continue
        pid, cam = int(m.group(1)), int(m.group(2)) - camid_base
        if pid == -1 and drop_junk:
            junk += 1
            continue
        items.append((os.path.join(folder, name), pid, cam))
    return items, junk, unmatched


def report_unmatched(
    subset_dir: str, unmatched: List[str], expected: str, notes: List[str]
) -> None:
    """Log (WARNING) and note image files whose names do not follow the data set's convention."""
    if not unmatched:
        return
    examples = ", ".join(unmatched[:5]) + (", ..." if len(unmatched) > 5 else "")
    msg = (
        f"skipped {len(unmatched)} image(s) in {subset_dir} whose names do not match "
        f"{expected} (e.g. {examples})"
    )
    logger.warning(msg)
    notes.append(msg)


def carve_validation(
    train: Sequence[Item], num_ids: int, seed: int = 0
) -> Tuple[List[Item], List[Item], List[Item]]:
    """Carve ``num_ids`` identities out of ``train`` as a validation query/gallery.

    Identities are drawn (seeded) among those seen by at least two cameras; for each carved
    identity one random image per camera becomes a query, the rest go to the gallery.
    Returns ``(train_rest, query, gallery)``; pids are left as they are in ``train``.
    """
    num_ids = int(num_ids)
    pids = sorted({pid for _, pid, _ in train})
    cams_of: Dict[int, set] = {}
    for _, pid, cam in train:
        cams_of.setdefault(pid, set()).add(cam)
    eligible = [p for p in pids if len({c for c in cams_of[p] if c >= 0}) >= 2]
    if num_ids <= 0:
        raise DatasetError(f"carve_val must be a positive number of identities, got {num_ids}")
    if num_ids >= len(pids):
        raise DatasetError(
            f"carve_val={num_ids} would leave no training identity: the train split has {len(pids)}"
        )
    if num_ids > len(eligible):
        raise DatasetError(
            f"carve_val={num_ids} asks for more identities than the {len(eligible)} of the train "
            f"split seen by at least two cameras (needed for a cross-camera query/gallery)"
        )
    rng = np.random.default_rng(seed)
    carved = set(np.asarray(eligible)[rng.permutation(len(eligible))[:num_ids]].tolist())
    rest = [it for it in train if it[1] not in carved]
    val = [it for it in train if it[1] in carved]
    query, gallery = split_query_gallery(val, rng)
    return rest, query, gallery


def split_query_gallery(
    items: Sequence[Item], rng: np.random.Generator, per: str = "camera"
) -> Tuple[List[Item], List[Item]]:
    """One random image per (identity, camera) - or per identity with ``per="identity"`` - is a
    query, every other image goes to the gallery. Images with camid -1 form one group per identity.
    Item order is kept in both outputs.
    """
    if per not in ("camera", "identity"):
        raise DatasetError(f"query_per must be 'camera' or 'identity', got {per!r}")
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, (_, pid, cam) in enumerate(items):
        key = (pid, cam if per == "camera" else 0)
        groups.setdefault(key, []).append(i)
    chosen = set()
    for key in sorted(groups):
        idx = groups[key]
        chosen.add(idx[int(rng.integers(len(idx)))])
    query = [it for i, it in enumerate(items) if i in chosen]
    gallery = [it for i, it in enumerate(items) if i not in chosen]
    return query, gallery


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
@dataclass
class _Entry:
    loader: Callable[..., ReIDDataset]
    fixed: Dict[str, object]
    doc: str


_REGISTRY: Dict[str, _Entry] = {}


def register_dataset(name: str, loader: Callable[..., ReIDDataset], **fixed: object) -> None:
    """Register ``loader(root, **options)`` under ``name``; ``fixed`` options are preset (aliases).

    The valid options of a data set are the keyword-only parameters of its loader.
    """
    key = _normalise(name)
    if key in _REGISTRY:
        raise DatasetError(f"data set name {name!r} is already registered")
    doc = (inspect.getdoc(loader) or "").split("\n")[0]
    _REGISTRY[key] = _Entry(loader, dict(fixed), doc)


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def _squash(name: str) -> str:
    """Lookup key: case, '-' and '_' do not matter ("Market-1501" finds "market1501")."""
    return _normalise(name).replace("_", "")


def list_datasets() -> List[str]:
    """Names accepted by :func:`build_dataset`."""
    return sorted(_REGISTRY)


def dataset_options(name: str) -> Dict[str, object]:
    """The options (with defaults) that data set ``name`` accepts, common ones included."""
    entry = _lookup(name)
    sig = inspect.signature(entry.loader)
    opts = {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in entry.fixed
    }
    return {**opts, **COMMON_OPTIONS}


def _canonical(name: str) -> str:
    """The registered name that ``name`` refers to."""
    by_key = {_squash(k): k for k in _REGISTRY}
    try:
        return by_key[_squash(name)]
    except KeyError:
        raise DatasetError(
            f"unknown data set {name!r}; registered: {', '.join(list_datasets())}"
        ) from None


def _lookup(name: str) -> _Entry:
    return _REGISTRY[_canonical(name)]


def build_dataset(name: str, root: str | os.PathLike[str], **options: object) -> ReIDDataset:
    """Load data set ``name`` from ``root`` and log its summary table (logger ``partreid.data``).

    ``options`` are checked against the data set's own options (see :func:`dataset_options`);
    an unknown one is an error that lists the valid ones. Every data set accepts
    ``verify=False``: with ``verify=True`` every image is decoded once up front and all
    unreadable files are reported together (slow for big sets, hence off by default; unreadable
    files are otherwise reported by name when the loader first reads them).
    """
    entry = _lookup(name)
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in valid.items())
        raise DatasetError(
            f"unknown option(s) {', '.join(unknown)} for data set {_canonical(name)!r}; "
            f"valid options (with defaults): {listing}"
        )
    verify = bool(options.pop("verify", False))
    dataset = entry.loader(os.path.abspath(os.fspath(root)), **entry.fixed, **options)
    note_single_image_ids(dataset)
    if verify:
        dataset.verify()
    logger.info("%s", dataset.summary())
    return dataset


def note_single_image_ids(dataset: ReIDDataset) -> None:
    """Note (and log) the training identities that have a single image."""
    counts: Dict[int, int] = {}
    for _, pid, _ in dataset.train:
        counts[pid] = counts.get(pid, 0) + 1
    single = sorted(pid for pid, n in counts.items() if n == 1)
    if single:
        orig = {label: pid for pid, label in dataset.train_pid_map.items()}
        examples = ", ".join(str(orig.get(p, p)) for p in single[:5])
        msg = (
            f"{len(single)} training identities have a single image (e.g. pid {examples}); the "
            "P x K sampler repeats it to fill their K slots"
        )
        logger.warning(msg)
        dataset.notes.append(msg)


def check_choice(option: str, value: object, choices: Iterable[object]) -> None:
    """Raise a :class:`DatasetError` unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise DatasetError(f"{option} must be one of {choices}, got {value!r}")
