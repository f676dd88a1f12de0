"""CGPN: shapes against the paper, stripe windows, MSE supervision, ablation configs, sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import partreid.models.cgpn  # noqa: F401  (registers "cgpn")
from partreid.losses import LossComputer
from partreid.models import build_model
from partreid.models.cgpn import CGPN, local_windows, window_lengths
from partreid.models.parts import ReductionHead

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "cgpn").rglob("*.yaml"))
NUM_CLASSES = 7


def small_cgpn(**kw) -> CGPN:
    torch.manual_seed(0)
    return build_model("cgpn", NUM_CLASSES, backbone=kw.pop("backbone", "mobilenet_v2"), **kw)


class RowBroadcast(nn.Module):
    """Makes a map constant along its height (each column holds its max over rows)."""

    def forward(self, x):
        return x.amax(2, keepdim=True).expand_as(x)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("size", [(384, 128), (256, 128), (200, 96)])
def test_test_feature_is_12_x_256_at_any_input_size(size):
    model = small_cgpn().eval()
    with torch.no_grad():
        feat = model(torch.randn(2, 3, *size))
    assert feat.shape == (2, 3072) == (2, model.feature_dim)
    assert len(model.feature_names) == 12
    heads = [m for m in model.modules() if isinstance(m, ReductionHead)]
    assert len(heads) == 12
    assert all(h.classifier.out_features == NUM_CLASSES for h in heads)
    assert all(h.out_dim == 256 for h in heads)


def test_train_outputs_counts_and_shapes():
    model = small_cgpn().train()
    c = model.channels  # 1280 for mobilenet_v2
    out = model(torch.randn(4, 3, 128, 64))
    assert sorted(out) == ["logits", "mse", "triplet"]
    assert len(out["logits"]) == 12 and all(z.shape == (4, NUM_CLASSES) for z in out["logits"])
    # triplet on the pooled global features fg_i = [fg1_i, fg2_i] (2c each)
    assert len(out["triplet"]) == 3 and all(f.shape == (4, 2 * c) for f in out["triplet"])
    # M=2 pairs per branch x 3 branches, each (fg_p_i, fgl_p_i) of c dims
    assert len(out["mse"]) == 6
    assert all(p.shape == t.shape == (4, c) for p, t in out["mse"])
    # the first half of fg_i is fg1_i: the first MSE prediction of that branch
    assert torch.equal(out["triplet"][0][:, :c], out["mse"][0][0])
    assert torch.equal(out["triplet"][0][:, c:], out["mse"][1][0])

    model.triplet_on = "reduced"
    assert [f.shape for f in model(torch.randn(4, 3, 128, 64))["triplet"]] == [(4, 256)] * 3


@pytest.fixture(scope="module")
def cgpn50() -> CGPN:
    """The paper's CGPN on ResNet-50 (random weights), 751 classes (Market-1501)."""
    torch.manual_seed(0)
    return build_model("cgpn", 751, backbone="resnet50")


def test_resnet50_forward_small_batch(cgpn50):
    model = cgpn50.train()
    out = model(torch.randn(2, 3, 128, 64))
    assert [f.shape for f in out["triplet"]] == [(2, 4096)] * 3
    assert [p.shape for p, _ in out["mse"]] == [(2, 2048)] * 6
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 64)).shape == (1, 3072)


def test_branches_are_independent_copies_of_the_same_weights():
    model = small_cgpn()
    a, b = model.branches[0].layers, model.branches[2].layers
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb) and pa.data_ptr() != pb.data_ptr()


def test_activation_maps_per_branch_and_part():
    model = small_cgpn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maps = model.activation_maps(torch.randn(2, 3, 128, 64))
    expected = {f"branch{i}.{p}" for i in (1, 2, 3) for p in ("global1", "global2", "local")}
    assert set(maps) == expected
    assert all(m.shape == (2, 8, 4) and (m >= 0).all() for m in maps.values())
    # drawing a figure changes nothing: same mode, same BN running statistics
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the local map is T_i itself; with identity 1x1 convs the global maps equal it at init
    torch.testing.assert_close(maps["branch1.global1"], maps["branch1.local"])


