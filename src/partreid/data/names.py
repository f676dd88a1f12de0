"""Market-1501-style image names, ``<pid>_c<camera>...`` (``0002_c1s1_000451_03.jpg``,
``-1_c3_f0012.jpg`` for junk): the one parser of pid and camera out of a file name."""

from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence, Tuple

MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def parse_market_name(name: str) -> Optional[Tuple[int, int]]:
    """``(pid, camera number as written)`` of a Market-style file name or path, else None."""
    m = MARKET_NAME.match(os.path.basename(name))
    return None if m is None else (int(m.group(1)), int(m.group(2)))


def market_labels(names: Sequence[str]) -> Optional[Tuple[List[int], List[int]]]:
    """``(pids, 0-based camids)`` parsed from Market-style names, or None unless all match."""
    pids, camids = [], []
    for name in names:
        parsed = parse_market_name(name)
        if parsed is None:
            return None
        pids.append(parsed[0])
        camids.append(parsed[1] - 1)
    return pids, camids
