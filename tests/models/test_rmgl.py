"""RMGL and the receptive partition: path equivalences, locality, shapes, configs."""

from __future__ import annotations

import glob
import os
import re

import pytest
import torch
from torch import nn

import partreid.models.rmgl  # noqa: F401  (registers "rmgl")
from partreid.models import build_model
from partreid.models.parts import stripe_bounds
from partreid.models.receptive import ReceptivePartition, run_on_stripes, split_stripes, stitch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
D = 256  # reduced feature size


@pytest.fixture(scope="module")
def rmgl18():
    """The default RMGL (Local-2 + Local-3, RP after res_conv2c, ABP) on ResNet-18, 7 classes."""
    torch.manual_seed(0)
    return build_model("rmgl", 7, backbone="resnet18")


def _tiny_net(bn: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(3, 6, 3, stride=2, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(6))
    layers += [nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- receptive partition
def test_one_stripe_equals_original_path_even_with_train_mode_bn():
    torch.manual_seed(0)
    rp = ReceptivePartition(_tiny_net(bn=True), k=1).train()
    whole, stripes = rp(torch.randn(3, 3, 12, 8))
    assert len(stripes) == 1
    assert torch.equal(whole, stripes[0])


@pytest.mark.parametrize("h, k", [(12, 3), (7, 3), (9, 2), (5, 5)])
def test_position_wise_layers_rp_equals_original_cut_into_stripes(h, k):
    torch.manual_seed(h * 10 + k)
    layers = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 5, 1))
    x = torch.randn(2, 4, h, 3)
    whole, stripes = ReceptivePartition(layers, k)(x)
    assert len(stripes) == k
    for (a, b), s in zip(stripe_bounds(h, k), stripes):
        torch.testing.assert_close(s, whole[:, :, a:b])
    torch.testing.assert_close(stitch(stripes), whole)


def test_stripes_are_stacked_along_the_batch_and_run_together():
    calls = []

    def spy(t):
        calls.append(tuple(t.shape))
        return t * 2

    x = torch.randn(2, 3, 7, 4)
    out = run_on_stripes(spy, x, 3)  # heights 3, 2, 2 -> two groups
    assert sorted(calls) == [(2, 3, 3, 4), (4, 3, 2, 4)]
    for s, ref in zip(out, split_stripes(x, 3)):
        torch.testing.assert_close(s, ref * 2)
    calls.clear()
    run_on_stripes(spy, torch.randn(2, 3, 6, 4), 3)
    assert calls == [(6, 3, 2, 4)]  # n*K x c x h/K x w
    with pytest.raises(ValueError, match="height 2 into 3"):
        split_stripes(torch.randn(1, 1, 2, 2), 3)


