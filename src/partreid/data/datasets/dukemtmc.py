"""DukeMTMC-reID: Market-like folders in ``DukeMTMC-reID/``, names like ``0001_c2_f0046182.jpg``.

camids are 0-based (``c2`` -> 1); see :mod:`.market1501` for the layout rules.
"""

from __future__ import annotations

from .market1501 import market_layout_data_set

DUKE_CANDIDATES = ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmcreid", "dukemtmc-reid/DukeMTMC-reID")

load_dukemtmc = market_layout_data_set(
    "dukemtmc", "DukeMTMC-reID", DUKE_CANDIDATES, name_example="0001_c2_f0046182.jpg"
)
