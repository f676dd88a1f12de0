import os
from pathlib import Path

import pytest
import torch

from partreid.models import build_backbone, build_model
from partreid.models.registry import _get, list_models, model_options

SHARED = Path(
    os.environ.get("PARTREID_SHARED", Path(__file__).resolve().parents[2].parent / "shared")
)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("last_stride", [1, 2])
def test_stages_compose_and_strides(name, last_stride):
    bb = build_backbone(name, last_stride=last_stride).eval()
    x = torch.randn(2, 3, 128, 64)
    y = bb(x)
    assert y.shape == (2, bb.out_channels, 128 // bb.strides[-1], 64 // bb.strides[-1])
    assert bb.strides[-1] == (16 if last_stride == 1 else 32)
    assert bb.last_stride == last_stride
    for cut in ["input", "stem", "res_conv2c", "res_conv4_1", "stage3", "res_conv5"]:
        trunk, rest = bb.split(cut)
        assert torch.allclose(rest(trunk(x)), y, atol=1e-5), cut
        assert bb.channels_at(cut) == trunk(x).shape[1]


def test_resnet50_cuts_match_paper_names():
    bb = build_backbone("resnet50")
    trunk, rest = bb.split("res_conv4_1")
    # conv1..layer3[0]: stem (4 modules) + 3 + 4 + 1 blocks; rest: layer3[1:] (5) + layer4 (3)
    assert len(trunk) == 1 + 3 + 4 + 1 and len(rest) == 5 + 3
    assert bb.channels_at("res_conv4_1") == 1024 and bb.channels_at("res_conv2c") == 256
    with pytest.raises(ValueError, match="unknown cut point"):
        bb.split("layer9")


def test_unknown_backbone_and_missing_weights_file_messages(tmp_path):
    with pytest.raises(ValueError, match="resnet50"):
        build_backbone("vgg16")
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        build_backbone("resnet18", pretrained=str(tmp_path / "nope.pth"))


def test_weights_file_of_another_architecture_is_rejected(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(build_backbone("resnet18").state_dict(), path)  # our layout, not torchvision's
    with pytest.raises(ValueError, match="does not fit"):
        build_backbone("resnet34", pretrained=str(path))


def test_torchvision_state_dict_file_loads(tmp_path):
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    bb = build_backbone("resnet18", pretrained=str(path))
    assert torch.equal(bb.stem[0].weight, net.conv1.weight)
    assert torch.equal(bb.stages[3][1].conv2.weight, net.layer4[1].conv2.weight)


@pytest.mark.skipif(
    not (SHARED / "weights" / "mobilenetv2_imagenet.pth").exists(),
    reason="../shared/weights is absent",
)
def test_shared_imagenet_mobilenet_loads():
    path = SHARED / "weights" / "mobilenetv2_imagenet.pth"
    bb = build_backbone("mobilenet_v2", pretrained=str(path))
    state = torch.load(path, map_location="cpu")
    assert torch.equal(bb.stem[0][0].weight, state["features.0.0.weight"])


def test_registry_validates_options():
    assert "backbone" in model_options("bot")
    with pytest.raises(KeyError, match="valid options"):
        build_model("bot", 5, backbone="resnet18", bogus=1)
    with pytest.raises(KeyError, match="registered models"):
        build_model("nonexistent", 5)


def test_the_backbone_options_come_first_with_build_backbones_defaults():
    for name in list_models():
        first = list(model_options(name).items())[:3]
        assert first == [("backbone", "resnet50"), ("pretrained", False), ("last_stride", 1)]


@pytest.mark.parametrize("name", ["bot", "cgpn", "mgn", "pcb", "rmgl"])
def test_build_model_builds_the_backbone_and_gives_it_to_the_model(name):
    torch.manual_seed(0)
    built = build_model(name, 5, backbone="resnet18", last_stride=2)
    torch.manual_seed(0)
    given = _get(name)(build_backbone("resnet18", last_stride=2), 5)
    a, b = built.state_dict(), given.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "name, key, valid",
    [
        ("bot", "test_feature", ["after_bn", "before_bn"]),
        ("mgn", "triplet_on", ["pooled", "reduced"]),
        ("pcb", "pooling", ["avg", "max"]),
        ("cgpn", "local_part", ["coarse", "fine", "none"]),
        ("rmgl", "rp_global", ["stitch", "none"]),
    ],
)
def test_a_choice_option_names_its_key_and_the_valid_values(name, key, valid):
    with pytest.raises(ValueError) as err:
        build_model(name, 5, backbone="resnet18", **{key: "bogus"})
    assert str(err.value) == f"model.{key} must be one of {valid}, got 'bogus'"


def test_bot_outputs_and_feature():
    m = build_model("bot", 7, backbone="resnet18")
    out = m(torch.randn(4, 3, 128, 64))
    assert out["logits"][0].shape == (4, 7) and out["triplet"][0].shape == (4, 512)
    m.eval()
    assert m(torch.randn(2, 3, 128, 64)).shape == (2, 512)
