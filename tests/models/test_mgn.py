"""MGN baseline: 8 features / 2048-d, branch strides, stripe pooling, configs, parameter count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import partreid.models.mgn  # noqa: F401  (registers "mgn")
from partreid.models import build_backbone, build_model
from partreid.models.mgn import MGN
from partreid.models.parts import ReductionHead

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "mgn").rglob("*.yaml"))
NUM_CLASSES = 7


def bottleneck(cin: int, mid: int, cout: int, downsample: bool) -> int:
    """Parameters of a ResNet bottleneck: 1x1, 3x3, 1x1 convs (no bias) + BN (2 per channel)."""
    n = cin * mid + 9 * mid * mid + mid * cout + 2 * (mid + mid + cout)
    return n + (cin * cout + 2 * cout if downsample else 0)


def resnet50_parts():
    """(trunk = conv1 .. layer3[0], rest = layer3[1:] + layer4) parameter counts."""
    stem = 3 * 64 * 7 * 7 + 2 * 64
    layer1 = bottleneck(64, 64, 256, True) + 2 * bottleneck(256, 64, 256, False)
    layer2 = bottleneck(256, 128, 512, True) + 3 * bottleneck(512, 128, 512, False)
    layer3_0 = bottleneck(512, 256, 1024, True)
    layer3_rest = 5 * bottleneck(1024, 256, 1024, False)
    layer4 = bottleneck(1024, 512, 2048, True) + 2 * bottleneck(2048, 512, 2048, False)
    # 25,557,032 = torchvision's ResNet-50 with its 2048 -> 1000 fc
    assert (
        stem + layer1 + layer2 + layer3_0 + layer3_rest + layer4 + 2048 * 1000 + 1000 == 25_557_032
    )
    return stem + layer1 + layer2 + layer3_0, layer3_rest + layer4


def head(cin: int, num_classes: int) -> int:
    """1x1 conv cin -> 256 (no bias) + BN(256) + bias-free classifier 256 -> classes."""
    return cin * 256 + 2 * 256 + 256 * num_classes


def small_mgn(**kw) -> MGN:
    torch.manual_seed(0)
    return build_model("mgn", NUM_CLASSES, backbone=kw.pop("backbone", "mobilenet_v2"), **kw)


@pytest.mark.parametrize("size", [(384, 128), (200, 96)])
def test_test_feature_is_8_x_256(size):
    model = small_mgn().eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, *size)).shape == (2, 2048) == (2, model.feature_dim)
    heads = [m for m in model.modules() if isinstance(m, ReductionHead)]
    assert len(heads) == 8 and all(h.classifier.out_features == NUM_CLASSES for h in heads)


def test_train_outputs():
    model = small_mgn().train()
    out = model(torch.randn(4, 3, 128, 64))
    assert len(out["logits"]) == 8 and all(z.shape == (4, NUM_CLASSES) for z in out["logits"])
    assert [f.shape for f in out["triplet"]] == [(4, 1280)] * 3  # pooled global features
    assert out["mse"] == []
    model.triplet_on = "reduced"
    assert [f.shape for f in model(torch.randn(4, 3, 128, 64))["triplet"]] == [(4, 256)] * 3


def test_global_branch_downsamples_and_starts_from_the_same_weights():
    model = small_mgn().train()
    g, p2 = model.branches[0].layers.state_dict(), model.branches[1].layers.state_dict()
    assert g.keys() == p2.keys() and all(torch.equal(g[k], p2[k]) for k in g)
    assert g[next(iter(g))].data_ptr() != p2[next(iter(p2))].data_ptr()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps = model.activation_maps(torch.randn(1, 3, 128, 64))
    assert maps["branch_G"].shape == (1, 4, 2)  # stride 32
    assert maps["branch_P2"].shape == maps["branch_P3"].shape == (1, 8, 4)  # stride 16
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    same = small_mgn(global_last_stride=1).activation_maps(torch.randn(1, 3, 128, 64))
    assert same["branch_G"].shape == (1, 8, 4)


def test_global_branch_stride_against_a_given_backbone():
    """The global branch's stride is set against the backbone's own last stride."""
    bb = build_backbone("mobilenet_v2", last_stride=2)
    maps = MGN(bb, NUM_CLASSES, global_last_stride=1).activation_maps(torch.randn(1, 3, 128, 64))
    assert maps["branch_G"].shape == (1, 8, 4)  # stride 16
    assert maps["branch_P2"].shape == (1, 4, 2)  # the backbone's stride 32


def test_stripes_pool_their_rows(row_map):
    model = small_mgn().train()
    model.trunk = nn.Identity()
    for branch in model.branches:
        branch.layers = row_map(1280)
    shared = torch.zeros(2, 3, 13, 4)
    for branch, k in zip(model.branches[1:], (2, 3)):
        zg, zp = branch(shared)
        assert zg[0, 0].item() == 12 and zg[0, 1].item() == 0
        for z, rows in zip(zp, np.array_split(np.arange(13), k)):
            assert z[0, 0].item() == rows.max() and -z[0, 1].item() == rows.min()


def test_invalid_switch_names_the_key():
    with pytest.raises(ValueError, match="model.triplet_on"):
        small_mgn(triplet_on="logits")
    with pytest.raises(ValueError, match="model.parts"):
        small_mgn(parts=3)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_mgn(path):
    from partreid.config import load_config

    cfg = load_config(str(path))
    model_cfg = dict(cfg.model)
    assert model_cfg.pop("name") == "mgn"
    assert (model_cfg["last_stride"], model_cfg["global_last_stride"]) == (1, 2)
    model_cfg.update(backbone="mobilenet_v2", pretrained=False)
    model = build_model("mgn", NUM_CLASSES, **model_cfg).train()
    out = model(torch.randn(2, 3, 128, 64))
    assert (len(out["logits"]), len(out["triplet"]), len(out["mse"])) == (8, 3, 0)


def test_mgn_paper_recipe():
    from partreid.config import load_config

    cfg = load_config(str(REPO / "configs" / "mgn" / "market1501.yaml"))
    assert (cfg.input.height, cfg.input.width, cfg.sampler.p, cfg.sampler.k) == (384, 128, 4, 4)
    assert (cfg.optim.lr, cfg.optim.weight_decay) == (0.01, 5e-4)
    assert (cfg.schedule.epochs, cfg.schedule.milestones) == (80, [40, 60])
    assert {t["type"]: t.get("margin") for t in cfg.losses}["triplet"] == 1.2


def test_parameter_count_resnet50():
    nc, c = 751, 2048
    trunk, rest = resnet50_parts()
    expected = trunk + 3 * rest + 8 * head(c, nc)
    model = build_model("mgn", nc, backbone="resnet50")
    assert sum(p.numel() for p in model.parameters()) == expected
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 8
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 64)).shape == (1, 2048)
