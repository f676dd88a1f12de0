"""CUHK03 in the new protocol (CUHK03-NP, 767 train / 700 test identities).

CUHK03-NP ships Market-like folders per box type: ``cuhk03-np/labeled/`` and
``cuhk03-np/detected/`` (each with ``bounding_box_train/``, ``query/``, ``bounding_box_test/``),
names like ``0001_c1_1_001_01.png`` (cameras 1/2 -> camids 0/1). ``root`` may be the folder
holding ``cuhk03-np/``, ``cuhk03-np/`` itself, or the variant folder itself (as the shared
development copy ``cuhk03np-detected/``, which holds only ``bounding_box_train/``: load it with
``carve_val=N``).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

from .base import ReIDDataset, check_choice, register_dataset
from .market1501 import load_market_layout

logger = logging.getLogger("partreid.data")
VARIANTS = ("labeled", "detected")


def load_cuhk03(
    root: str,
    *,
    variant: str = "labeled",
    carve_val: Optional[int] = None,
    seed: int = 0,
    train_only: bool = False,
) -> ReIDDataset:
    """CUHK03-NP, ``variant`` "labeled" or "detected" (``cuhk03-np/<variant>/`` in root)."""
    check_choice("variant", variant, VARIANTS)
    other = VARIANTS[1 - VARIANTS.index(variant)]
    notes = []
    tail = os.path.basename(os.path.normpath(os.fspath(root))).lower()
    if other in tail and variant not in tail:
        msg = f"variant={variant!r} but the root folder name {tail!r} suggests {other!r} boxes"
        logger.warning(msg)
        notes.append(msg)
    candidates = (
        variant,
        f"cuhk03-np/{variant}",
        f"cuhk03_np/{variant}",
        f"cuhk03np-{variant}",
        f"cuhk03/cuhk03-np/{variant}",
    )
    return load_market_layout(
        root,
        name=f"cuhk03_{variant}",
        title=f"CUHK03-NP ({variant})",
        candidates=candidates,
        carve_val=carve_val,
        seed=seed,
        train_only=train_only,
        name_example="0001_c1_1_001_01.png",
        notes=notes,
    )


register_dataset("cuhk03", load_cuhk03)
register_dataset("cuhk03_labeled", load_cuhk03, variant="labeled")
register_dataset("cuhk03_detected", load_cuhk03, variant="detected")
