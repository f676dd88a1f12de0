"""Stream an input (folder, manifest, image, video with boxes) through an Extractor into a
:class:`~partreid.features.Features`.

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
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.sources import SourceError, collate_items, open_source
from ..features import Features
from ..utils import distributed as D

log = logging.getLogger("partreid")


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


def iter_batches(
    extractor, src, start: int, stop: int, desc: str = "extract"
) -> Iterator[Tuple[np.ndarray, np.ndarray, List]]:
    """Features of items ``start..stop`` of ``src``, batch by batch: ``(features, item indices,
    failures)`` with a progress bar; failures are ``(index, error)`` of unreadable items."""
    dataset = src.dataset(extractor.transform, start, stop)
    bar = tqdm(
        total=stop - start,
        unit="img",
        desc=f"{desc} {os.path.basename(src.location.rstrip('/'))}",
        disable=not extractor.progress or not D.is_main(),
        dynamic_ncols=True,
    )
    empty = np.zeros((0, extractor.feature_dim), np.float32)
    with bar:
        for images, indices, errors in _loader(extractor, dataset, src.kind == "video"):
            feats = extractor.forward(images) if images is not None else empty
            kept = indices.numpy() if images is not None else np.zeros(0, np.int64)
            yield feats, kept, list(errors)
            bar.update(len(indices) + len(errors))


def run_items(extractor, src, start: int, stop: int) -> Tuple[np.ndarray, np.ndarray, List]:
    """Features of items ``start..stop`` of ``src``: ``(features, indices kept, failures)``."""
    feats, kept, failed = [np.zeros((0, extractor.feature_dim), np.float32)], [], []
    for f, k, errors in iter_batches(extractor, src, start, stop):
        feats.append(f)
        kept.append(k)
        failed.extend(errors)
    return np.concatenate(feats), np.concatenate(kept or [np.zeros(0, np.int64)]), failed


def extract_source(extractor, source: str, boxes: Optional[str] = None, out: Optional[str] = None):
    """What :meth:`Extractor.extract` does (see there)."""
    t0 = time.time()
    src = open_source(source, boxes)
    rank, world = D.rank(), D.world_size()
    start, stop = D.shard_bounds(len(src), rank, world)
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
    D.barrier()
    return result