# --------------------------------------------------------------------------- stripe windows


def reference_windows(k: int, mode: str):
    """The paper's windows, written out: K=2: 1|2; K=3: 1-2, 2-3; K=4: 1-2, 2-3, 3-4, 1-3, 2-4;
    K>4 by the stated rule K/2 <= L < K. Stripe indices 0-based, end exclusive."""
    if mode == "fine":
        return [(s, s + 1) for s in range(k)]
    paper = {2: [(0, 1), (1, 2)], 3: [(0, 2), (1, 3)], 4: [(0, 2), (1, 3), (2, 4), (0, 3), (1, 4)]}
    if k in paper:
        return paper[k]
    return [(s, s + L) for L in range(1, k) if k <= 2 * L for s in range(k - L + 1)]


def test_window_counts_follow_the_rule():
    assert [len(local_windows(k)) for k in (1, 2, 3, 4, 5, 6)] == [0, 2, 2, 5, 5, 9]
    assert window_lengths(4) == [2, 3] and window_lengths(6) == [3, 4, 5]
    assert sum(len(local_windows(k)) for k in (2, 3, 4)) == 9
    assert sum(len(local_windows(k, "fine")) for k in (2, 3, 4)) == 9


@pytest.mark.parametrize("mode", ["coarse", "fine"])
@pytest.mark.parametrize("height", [24, 13])
def test_windows_pool_exactly_their_rows(mode, height, row_map):
    """Through the full forward: every local feature is the GMP over the rows its window covers."""
    ks = [2, 3, 4, 5, 6]
    model = small_cgpn(
        stripes=ks,
        global_part=False,
        local_part=mode,
        triplet_features="local",
        triplet_on="pooled",
    ).train()
    model.trunk = nn.Identity()
    for branch in model.branches:
        branch.layers = row_map(model.channels)
    out = model(torch.zeros(2, 3, height, 5))
    feats = iter(out["triplet"])
    rows = np.arange(height)
    for k in ks:
        stripes = np.array_split(rows, k)  # remainder rows go to the first stripes
        for a, b in reference_windows(k, mode):
            covered = np.concatenate(stripes[a:b])
            f = next(feats)
            assert f[0, 0].item() == covered.max(), (k, a, b)  # channel 0: last row
            assert -f[0, 1].item() == covered.min(), (k, a, b)  # channel 1: first row
            assert torch.equal(f[0], f[1])
    assert next(feats, None) is None


def test_global_targets_are_gmp_of_m_stripes(row_map):
    for m in (2, 3, 4, 8):
        model = small_cgpn(stripes=[2], local_part="none", global_parts=m).train()
        model.trunk = nn.Identity()
        model.branches[0].layers = row_map(model.channels)
        out = model(torch.zeros(2, 3, 24, 4))
        assert len(out["mse"]) == m
        for (_, target), rows in zip(out["mse"], np.array_split(np.arange(24), m)):
            assert target[0, 0].item() == rows.max() and -target[0, 1].item() == rows.min()


def test_too_small_input_gives_a_clear_error():
    model = small_cgpn(stripes=[6]).eval()
    with pytest.raises(ValueError, match="too short for 6 stripes"):
        model(torch.randn(1, 3, 64, 32))  # 4-row map


# --------------------------------------------------------------------------- MSE supervision


def config_mse_terms():
    """The MSE term of the paper recipe's config, with both reductions."""
    from partreid.config import load_config

    cfg = load_config(str(REPO / "configs" / "cgpn" / "market1501.yaml"))
    term = next(t for t in cfg.losses if t["type"] == "mse")
    return [LossComputer([dict(term, reduction=r)]) for r in ("sum", "mean")]


