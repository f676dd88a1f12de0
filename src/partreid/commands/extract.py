"""``partreid extract``: the command around :meth:`partreid.inference.Extractor.extract`
(torchrun-aware: every process joins the group and takes its share of the items)."""

from __future__ import annotations

from typing import Optional

from ..features import Features
from ..inference import Extractor
from ..utils import distributed as D
from ..utils.logs import setup_logging


def extract_command(
    model: str,
    source: str,
    out: str,
    boxes: Optional[str] = None,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int = 2,
    flip: bool = True,
    amp: bool = True,
    progress: bool = True,
) -> Features:
    """``partreid extract MODEL INPUT --out FEATS``: the whole command (torchrun-aware)."""
    setup_logging()
    info = D.init_distributed(device)  # under torchrun: join the group, take cuda:LOCAL_RANK
    try:
        ext = Extractor(
            model,
            device=info.device,
            batch_size=batch_size,
            num_workers=num_workers,
            flip=flip,
            amp=amp,
            progress=progress,
        )
        return ext.extract(source, boxes=boxes, out=out)
    finally:
        D.cleanup()
