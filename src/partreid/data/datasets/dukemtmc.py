"""DukeMTMC-reID: Market-like folders in ``DukeMTMC-reID/``, names like ``0001_c2_f0046182.jpg``.

camids are 0-based (``c2`` -> 1); see :mod:`.market1501` for the layout rules.
"""

from __future__ import annotations

from typing import Optional

from .base import ReIDDataset, register_dataset
from .market1501 import load_market_layout

DUKE_CANDIDATES = ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid", "dukemtmc-reid/DukeMTMC-reID")


def load_dukemtmc(
    root: str, *, carve_val: Optional[int] = None, seed: int = 0, train_only: bool = False
) -> ReIDDataset:
    """DukeMTMC-reID (``DukeMTMC-reID/`` in root, or root itself)."""
    return load_market_layout(
        root,
        name="dukemtmc",
        title="DukeMTMC-reID",
        candidates=DUKE_CANDIDATES,
        carve_val=carve_val,
        seed=seed,
        train_only=train_only,
        name_example="0001_c2_f0046182.jpg",
    )


register_dataset("dukemtmc", load_dukemtmc)