@pytest.mark.parametrize("init", ["kaiming", "identity"])
def test_mse_is_zero_when_convs_reproduce_the_part_features(init):
    model = small_cgpn(global_conv_init=init).train()
    c = model.channels
    with torch.no_grad():
        for branch in model.branches:
            for conv in branch.global_convs:
                conv.weight.copy_(torch.eye(c).view(c, c, 1, 1))
    x, y = torch.randn(4, 3, 128, 64), torch.tensor([0, 0, 1, 1])
    losses = config_mse_terms()
    # Control: on a real map GMP(T) exceeds some stripe maxima, so the MSE is positive.
    out = model(x)
    assert all(lc(out, y)[0].item() > 0 for lc in losses)
    # A map constant along its height: every stripe has the global max, so fg_p_i == fgl_p_i.
    for branch in model.branches:
        branch.layers = nn.Sequential(branch.layers, RowBroadcast())
    out = model(x)
    assert len(out["mse"]) == 6
    for lc in losses:
        assert lc(out, y)[0].item() == pytest.approx(0.0, abs=1e-10)


def test_mse_gradient_reaches_trunk_through_target_only_when_not_detached():
    model = small_cgpn(global_conv_init="kaiming").train()
    x = torch.randn(4, 3, 64, 32)
    w = next(model.trunk.parameters())

    def grad(loss_of_pairs):
        model.zero_grad()
        out = model(x)
        loss = loss_of_pairs(out["mse"])
        if not loss.requires_grad:
            return None
        loss.backward()
        return w.grad.clone()

    def full(pairs):
        return sum((p - t).pow(2).sum() for p, t in pairs)

    def target_side(pairs):
        return sum((p.detach() - t).pow(2).sum() for p, t in pairs)

    assert model.detach_target is False  # default: the literal formula
    g_target = grad(target_side)
    assert g_target is not None and g_target.abs().sum() > 0
    g_full_attached = grad(full)

    model.detach_target = True
    out = model(x)
    assert all(not t.requires_grad and p.requires_grad for p, t in out["mse"])
    assert grad(target_side) is None  # no path from the targets
    g_full_detached = grad(full)
    # full gradient = prediction side + target side; detaching removes exactly the target side
    diff = g_full_attached - g_full_detached
    assert (diff - g_target).norm() <= 1e-4 * g_target.norm()


# --------------------------------------------------------------------------- configs

# file stem -> (features, global features, MSE pairs, triplet features)
EXPECTED = {
    "market1501": (12, 3, 6, 3),
    "dukemtmc": (12, 3, 6, 3),
    "cuhk03_labeled": (12, 3, 6, 3),
    "occluded_duke": (12, 3, 6, 3),
    "cpu_mobilenet": (12, 3, 6, 3),
    "demo": (12, 3, 6, 3),
    "cgpn1_global_only": (3, 3, 6, 3),
    "cgpn2_fine_stripes": (12, 3, 6, 3),
    "cgpn3_local_only": (9, 0, 0, 9),
    "cgpn4_unsupervised_global": (12, 3, 0, 3),
    "branch1": (3, 1, 2, 1),
    "branch2": (3, 1, 2, 1),
    "branch3": (6, 1, 2, 1),
    "branch1_2": (6, 2, 4, 2),
    "branch1_3": (9, 2, 4, 2),
    "branch2_3": (9, 2, 4, 2),
    "plus_branch4": (18, 4, 8, 4),
    "plus_branch4_5": (28, 5, 10, 5),
    "branch1_global_m2": (1, 1, 2, 1),
    "branch1_global_m3": (1, 1, 3, 1),
    "branch1_global_m4": (1, 1, 4, 1),
    "branch1_global_m8": (1, 1, 8, 1),
}


