"""Occluded-DukeMTMC: Market-like folders in ``Occluded_Duke/`` with DukeMTMC-reID names.

Its query holds occluded images and its gallery both occluded and holistic ones; the loading
rules are those of :mod:`.market1501` (camids 0-based).
"""

from __future__ import annotations

from typing import Optional

from .base import ReIDDataset, register_dataset
from .market1501 import load_market_layout

OCCLUDED_DUKE_CANDIDATES = (
    "Occluded_Duke",
    "occluded_duke",
    "Occluded-DukeMTMC",
    "Occluded_DukeMTMC",
)


def load_occluded_duke(
    root: str, *, carve_val: Optional[int] = None, seed: int = 0, train_only: bool = False
) -> ReIDDataset:
    """Occluded-DukeMTMC (``Occluded_Duke/`` in root, or root itself)."""
    return load_market_layout(
        root,
        name="occluded_duke",
        title="Occluded-DukeMTMC",
        candidates=OCCLUDED_DUKE_CANDIDATES,
        carve_val=carve_val,
        seed=seed,
        train_only=train_only,
        name_example="0001_c2_f0046182.jpg",
    )


register_dataset("occluded_duke", load_occluded_duke)
