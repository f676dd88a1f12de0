"""The robustness sweep: severity 0 reproduces the clean evaluation, the gallery is extracted
once, and the run report carries the results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from partreid.config import load_config
from partreid.data import build_dataset
from partreid.data.occlusion import DonorPool
from partreid.engine import EvalTarget, write_run_report
from partreid.engine.evaluator import evaluate
from partreid.engine.robustness import robustness_sweep
from partreid.engine.setup import test_transform as make_transform


class CountingModel(torch.nn.Module):
    """Wraps a model; counts the images it is run on."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.images = 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.model(x)


@pytest.fixture
def setup(tiny_synthetic, tiny_overrides):
    torch.manual_seed(0)
    cfg = load_config(None, tiny_overrides)
    ds = build_dataset("market1501", str(tiny_synthetic))
    # the sweep only needs images -> features; a small random conv net keeps the test fast and
    # (pooling a 4 x 2 grid) makes the features depend on where the image is altered
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d((4, 2)),
        torch.nn.Flatten(),
    ).eval()
    return cfg, ds, model


def mean(xs):
    """The mean of the per-query APs of queries that have a valid match (not None)."""
    return float(np.mean([x for x in xs if x is not None]))


def test_severity_zero_equals_clean_evaluation(setup):
    cfg, ds, model = setup
    tf = make_transform(cfg)
    clean, _ = evaluate(model, ds.query, ds.gallery, tf, cfg.eval, torch.device("cpu"), 0)
    kinds = ["person_random", "clutter_bottom", "keep_top"]
    rob = robustness_sweep(
        model,
        ds.query,
        ds.gallery,
        tf,
        cfg.eval,
        torch.device("cpu"),
        kinds,
        [0.0, 0.4],
        donors=DonorPool.from_dataset(ds),
    )
    for kind in kinds:
        zero = rob["results"][kind][0]
        assert zero["severity"] == 0.0
        for k in ("rank1", "mAP", "mINP"):
            assert zero[k] == pytest.approx(clean[k], abs=1e-6), (kind, k)
            assert rob["clean"][k] == pytest.approx(clean[k], abs=1e-6)
    # the altered points are real evaluations (metrics in range, not the clean values every time)
    altered = [rob["results"][k][1] for k in kinds]
    assert all(0 <= p["mAP"] <= 1 for p in altered)
    assert any(abs(p["mAP"] - clean["mAP"]) > 1e-6 for p in altered)
    # per-query APs (for compare's intervals): one per query, their mean is each point's mAP
    pq = rob["per_query_ap"]
    assert len(pq["clean"]) == len(ds.query) and len(rob["query_digest"]) == 16
    assert mean(pq["clean"]) == pytest.approx(clean["mAP"], abs=1e-4)
    for kind in kinds:
        for point, aps in zip(rob["results"][kind], pq[kind]):
            assert len(aps) == len(ds.query)
            assert mean(aps) == pytest.approx(point["mAP"], abs=1e-4)


@pytest.mark.parametrize("alter_gallery", [False, True])
def test_gallery_extracted_once_unless_altered(setup, alter_gallery):
    cfg, ds, model = setup
    counting = CountingModel(model).eval()
    nq, ng, sev = len(ds.query), len(ds.gallery), [0.2, 0.5]
    rob = robustness_sweep(
        counting,
        ds.query,
        ds.gallery,
        make_transform(cfg),
        cfg.eval,
        torch.device("cpu"),
        ["keep_bottom", "clutter_side"],
        sev,
        alter_gallery=alter_gallery,
    )
    passes = 2 if cfg.eval.flip else 1
    points = 2 * len(sev)
    expected = passes * (ng + nq + points * nq + (points * ng if alter_gallery else 0))
    assert counting.images == expected
    assert rob["alter_gallery"] is alter_gallery
    assert [r["severity"] for r in rob["results"]["keep_bottom"]] == sev


def test_person_kinds_need_donors(setup):
    cfg, ds, model = setup
    with pytest.raises(ValueError, match="DonorPool"):
        robustness_sweep(
            model,
            ds.query,
            ds.gallery,
            make_transform(cfg),
            cfg.eval,
            torch.device("cpu"),
            ["person_top"],
            [0.1],
        )


def test_run_report_carries_robustness(setup, tmp_path):
    cfg, ds, model = setup
    cfg.eval.robustness.enabled = True
    cfg.eval.robustness.kinds = ["person_bottom", "keep_top"]
    cfg.eval.robustness.severities = [0.3]
    out = tmp_path / "report"
    counting = CountingModel(model).eval()
    m = write_run_report(EvalTarget(cfg, counting, ds, torch.device("cpu")), out_dir=str(out))
    # the sweep reuses the clean evaluation's features: clean images once, altered queries per point
    nq, ng, passes = len(ds.query), len(ds.gallery), 2 if cfg.eval.flip else 1
    assert counting.images == passes * (nq + ng + 2 * nq)
    saved = json.loads((out / "metrics.json").read_text())
    rob = saved["robustness"]
    assert rob["kinds"] == ["person_bottom", "keep_top"] and rob["severities"] == [0.3]
    assert rob["clean"]["mAP"] == pytest.approx(saved["mAP"], abs=1e-6)
    assert m["robustness"]["results"]["keep_top"][0]["severity"] == 0.3
    page = (out / "report.html").read_text()
    assert "Robustness" in page and "robustness.png" in page
    assert (out / "robustness.png").stat().st_size > 0
    assert (out / "robustness_examples.png").stat().st_size > 0


def test_unknown_kind_in_config_is_named(setup, tmp_path):
    cfg, ds, model = setup
    cfg.eval.robustness.enabled = True
    cfg.eval.robustness.kinds = ["person_left"]
    with pytest.raises(ValueError, match="eval.robustness.kinds.*person_left"):
        write_run_report(
            EvalTarget(cfg, model, ds, torch.device("cpu")), out_dir=str(tmp_path / "r")
        )
    assert not (tmp_path / "r" / "metrics.json").exists()  # failed before the clean test