def test_every_config_is_listed():
    assert {p.stem for p in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_builds_the_model_it_names(path):
    from partreid.config import load_config

    cfg = load_config(str(path))
    model_cfg = dict(cfg.model)
    assert model_cfg.pop("name") == "cgpn"
    assert model_cfg["backbone"] in ("resnet50", "mobilenet_v2", "resnet18")
    # The architecture does not depend on the backbone's weights: build a small one.
    model_cfg.update(backbone="mobilenet_v2", pretrained=False)
    torch.manual_seed(0)
    model = build_model("cgpn", NUM_CLASSES, **model_cfg).train()
    n_feat, n_global, n_mse, n_triplet = EXPECTED[path.stem]
    out = model(torch.randn(2, 3, 128, 16))  # 8-row map: enough for K <= 6 and M <= 8
    assert len(model.feature_names) == len(out["logits"]) == n_feat
    assert len(model.global_names) == n_global
    assert len(out["mse"]) == n_mse
    assert len(out["triplet"]) == n_triplet
    if path.stem == "cgpn2_fine_stripes":
        assert [b.lengths for b in model.branches] == [[1], [1], [1]]
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 16)).shape == (1, 256 * n_feat)


def test_paper_recipe_values():
    from partreid.config import load_config

    cfg = load_config(str(REPO / "configs" / "cgpn" / "market1501.yaml"))
    assert (cfg.input.height, cfg.input.width) == (384, 128)
    assert (cfg.sampler.p, cfg.sampler.k) == (8, 8)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.01, 0.9, 5e-4)
    assert (cfg.schedule.milestones, cfg.schedule.epochs, cfg.schedule.gamma) == (
        [60, 80],
        240,
        0.1,
    )
    assert {t["type"]: t.get("margin") for t in cfg.losses}["triplet"] == 1.2
    assert {t["type"] for t in cfg.losses} == {"cross_entropy", "triplet", "mse"}
    assert cfg.transforms.flip == 0.5 and cfg.eval.flip
    cpu = load_config(str(REPO / "configs" / "cgpn" / "cpu_mobilenet.yaml"))
    assert cpu.model["backbone"] == "mobilenet_v2"
    assert cpu.model["pretrained"] == "../shared/weights/mobilenetv2_imagenet.pth"
    assert cpu.data.name == "cuhk03" and cpu.data.options["variant"] == "detected"


def test_invalid_switches_name_the_key():
    with pytest.raises(ValueError, match="model.local_part"):
        small_cgpn(local_part="medium")
    with pytest.raises(ValueError, match="model.triplet_on"):
        small_cgpn(triplet_on="logits")
    with pytest.raises(ValueError, match="model.triplet_features"):
        small_cgpn(global_part=False)  # CGPN-3 needs triplet_features=local
    with pytest.raises(ValueError, match="no features"):
        small_cgpn(global_part=False, local_part="none", triplet_features="none")
    with pytest.raises(ValueError, match="model.stripes"):
        small_cgpn(stripes=[])
    with pytest.raises(ValueError, match="model.stripes"):
        small_cgpn(stripes=3)


# --------------------------------------------------------------------------- parameter count


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
    # cross-check the formula against torchvision's ResNet-50 (+ its 2048 -> 1000 fc)
    tv = sum(p.numel() for p in torchvision.models.resnet50(weights=None).parameters())
    assert stem + layer1 + layer2 + layer3_0 + layer3_rest + layer4 + 2048 * 1000 + 1000 == tv
    return stem + layer1 + layer2 + layer3_0, layer3_rest + layer4


def head(cin: int, num_classes: int) -> int:
    """1x1 conv cin -> 256 (no bias) + BN(256) + bias-free classifier 256 -> classes."""
    return cin * 256 + 2 * 256 + 256 * num_classes


def test_parameter_count_resnet50(cgpn50):
    nc, c, m = 751, 2048, 2
    trunk, rest = resnet50_parts()
    branch_extra = m * c * c + head(m * c, nc)  # M 1x1 convs c -> c + global head
    locals_ = (2 + 2 + 5) * head(c, nc)
    expected = trunk + 3 * (rest + branch_extra) + locals_
    model = cgpn50
    assert sum(p.numel() for p in model.parameters()) == expected
    assert sum(isinstance(x, nn.Linear) for x in model.modules()) == 12
