"""evaluate(): ``eval.cuhk03_metric`` adds the single-gallery-shot rank-1 from the same
evaluate_rank call and leaves every other metric as it is; rank-10 is rank-10 whatever
``eval.max_rank`` says."""

from __future__ import annotations

import torch

from partreid.config import load_config
from partreid.data import build_dataset
from partreid.engine.evaluator import evaluate
from partreid.engine.setup import test_transform as make_transform
from partreid.metrics import evaluate_rank

TIMING = {"extract_seconds", "match_seconds"}


def _evaluate(root, overrides):
    """``(metrics, distances, query ids/cameras, gallery ids/cameras)`` of a small random conv
    net on the tiny synthetic set under ``overrides``."""
    torch.manual_seed(0)
    ds = build_dataset("market1501", str(root))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.AdaptiveAvgPool2d((4, 2)),
        torch.nn.Flatten(),
    ).eval()
    cfg = load_config(None, overrides)
    feats = {}
    out, dist = evaluate(
        model,
        ds.query,
        ds.gallery,
        make_transform(cfg),
        cfg.eval,
        torch.device("cpu"),
        0,
        features=feats,
    )
    (_, qp, qc), (_, gp, gc) = feats["query"], feats["gallery"]
    return out, dist, (qp, qc), (gp, gc)


def test_cuhk03_metric_adds_sgs_rank1_only(tiny_synthetic, tiny_overrides):
    off, _, _, _ = _evaluate(tiny_synthetic, tiny_overrides + ["eval.cuhk03_metric=false"])
    on, dist, (qp, qc), (gp, gc) = _evaluate(
        tiny_synthetic, tiny_overrides + ["eval.cuhk03_metric=true"]
    )
    assert on.keys() - TIMING == (off.keys() - TIMING) | {"cuhk03_sgs_rank1"}
    assert all(on[k] == off[k] for k in off.keys() - TIMING)
    # the classic protocol: 10 rounds of draws from seed 0
    ref = evaluate_rank(dist, qp, gp, qc, gc, max_rank=50, single_gallery_shot=10)
    assert on["cuhk03_sgs_rank1"] == float(ref["cmc_sgs"][0])
    assert 0.0 <= on["cuhk03_sgs_rank1"] <= 1.0


def test_rank10_is_rank10_when_max_rank_is_shorter(tiny_synthetic, tiny_overrides):
    out, dist, (qp, qc), (gp, gc) = _evaluate(tiny_synthetic, tiny_overrides + ["eval.max_rank=3"])
    cmc = evaluate_rank(dist, qp, gp, qc, gc, max_rank=10)["cmc"]
    assert (out["rank1"], out["rank5"], out["rank10"]) == (cmc[0], cmc[4], cmc[9])