def _grad_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows of a N x C x H x W gradient that hold any non-zero value."""
    return (t.grad.abs().sum(dim=(0, 1, 3)) > 0).nonzero().flatten()


def _feature_slice(model, name):
    i = model.feature_names.index(name)
    return slice(i * D, (i + 1) * D)


def test_ip_rp_stripe_sees_only_its_image_stripe():
    torch.manual_seed(0)
    model = build_model("rmgl", 5, backbone="resnet18", stripes=[2], partition_depth="input").eval()
    x = torch.randn(1, 3, 64, 32, requires_grad=True)
    f = model(x)
    f[0, _feature_slice(model, "L2.rp.s2")].sum().backward()
    rows = _grad_rows(x)
    assert rows.min() >= 32 and rows.numel() > 0
    x.grad = None
    f = model(x)
    f[0, _feature_slice(model, "L2.orig.s2")].sum().backward()
    assert _grad_rows(x).min() < 32  # the original path's stripe reaches above it


@pytest.mark.parametrize("depth, hooked", [("res3", "trunk"), ("res4", "branch")])
def test_rp_stripe_sees_only_its_stripe_of_the_partitioned_map(depth, hooked):
    torch.manual_seed(0)
    model = build_model(
        "rmgl", 5, backbone="resnet18", stripes=[3], partition_depth=depth, abp=False
    ).eval()
    maps = []

    def keep(_module, _inp, out):
        out.retain_grad()
        maps.append(out)

    # res3: the map is the trunk's output; res4: the output of layer2 (= layer2's last block).
    module = model.trunk if hooked == "trunk" else model.branches[0][1]
    module.register_forward_hook(keep)
    x = torch.randn(1, 3, 96, 32)
    f = model(x)
    m = maps[0]
    h = m.shape[2]
    (a, b) = stripe_bounds(h, 3)[1]
    f[0, _feature_slice(model, "L3.rp.s2")].sum().backward(retain_graph=True)
    rows = _grad_rows(m)
    assert rows.numel() > 0 and rows.min() >= a and rows.max() < b
    m.grad = None
    f[0, _feature_slice(model, "L3.orig.s2")].sum().backward()
    rows = _grad_rows(m)
    assert rows.min() < a or rows.max() >= b  # the original path is not restricted


# ---------------------------------------------------------------- RMGL outputs
def _check_outputs(model, n_feats, triplet_dims):
    x = torch.randn(4, 3, 64, 32)
    out = model.train()(x)
    assert set(out) == {"logits", "triplet", "mse"} and out["mse"] == []
    assert len(out["logits"]) == n_feats == len(model.feature_names)
    assert all(lg.shape == (4, 7) for lg in out["logits"])
    assert [t.shape[1] for t in out["triplet"]] == triplet_dims
    model.eval()
    with torch.no_grad():
        f = model(x[:2])
    assert f.shape == (2, n_feats * D) and model.feature_dim == n_feats * D


def test_rmgl_outputs_14_logits_2_triplets_3584_dims(rmgl18):
    _check_outputs(rmgl18, 14, [6 * D, 8 * D])  # 2 x [(1+2) + (1+3)] features of 256


@pytest.mark.parametrize(
    "opts, n_feats, triplet_dims",
    [
        ({"stripes": [1, 2, 3]}, 15, [D, 6 * D, 8 * D]),  # RMGL(1+2+3)
        ({"stripes": [2, 3, 4]}, 24, [6 * D, 8 * D, 10 * D]),  # RMGL(2+3+4)
        ({"only_rp": True, "abp": False}, 7, [3 * D, 4 * D]),  # 2+3-stripe only RP
        ({"stripes": [2], "rp": False}, 3, [3 * D]),  # 2-stripe baseline
        ({"rp_global": "none"}, 12, [5 * D, 7 * D]),
        ({"stripes": [2], "triplet_on": "pooled"}, 6, [6 * 512]),  # resnet18: C = 512
    ],
)
def test_output_counts_and_dimensions(opts, n_feats, triplet_dims):
    torch.manual_seed(0)
    _check_outputs(build_model("rmgl", 7, backbone="resnet18", **opts), n_feats, triplet_dims)


def test_gradients_reach_trunk_and_every_branch(rmgl18):
    model = rmgl18.train()
    model.zero_grad(set_to_none=True)
    out = model(torch.randn(4, 3, 64, 32))
    loss = sum(lg.logsumexp(1).mean() for lg in out["logits"]) + sum(
        t.pow(2).mean() for t in out["triplet"]
    )
    loss.backward()
    for part in [model.trunk, *model.branches, *model.heads]:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    model.zero_grad(set_to_none=True)


def test_eval_feature_is_the_reduced_pooled_features_in_name_order(rmgl18):
    model = rmgl18.eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        f = model(x)
        pooled = model.pooled_features(x)
        ref = torch.cat(
            [
                head.reduction(pooled[n][:, :, None, None]).flatten(1)
                for n, head in zip(model.feature_names, model.heads)
            ],
            dim=1,
        )
    torch.testing.assert_close(f, ref)
    # RP global = GMP of the stitched stripe outputs = max of the stripe maxima.
    torch.testing.assert_close(
        pooled["L3.rp.g"], torch.stack([pooled[f"L3.rp.s{i}"] for i in (1, 2, 3)]).amax(0)
    )


def test_abp_replaces_only_the_original_stripes_at_test_time(rmgl18):
    model = rmgl18.eval()
    assert model.abp
    x = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        with_abp = model.pooled_features(x)
        model.abp = False
        uniform = model.pooled_features(x)
        model.train()  # training never uses ABP
        train_uniform = model.pooled_features(x)
        model.abp = True
        train_abp = model.pooled_features(x)
    for name in model.feature_names:
        if ".orig.s" in name:
            assert not torch.allclose(with_abp[name], uniform[name]), name
        else:
            torch.testing.assert_close(with_abp[name], uniform[name])
        torch.testing.assert_close(train_abp[name], train_uniform[name])


def test_output_partition_rp_equals_original_stripes():
    torch.manual_seed(0)
    model = build_model(
        "rmgl", 3, backbone="resnet18", stripes=[3], partition_depth="output", abp=False
    ).eval()
    with torch.no_grad():
        p = model.pooled_features(torch.randn(2, 3, 96, 32))
    for i in (1, 2, 3):
        torch.testing.assert_close(p[f"L3.rp.s{i}"], p[f"L3.orig.s{i}"])
    torch.testing.assert_close(p["L3.rp.g"], p["L3.orig.g"])


def test_maps_and_abp_borders_at_paper_size(rmgl18):
    model = rmgl18.eval()
    x = torch.randn(1, 3, 384, 128)
    maps = model.activation_maps(x)
    assert sorted(maps) == ["O-2", "O-3", "RP-2", "RP-3"]
    assert all(m.shape == (1, 24, 8) for m in maps.values())  # 384x128, last stride 1
    borders = model.abp_borders(x)
    assert sorted(borders) == ["O-2", "O-3"]
    for k, b in ((2, borders["O-2"]), (3, borders["O-3"])):
        assert b.shape == (1, k + 1) and b[0, 0] == 0 and b[0, -1] == 384
        assert (b.diff(dim=1) >= 16).all() and (b % 16 == 0).all()  # whole feature rows
    rows = model.abp_borders(x, image_rows=False)
    torch.testing.assert_close(rows["O-3"] * 16, borders["O-3"])


@pytest.mark.slow
def test_resnet50_feature_is_3584_at_384x128():
    model = build_model("rmgl", 751, backbone="resnet50").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 384, 128)).shape == (1, 3584)


def test_option_errors_name_the_key():
    with pytest.raises(ValueError, match="model.partition_depth"):
        build_model("rmgl", 3, backbone="resnet18", partition_depth="res9")
    with pytest.raises(ValueError, match="model.only_rp=true .* model.rp=true"):
        build_model("rmgl", 3, backbone="resnet18", rp=False, only_rp=True)
    with pytest.raises(ValueError, match="model.abp=false"):
        build_model("rmgl", 3, backbone="resnet18", only_rp=True)
    with pytest.raises(ValueError, match="model.stripes"):
        build_model("rmgl", 3, backbone="resnet18", stripes=[0, 2])
    with pytest.raises(ValueError, match="model.rp_global"):
        build_model("rmgl", 3, backbone="resnet18", rp_global="mean")


def test_partition_depth_names_resolve_to_backbone_positions():
    # resnet18 blocks: stem, layer1 x2, layer2 x2, layer3 x2, layer4 x2 (9 in all).
    expected = {
        "input": 0,
        "ip": 0,
        "res2": 1,
        "res3": 3,
        "res_conv2c": 3,
        "res4": 5,
        "res5": 7,
        "output": 9,
        "OP": 9,
    }
    with torch.device("meta"):
        for depth, idx in expected.items():
            assert build_model("rmgl", 3, backbone="resnet18", partition_depth=depth)._depth == idx


# ---------------------------------------------------------------- configs
def _load(path):
    from partreid.config import load_config

    return load_config(path)


def _expected_features(model_cfg):
    """Independent count: K = 1 -> 1; else (1 + K) per path present (RP global: stitch)."""
    n = 0
    for k in model_cfg.get("stripes", [2, 3]):
        if k == 1:
            n += 1
            continue
        if not model_cfg.get("only_rp", False):
            n += 1 + k
        if model_cfg.get("rp", True):
            n += 1 + k
    return n


CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "rmgl", "**", "*.yaml"), recursive=True))
STRIPES = {"s2": [2], "s3": [3], "s23": [2, 3], "s6": [6]}
AUG_KEYS = {
    "rcj": ["color_jitter"],
    "rc": ["random_crop"],
    "re": ["random_erasing"],
    "rcrs": ["rcrs"],
    "rsa": ["rsa"],
    "rsa_re": ["rsa", "random_erasing"],
}
DEPTHS = {
    "ip": "input",
    "op": "output",
    "res2": "res2",
    "res3": "res3",
    "res4": "res4",
    "res5": "res5",
}


def _check_named_settings(name, cfg):
    """Each ablation file's name says what it sets; check the merged config does that."""
    m, t = cfg.model, cfg.transforms
    if name.startswith("table5_"):
        body = name[len("table5_") :]
        if body.startswith("rmgl_"):
            assert m["stripes"] == [int(v) for v in body[5:].split("_")]
            assert m["rp"] and m["abp"] and t.rsa > 0
            return
        s, _, rest = body.partition("_")
        tokens = set(rest.split("_"))
        assert m["stripes"] == STRIPES[s]
        assert m["rp"] == ("rp" in tokens)
        assert m["only_rp"] == ("only" in tokens)
        assert m["abp"] == ("abp" in tokens)
        assert (t.rsa > 0) == ("rsa" in tokens)
    elif name.startswith("table6_"):
        s, _, aug = name[len("table6_") :].partition("_")
        assert m["stripes"] == STRIPES[s] and not m["rp"] and not m["abp"]
        on = {
            k
            for k in ("color_jitter", "random_crop", "random_erasing", "rcrs", "rsa")
            if getattr(t, k) > 0
        }
        assert on == set(AUG_KEYS[aug])
    elif name.startswith("fig7_"):
        _, key, value = name.split("_")
        field = {"p": "rsa", "rc": "rsa_rc_min", "rw": "rsa_rw_min"}[key]
        assert getattr(t, field) == float(value)
    elif name.startswith("fig8_"):
        assert (
            m["stripes"] == [int(name[len("fig8_s") :])] and m["rp"] and t.rsa > 0 and not m["abp"]
        )
    elif name.startswith("fig9_"):
        _, depth, s = name.split("_")
        assert m["stripes"] == [int(s[1:])] and m["rp"]
        assert m["partition_depth"] == DEPTHS[depth]
    elif name.startswith("fig10_"):
        margin = None if name == "fig10_soft_margin" else float(name.rsplit("_", 1)[1])
        triplet = [l for l in cfg.losses if l["type"] == "triplet"]
        assert len(triplet) == 1 and triplet[0]["margin"] == margin
    elif name.startswith("fig11_"):
        assert cfg.optim.weight_decay == float(name.rsplit("_", 1)[1])
    elif name == "baseline_s6":
        assert m["stripes"] == [6] and not m["rp"] and not m["abp"]
    elif name == "rerank":
        assert cfg.eval.rerank
    else:
        raise AssertionError(f"ablation {name} has no expectation in this test")


