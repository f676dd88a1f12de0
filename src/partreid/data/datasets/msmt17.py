"""MSMT17 (v1 and v2), read from its list files.

Layout (v1 ``MSMT17_V1/``, v2 ``MSMT17_V2/``)::

    list_train.txt  list_val.txt  list_query.txt  list_gallery.txt
    train/ + test/                       (v1)
    mask_train_v2/ + mask_test_v2/       (v2)

Each list line is ``<relative image path> <pid>``; train and val lines point into the train
folder, query and gallery lines into the test folder. The camera is the third ``_`` field of the
file name, 1..15 (``0000_000_01_0303morning_0015_0.jpg`` -> camera 1 -> camid 0).
``combine_val=True`` (the usual setting: 1,041 ids / 32,621 train images) merges the val list,
which holds more images of the train identities, into train.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from ...errors import InvalidValueError
from ..list_files import shown_lines
from .base import (
    DatasetError,
    DatasetNotFoundError,
    Item,
    ReIDDataset,
    carve_validation,
    describe_folder,
    find_dataset_dir,
    register_dataset,
)

MSMT_CANDIDATES = (
    "MSMT17_V2",
    "MSMT17_V1",
    "MSMT17",
    "msmt17",
    "msmt17/MSMT17_V2",
    "msmt17/MSMT17_V1",
)
LISTS = ("list_train.txt", "list_query.txt", "list_gallery.txt")
IMAGE_DIRS = {"v1": ("train", "test"), "v2": ("mask_train_v2", "mask_test_v2")}


def _find_image_dirs(data_dir: str) -> Tuple[str, str, str]:
    """(version, train_dir, test_dir); folder names are matched case-insensitively."""
    entries = {e.name.lower(): e.name for e in os.scandir(data_dir) if e.is_dir()}
    for version in ("v2", "v1"):
        train, test = IMAGE_DIRS[version]
        if train in entries and test in entries:
            return (
                version,
                os.path.join(data_dir, entries[train]),
                os.path.join(data_dir, entries[test]),
            )
    raise DatasetNotFoundError(
        f"MSMT17 image folders not found in {data_dir}: expected train/ and test/ (v1) or "
        f"mask_train_v2/ and mask_test_v2/ (v2); {describe_folder(data_dir)}"
    )


def camid_from_name(name: str) -> int:
    """0-based camid from an MSMT17 file name (third ``_`` field, cameras 1..15)."""
    fields = os.path.basename(name).split("_")
    cam = int(fields[2])
    if not 1 <= cam <= 15:
        raise InvalidValueError(f"camera {cam} outside 1..15")
    return cam - 1


def read_list(list_path: str, image_dir: str, data_dir: str) -> List[Item]:
    """Parse an MSMT17 list file into items; raise naming the file and line on bad lines."""
    with open(list_path, encoding="utf-8") as f:
        lines = [(n, ln.strip()) for n, ln in enumerate(f, 1) if ln.strip()]
    if not lines:
        raise DatasetError(f"{list_path} is empty")
    # the list paths are relative to the image folder; accept them relative to the data folder too
    first = lines[0][1].split()[0]
    base = image_dir
    if not os.path.exists(os.path.join(image_dir, first)) and os.path.exists(
        os.path.join(data_dir, first)
    ):
        base = data_dir
    items: List[Item] = []
    bad: List[str] = []
    for n, line in lines:
        parts = line.split()
        try:
            if len(parts) != 2:
                raise InvalidValueError("expected '<path> <pid>'")
            items.append((os.path.join(base, parts[0]), int(parts[1]), camid_from_name(parts[0])))
        except (ValueError, IndexError) as exc:
            bad.append(f"line {n}: {line!r} ({exc})")
    if bad:
        raise DatasetError(
            f"{len(bad)} line(s) of {list_path} could not be parsed; expected "
            f"'<path> <pid>' with file names like 0000_000_01_0303morning_0015_0.jpg "
            f"(third field = camera 01..15):\n{shown_lines(bad)}"
        )
    return items


def load_msmt17(
    root: str, *, combine_val: bool = True, carve_val: Optional[int] = None, seed: int = 0
) -> ReIDDataset:
    """MSMT17 v1/v2 from its list files (``MSMT17_V1/`` or ``MSMT17_V2/`` in root, or root)."""
    data_dir = find_dataset_dir(root, MSMT_CANDIDATES, LISTS, what="MSMT17")
    version, train_dir, test_dir = _find_image_dirs(data_dir)
    notes: List[str] = [f"MSMT17 {version} layout"]
    lists: Dict[str, List[Item]] = {}
    for split, image_dir in (("train", train_dir), ("query", test_dir), ("gallery", test_dir)):
        lists[split] = read_list(os.path.join(data_dir, f"list_{split}.txt"), image_dir, data_dir)
    train = lists["train"]
    val_path = os.path.join(data_dir, "list_val.txt")
    if combine_val:
        if os.path.exists(val_path):
            val = read_list(val_path, train_dir, data_dir)
            train = train + val
            notes.append(f"combine_val: {len(val)} images of list_val.txt merged into train")
        else:
            notes.append("combine_val: no list_val.txt found, train is list_train.txt alone")
    query, gallery = lists["query"], lists["gallery"]
    if carve_val is not None:
        train, query, gallery = carve_validation(train, carve_val, seed)
        notes.append(
            f"query/gallery carved from train: {carve_val} identities (seed {seed}); "
            "list_query/list_gallery not used"
        )
    return ReIDDataset(
        name="msmt17", root=data_dir, train=train, query=query, gallery=gallery, notes=notes
    )


register_dataset("msmt17", load_msmt17)
