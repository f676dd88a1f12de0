"""``partreid extract``: stream an input through an :class:`~partreid.inference.Extractor`.

Batches come from a DataLoader whose workers read and preprocess images (or decode the video)
while the model runs on the previous batch; only the float32 features are kept. Under
``torchrun --nproc_per_node N -m partreid extract ...`` every process takes a contiguous share
of the items (gloo on the CPU, nccl on CUDA; rank and world size from the environment) and the
shares are gathered in rank order, so the merged file lists the items in the single-process
order.
"""

from __future__ import annotations

import logging
import os
import time
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..features import Features
from .sources import SourceError, collate_items, open_source

log = logging.getLogger("partreid")


def dist_world() -> Tuple[int, int]:
    """``(rank, world size)`` of an initialised torch.distributed group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env(device: str = "auto") -> Optional[str]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); return the device each
    process should use (``cuda:LOCAL_RANK`` on CUDA), or None when not under torchrun."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return "cpu"


def _loader(extractor, dataset, video: bool) -> DataLoader:
    workers = min(extractor.num_workers, 1) if video else extractor.num_workers
    return DataLoader(
        dataset,
        batch_size=extractor.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_items,
        pin_memory=extractor.device.type == "cuda",
        prefetch_factor=4 if workers else None,
    )


def run_items(extractor, src, start: int, stop: int) -> Tuple[np.ndarray, np.ndarray, List]:
    """Features of items ``start..stop`` of ``src``: ``(features, indices kept, failures)``."""
    from tqdm import tqdm

    dataset = src.dataset(extractor.transform, start, stop)
    feats, kept, failed = [], [], []
    rank, _ = dist_world()
    bar = tqdm(
        total=stop - start,
        unit="img",
        desc=f"extract {os.path.basename(src.location.rstrip('/'))}",
        disable=not extractor.progress or rank != 0,
        dynamic_ncols=True,
    )
    with bar:
        for images, indices, errors in _loader(extractor, dataset, src.kind == "video"):
            failed.extend(errors)
            if images is not None:
                feats.append(extractor.forward(images))
                kept.append(indices.numpy())
            bar.update(len(indices) + len(errors))
    dim = extractor.feature_dim
    return (
        np.concatenate(feats) if feats else np.zeros((0, dim), np.float32),
        np.concatenate(kept) if kept else np.zeros(0, np.int64),
        failed,
    )


def extract_source(extractor, source: str, boxes: Optional[str] = None, out: Optional[str] = None):
    """What :meth:`Extractor.extract` does (see there)."""
    import torch.distributed as dist

    t0 = time.time()
    src = open_source(source, boxes)
    rank, world = dist_world()
    start, stop = src.shard(rank, world)
    feats, kept, failed = run_items(extractor, src, start, stop)
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, (feats, kept, failed))
        feats = np.concatenate([p[0] for p in parts])
        kept = np.concatenate([p[1] for p in parts])
        failed = [f for p in parts for f in p[2]]
    if failed:
        shown = "\n  ".join(f"{src.paths[i]}: {e}" for i, e in failed[:20])
        more = f"\n  ... and {len(failed) - 20} more" if len(failed) > 20 else ""
        if len(kept) == 0:
            raise SourceError(
                f"none of the {len(src)} item(s) of {source} could be read:\n  {shown}{more}"
            )
        log.warning(
            "%d of %d item(s) of %s could not be read and were left out:\n  %s%s",
            len(failed),
            len(src),
            source,
            shown,
            more,
        )
    meta = extractor.meta(source)
    meta.update(
        source_kind=src.kind,
        num_items=len(src),
        num_unreadable=len(failed),
        unreadable=[f"{src.paths[i]}: {e}" for i, e in failed[:100]],
        world_size=world,
        **src.notes,
    )
    result = Features.build(
        feats,
        [src.paths[i] for i in kept],
        pids=src.pids[kept],
        camids=src.camids[kept],
        frames=src.frames[kept],
        track_ids=src.track_ids[kept],
        boxes=src.boxes[kept],
        meta=meta,
    )
    seconds = time.time() - t0
    if out and rank == 0:
        out = result.save(out)
        log.info(
            "%d features (%d-d) of %s -> %s in %.1f s (%.1f images/s)",
            len(result),
            result.dim,
            source,
            out,
            seconds,
            len(result) / max(seconds, 1e-9),
        )
    if world > 1:
        dist.barrier()
    return result


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
    import torch.distributed as dist

    from ..inference import Extractor

    if not logging.getLogger("partreid").handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S"
        )
        log.setLevel(logging.INFO)
    dist_device = init_distributed_from_env(device)
    try:
        ext = Extractor(
            model,
            device=dist_device or device,
            batch_size=batch_size,
            num_workers=num_workers,
            flip=flip,
            amp=amp,
            progress=progress,
        )
        return ext.extract(source, boxes=boxes, out=out)
    finally:
        if dist_device is not None and dist.is_initialized():
            dist.destroy_process_group()