def test_every_rmgl_config_loads_and_builds_what_it_names():
    assert len(CONFIGS) > 60, CONFIGS
    built = {}
    for path in CONFIGS:
        cfg = _load(path)
        name = os.path.splitext(os.path.basename(path))[0]
        model_cfg = dict(cfg.model)
        assert model_cfg.pop("name") == "rmgl", path
        if os.path.basename(os.path.dirname(path)) == "ablations":
            _check_named_settings(name, cfg)
            model_cfg["backbone"] = "resnet18"  # the structure does not depend on the backbone
        else:  # a recipe: the paper's training settings
            assert cfg.sampler.p * cfg.sampler.k == (48 if "cpu" not in name else 32), path
            assert [l["margin"] for l in cfg.losses if l["type"] == "triplet"] == [0.6]
            assert cfg.schedule.warmup == "exp"
        model_cfg["pretrained"] = False
        key = repr(sorted(model_cfg.items()))
        if key not in built:
            with torch.device("meta"):  # structure only: no weights allocated
                built[key] = build_model("rmgl", 10, **model_cfg)
        model = built[key]
        assert len(model.feature_names) == _expected_features(cfg.model), path


def test_recipe_lr_mult_regex_selects_exactly_reductions_and_classifiers():
    cfg = _load(os.path.join(REPO, "configs", "rmgl", "market1501.yaml"))
    assert cfg.optim.lr_mult == {"reduction|classifier": 10.0}
    assert cfg.optim.weight_decay == 1e-3 and cfg.schedule.milestones == [30, 50]
    assert cfg.transforms.rsa_pc == 0.5 and cfg.transforms.rsa_rc_min == 0.7
    with torch.device("meta"):
        model = build_model("rmgl", 10, backbone="resnet18")
    pattern = re.compile(next(iter(cfg.optim.lr_mult)))
    matched = {n for n, _ in model.named_parameters() if pattern.search(n)}
    head_params = {f"heads.{n}" for n, _ in model.heads.named_parameters()}
    assert matched == head_params and matched
