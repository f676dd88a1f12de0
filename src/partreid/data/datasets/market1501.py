"""Market-1501 and the generic loader for every Market-like folder layout.

Layout: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` with names such as
``0002_c1s1_000451_03.jpg`` (pid ``0002``, camera ``1``), parsed with ``([-\\d]+)_c(\\d)``.
pid -1 marks junk images (dropped and counted), pid 0 distractors (kept in the gallery).
camids are 0-based (``c1`` -> 0).

A folder that holds only ``bounding_box_train/`` (e.g. the CUHK03-NP train split of the shared
development data) is loaded with ``carve_val=N``: N identities of the train split become a
validation query/gallery (one image per identity per camera as query, the rest gallery, seeded).
"""

from __future__ import annotations

import os
import re
from typing import Callable, List, Optional, Sequence

from ..names import MARKET_NAME
from .base import (
    DatasetError,
    ReIDDataset,
    carve_validation,
    find_dataset_dir,
    parse_folder,
    register_dataset,
    report_unmatched,
)

MARKET_PATTERN = MARKET_NAME  # <pid>_c<camera>... (partreid.data.names)
TRAIN_DIR, QUERY_DIR, GALLERY_DIR = "bounding_box_train", "query", "bounding_box_test"
MARKET_NAME_EXAMPLE = "0002_c1s1_000451_03.jpg"


def load_market_layout(
    root: str,
    *,
    name: str,
    title: str,
    candidates: Sequence[str],
    carve_val: Optional[int] = None,
    seed: int = 0,
    train_only: bool = False,
    pattern: re.Pattern[str] = MARKET_PATTERN,
    name_example: str = MARKET_NAME_EXAMPLE,
    notes: Optional[List[str]] = None,
) -> ReIDDataset:
    """Load a Market-like layout found in ``root`` or ``root/<candidate>``.

    With ``carve_val=N`` the query/gallery are carved out of the train split (the official
    test folders, if any, are not used); with ``train_only=True`` and no ``carve_val`` the
    query and gallery are empty. A folder without ``query/`` and ``bounding_box_test/``
    requires one of the two.
    """
    notes = list(notes or [])
    data_dir = find_dataset_dir(root, candidates, [TRAIN_DIR], what=title)
    expected = f"the {title} naming '{name_example}' (pattern {pattern.pattern})"

    def load(subdir: str):
        folder = os.path.join(data_dir, subdir)
        items, junk, unmatched = parse_folder(folder, pattern, notes=notes)
        report_unmatched(folder, unmatched, expected, notes)
        if not items:
            why = "has no image files" if not unmatched else "has no image with a parsable name"
            raise DatasetError(f"{folder} {why}; expected names like {name_example}")
        if junk:
            notes.append(f"dropped {junk} junk image(s) (pid -1) from {subdir}/")
        return items

    train = load(TRAIN_DIR)
    missing = [d for d in (QUERY_DIR, GALLERY_DIR) if not os.path.isdir(os.path.join(data_dir, d))]
    if carve_val is not None:
        train, query, gallery = carve_validation(train, carve_val, seed)
        notes.append(
            f"query/gallery carved from {TRAIN_DIR}/: {carve_val} identities (seed {seed}), "
            "one image per identity per camera as query, the rest gallery"
        )
        if not missing and not train_only:
            notes.append(f"the official {QUERY_DIR}/ and {GALLERY_DIR}/ are not used (carve_val)")
    elif train_only:
        query, gallery = [], []
        notes.append("train_only=True: query and gallery are empty")
    elif missing:
        raise DatasetError(
            f"{data_dir} has {TRAIN_DIR}/ but no {' and no '.join(d + '/' for d in missing)}: "
            "it holds only a train split. Pass carve_val=N to carve N identities out of it as a "
            "validation query/gallery (e.g. carve_val=100, seed=0), or train_only=True to load "
            "the train split alone."
        )
    else:
        query, gallery = load(QUERY_DIR), load(GALLERY_DIR)
        distractors = sum(1 for _, pid, _ in gallery if pid == 0)
        if distractors:
            notes.append(f"kept {distractors} distractor image(s) (pid 0) in the gallery")
    return ReIDDataset(
        name=name, root=data_dir, train=train, query=query, gallery=gallery, notes=notes
    )


MARKET_CANDIDATES = (
    "Market-1501-v15.09.15",
    "Market-1501",
    "market1501",
    "Market1501",
    "market1501/Market-1501-v15.09.15",
)


def market_layout_data_set(
    name: str, title: str, candidates: Sequence[str], name_example: str = MARKET_NAME_EXAMPLE
) -> Callable[..., ReIDDataset]:
    """Register data set ``name``, a Market-like layout in ``root/<candidate>`` (or ``root``
    itself), and return its loader: :func:`load_market_layout` with the data set's names."""

    def load(
        root: str, *, carve_val: Optional[int] = None, seed: int = 0, train_only: bool = False
    ) -> ReIDDataset:
        return load_market_layout(
            root,
            name=name,
            title=title,
            candidates=candidates,
            carve_val=carve_val,
            seed=seed,
            train_only=train_only,
            name_example=name_example,
        )

    load.__name__ = load.__qualname__ = f"load_{name}"
    load.__doc__ = f"{title} (``{candidates[0]}/`` in root, or root itself)."
    register_dataset(name, load)
    return load


load_market1501 = market_layout_data_set("market1501", "Market-1501", MARKET_CANDIDATES)
