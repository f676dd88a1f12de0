"""evaluate(): ``eval.cuhk03_metric`` adds the single-gallery-shot rank-1 from the same
evaluate_rank call and leaves every other metric as it is."""

from __future__ import annotations

import torch

from partreid.config import load_config
from partreid.data import build_dataset
from partreid.engine.evaluator import evaluate
from partreid.engine.setup import test_transform as make_transform
from partreid.metrics import evaluate_rank


def test_cuhk03_metric_adds_sgs_rank1_only(tiny_synthetic, tiny_overrides):
    torch.manual_seed(0)
    ds = build_dataset("market1501", str(tiny_synthetic))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.AdaptiveAvgPool2d((4, 2)),
        torch.nn.Flatten(),
    ).eval()
    runs = {}
    for on in (False, True):
        cfg = load_config(None, tiny_overrides + [f"eval.cuhk03_metric={str(on).lower()}"])
        tf = make_transform(cfg)
        feats = {}
        out, dist = evaluate(
            model, ds.query, ds.gallery, tf, cfg.eval, torch.device("cpu"), 0, features=feats
        )
        runs[on] = out
    timing = {"extract_seconds", "match_seconds"}
    assert runs[True].keys() - timing == (runs[False].keys() - timing) | {"cuhk03_sgs_rank1"}
    assert all(runs[True][k] == runs[False][k] for k in runs[False].keys() - timing)
    # the classic protocol: 10 rounds of draws from seed 0
    (_, qp, qc), (_, gp, gc) = feats["query"], feats["gallery"]
    ref = evaluate_rank(dist, qp, gp, qc, gc, max_rank=cfg.eval.max_rank, single_gallery_shot=10)
    assert runs[True]["cuhk03_sgs_rank1"] == float(ref["cmc_sgs"][0])
    assert 0.0 <= runs[True]["cuhk03_sgs_rank1"] <= 1.0


def test_rank10_is_rank10_when_max_rank_is_shorter(tiny_synthetic, tiny_overrides):
    torch.manual_seed(0)
    ds = build_dataset("market1501", str(tiny_synthetic))
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.AdaptiveAvgPool2d((4, 2)),
        torch.nn.Flatten(),
    ).eval()
    cfg = load_config(None, tiny_overrides + ["eval.max_rank=3"])
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
    cmc = evaluate_rank(dist, qp, gp, qc, gc, max_rank=10)["cmc"]
    assert (out["rank1"], out["rank5"], out["rank10"]) == (cmc[0], cmc[4], cmc[9])
