"""Occluded-DukeMTMC: Market-like folders in ``Occluded_Duke/`` with DukeMTMC-reID names.

Its query holds occluded images and its gallery both occluded and holistic ones; the loading
rules are those of :mod:`.market1501` (camids 0-based).
"""

from __future__ import annotations

from .market1501 import market_layout_data_set

OCCLUDED_DUKE_CANDIDATES = (
    "Occluded_Duke",
    "occluded_duke",
    "Occluded-DukeMTMC",
    "Occluded_DukeMTMC",
)

load_occluded_duke = market_layout_data_set(
    "occluded_duke",
    "Occluded-DukeMTMC",
    OCCLUDED_DUKE_CANDIDATES,
    name_example="0001_c2_f0046182.jpg",
)
