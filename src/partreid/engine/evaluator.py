"""Feature extraction (flip-averaged) and evaluation under the standard Re-ID protocol."""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .. import metrics as M
from ..data.io import Item
from ..data.loader import build_test_loader
from ..errors import InvalidValueError
from ..inference import flip_averaged
from ..utils import distributed as D

log = logging.getLogger("partreid")


@torch.no_grad()
def extract_features(
    model: nn.Module, loader, device: torch.device, flip: bool = True, amp: bool = False
) -> Tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Run ``model`` in eval mode over ``loader``; return ``(features N x D float32, pids, camids)``.

    With ``flip`` the feature is the average of the image's and its mirror image's features.
    Features stay on ``device`` (the distance and ranking then run there too).
    """
    was_training = model.training
    model.eval()
    feats, pids, camids = [], [], []
    use_amp = amp and device.type == "cuda"
    for images, pid, camid, _ in loader:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=use_amp):
            f = flip_averaged(model, images) if flip else model(images).float()
        feats.append(f)
        pids.append(pid.numpy())
        camids.append(camid.numpy())
    model.train(was_training)
    return torch.cat(feats), np.concatenate(pids), np.concatenate(camids)


def extract_features_sharded(
    model: nn.Module,
    items: Sequence[Item],
    transform,
    device: torch.device,
    batch_size: int = 128,
    num_workers: int = 2,
    flip: bool = True,
    amp: bool = False,
) -> Tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """:func:`extract_features` over ``items``; under DDP every process extracts its contiguous
    block (:func:`partreid.utils.distributed.shard_bounds`) and all processes receive all ``N``
    features, in the order of ``items``, each image computed exactly once."""
    lo, hi = D.shard_bounds(len(items))
    mine = list(items[lo:hi])
    if mine:
        loader = build_test_loader(mine, transform, batch_size=batch_size, num_workers=num_workers)
        f, pids, camids = extract_features(model, loader, device, flip=flip, amp=amp)
    else:  # more processes than items: this one contributes nothing
        f = torch.zeros((0, 0), device=device)
        pids = camids = np.zeros(0, dtype=np.int64)
    if not D.is_distributed():
        return f, pids, camids
    n = len(items)
    f = D.gather_in_order(f, n)
    pids = D.gather_in_order(torch.as_tensor(pids, dtype=torch.int64), n).numpy()
    camids = D.gather_in_order(torch.as_tensor(camids, dtype=torch.int64), n).numpy()
    return f, pids, camids


def distances(qf: torch.Tensor, gf: torch.Tensor, cfg) -> torch.Tensor:
    """Query x gallery distances per the ``eval:`` config: normalisation, query expansion,
    metric, k-reciprocal re-ranking."""
    if cfg.normalize:
        qf, gf = torch.nn.functional.normalize(qf, dim=1), torch.nn.functional.normalize(gf, dim=1)
    if cfg.query_expansion == "average":
        qf, gf = M.average_query_expansion(qf, gf, k=cfg.qe_k)
    elif cfg.query_expansion == "alpha":
        qf, gf = M.alpha_query_expansion(qf, gf, k=cfg.qe_k, alpha=cfg.qe_alpha)
    elif cfg.query_expansion != "none":
        raise InvalidValueError(
            f"eval.query_expansion: unknown {cfg.query_expansion!r}; valid: none, average, alpha"
        )
    if cfg.rerank:
        d = M.re_rank_features(
            qf, gf, k1=cfg.k1, k2=cfg.k2, lambda_value=cfg.lambda_value, metric=cfg.distance
        )
        return torch.as_tensor(d)
    return M.compute_distance(qf, gf, metric=cfg.distance)


def evaluate(
    model: nn.Module,
    query: Sequence[Item],
    gallery: Sequence[Item],
    transform,
    cfg,
    device: torch.device,
    num_workers: int = 2,
    amp: bool = False,
    name: str = "test",
    features: Optional[Dict[str, Any]] = None,
) -> Tuple[Dict[str, float], torch.Tensor]:
    """Evaluate ``model`` on a query/gallery split; return ``(metrics, distmat)``.

    ``features``, when given, receives the ``query`` and ``gallery`` ``(features, pids,
    camids)`` so that a caller (the robustness sweep) need not extract them again.

    Under DDP (a running process group) every process must call it: feature extraction is split
    across the processes and gathered, then every process computes the same metrics.  Pass the
    bare model (``ddp_model.module``): evaluation needs no gradient synchronisation.

    ``metrics`` holds ``rank1``, ``rank5``, ``rank10``, ``mAP`` and ``mINP`` as fractions in
    [0, 1], the query/gallery sizes and how many queries had no valid match (skipped).
    """
    if len(query) == 0:
        raise InvalidValueError(f"{name}: the query set is empty; nothing to evaluate")
    if len(gallery) == 0:
        raise InvalidValueError(f"{name}: the gallery is empty; nothing to evaluate")
    t0 = time.time()
    feats = {}
    for split, items in (("query", query), ("gallery", gallery)):
        # under DDP each process extracts its share and all receive every feature, in order
        feats[split] = extract_features_sharded(
            model, items, transform, device, cfg.batch_size, num_workers, flip=cfg.flip, amp=amp
        )
    t1 = time.time()
    if features is not None:
        features.update(feats)
    (qf, q_pids, q_cams), (gf, g_pids, g_cams) = feats["query"], feats["gallery"]
    distmat = distances(qf, gf, cfg)
    sgs = 10 if cfg.cuhk03_metric else 0  # rounds of the classic CUHK03 single-gallery-shot CMC
    max_rank = max(cfg.max_rank, 10)  # rank-10 is reported whatever the curve's length
    r = M.evaluate_rank(
        distmat, q_pids, g_pids, q_cams, g_cams, max_rank=max_rank, single_gallery_shot=sgs
    )
    m = M.rank_summary(r, name=name)
    out = {k: m[k] for k in ("rank1", "rank5", "rank10", "mAP", "mINP")}
    out.update(
        num_query=len(query),
        num_gallery=len(gallery),
        num_valid_queries=m["num_valid_queries"],
        num_skipped_queries=m["num_skipped_queries"],
        feature_dim=int(qf.shape[1]),
        extract_seconds=round(t1 - t0, 2),
        match_seconds=round(time.time() - t1, 2),
    )
    if sgs:
        out["cuhk03_sgs_rank1"] = float(r["cmc_sgs"][0])  # evaluate_rank gives a numpy array
    if out["num_skipped_queries"]:
        log.info(
            "%s: %d of %d queries have no valid match in the gallery and were skipped",
            name,
            out["num_skipped_queries"],
            len(query),
        )
    return out, distmat


def format_metrics(m: Dict[str, float], name: str = "") -> str:
    head = f"{name}: " if name else ""
    return (
        f"{head}rank-1 {100 * m['rank1']:.1f}%  rank-5 {100 * m['rank5']:.1f}%  "
        f"rank-10 {100 * m['rank10']:.1f}%  mAP {100 * m['mAP']:.1f}%  "
        f"mINP {100 * m['mINP']:.1f}%  ({m['num_valid_queries']} queries, "
        f"{m['num_gallery']} gallery)"
    )
