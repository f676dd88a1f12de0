"""PCB: 6 stripes, GAP, one 256-d head and classifier per stripe; its configs."""

from __future__ import annotations

import glob
import os
import re

import pytest
import torch

import partreid.models.pcb  # noqa: F401  (registers "pcb")
from partreid.models import build_model
from partreid.models.abp import abp_pool
from partreid.models.parts import stripe_bounds

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def pcb18():
    torch.manual_seed(0)
    return build_model("pcb", 5, backbone="resnet18")


def test_six_logits_no_triplet_and_1536_dims(pcb18):
    x = torch.randn(4, 3, 96, 32)
    out = pcb18.train()(x)
    assert len(out["logits"]) == 6 and all(lg.shape == (4, 5) for lg in out["logits"])
    assert out["triplet"] == [] and out["mse"] == []
    with torch.no_grad():
        f = pcb18.eval()(x)
    assert f.shape == (4, 6 * 256) and pcb18.feature_dim == 1536


def test_eval_feature_is_reduced_gap_of_each_uniform_stripe(pcb18):
    """Reference: GAP of each stripe_bounds row range, then that stripe's 1x1 conv + BN + ReLU."""
    model = pcb18.eval()
    x = torch.randn(2, 3, 112, 32)  # map height 7: uneven stripes (2, 1, 1, 1, 1, 1)
    with torch.no_grad():
        fmap = model.backbone(x)
        assert fmap.shape[2] == 7
        ref = []
        for (a, b), head in zip(stripe_bounds(7, 6), model.heads):
            g = fmap[:, :, a:b].mean(dim=(2, 3))
            ref.append(head.reduction(g[:, :, None, None]).flatten(1))
        torch.testing.assert_close(model(x), torch.cat(ref, dim=1))
        assert (model(x) >= 0).all()  # ReLU after BN


def test_pooled_test_feature_and_abp(pcb18):
    model = pcb18.eval()
    x = torch.randn(2, 3, 96, 32)
    with torch.no_grad():
        fmap = model.backbone(x)
        try:
            model.test_feature = "pooled"
            g = model(x)
            assert g.shape == (2, 6 * 512)  # ResNet-18: C = 512
            torch.testing.assert_close(g[:, :512], fmap[:, :, :1].mean(dim=(2, 3)))  # map height 6
            model.abp = True
            torch.testing.assert_close(
                model(x), abp_pool(fmap, 6, "avg").transpose(1, 2).flatten(1)
            )
        finally:
            model.test_feature, model.abp = "reduced", False


def test_stripe_count_and_option_errors():
    model = build_model("pcb", 3, backbone="resnet18", stripes=4).train()
    assert len(model(torch.randn(2, 3, 64, 32))["logits"]) == 4
    with pytest.raises(ValueError, match="model.stripes"):
        build_model("pcb", 3, backbone="resnet18", stripes=0)
    with pytest.raises(ValueError, match="model.test_feature"):
        build_model("pcb", 3, backbone="resnet18", test_feature="both")


CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "pcb", "**", "*.yaml"), recursive=True))


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_pcb_configs_load_and_build(path):
    from partreid.config import load_config

    cfg = load_config(path)
    model_cfg = dict(cfg.model)
    assert model_cfg.pop("name") == "pcb"
    assert [l["type"] for l in cfg.losses] == ["cross_entropy"]
    assert cfg.schedule.milestones == ([40] if "market" in path else [4])
    model_cfg["pretrained"] = False
    with torch.device("meta"):
        model = build_model("pcb", 10, **model_cfg)
    assert len(model.heads) == 6
    pattern = re.compile(next(iter(cfg.optim.lr_mult)))
    matched = {n for n, _ in model.named_parameters() if pattern.search(n)}
    assert matched == {f"heads.{n}" for n, _ in model.heads.named_parameters()}
