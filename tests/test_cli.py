"""The command line as a user meets it: clear messages for bad inputs."""

import json
import shutil
from pathlib import Path

import pytest

from partreid.cli import _eval_overrides, build_parser, main

BOT = str(Path(__file__).resolve().parents[1] / "configs" / "bot" / "market1501.yaml")


def _run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err


def test_unknown_config_key(capsys, tiny_overrides):
    code, err = _run(capsys, "train", "-c", BOT, "optim.learning_rate=1")
    assert code == 2 and "optim.learning_rate" in err and "valid keys of optim" in err


def test_missing_data_folder(capsys, tiny_overrides, tmp_path):
    missing = tmp_path / "nowhere"
    code, err = _run(
        capsys, "train", "-c", BOT, f"data.root={missing}", f"output_dir={tmp_path / 'run'}"
    )
    assert code == 2 and str(missing) in err


def test_corrupt_jpeg_is_named(capsys, tiny_synthetic, tiny_overrides, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_synthetic, root)
    bad = sorted((root / "bounding_box_train").glob("*.jpg"))[3]
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    over = [o for o in tiny_overrides if not o.startswith("data.root")]
    code, err = _run(
        capsys, "train", "-c", BOT, *over, f"data.root={root}", "data.verify_images=true"
    )
    assert code == 2 and "1 of" in err and bad.name in err


def test_checkpoint_of_another_model(capsys, tiny_overrides, tmp_path):
    from partreid.checkpoint import model_meta, save_checkpoint
    from partreid.config import load_config
    from partreid.models import build_model

    ckpt = tmp_path / "other.pth"
    m = build_model("bot", 8, backbone="resnet34")
    save_checkpoint(
        str(ckpt),
        m.state_dict(),
        model_meta(load_config(None, ["model.name=bot", "model.backbone=resnet34"]), m, 8),
    )
    code, err = _run(capsys, "eval", "-c", BOT, "--checkpoint", str(ckpt), *tiny_overrides)
    assert code == 2 and "holds model 'bot' (backbone 'resnet34')" in err and "resnet18" in err


def test_missing_checkpoint_and_weights_file(capsys, tiny_overrides, tmp_path):
    code, err = _run(
        capsys, "eval", "-c", BOT, "--checkpoint", str(tmp_path / "none.pth"), *tiny_overrides
    )
    assert code == 2 and "checkpoint not found" in err
    code, err = _run(
        capsys, "train", "-c", BOT, *tiny_overrides, f"model.pretrained={tmp_path / 'w.pth'}"
    )
    assert code == 2 and "pretrained weights file not found" in err


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "bot:" in out and "market1501" in out


def test_eval_test_sets_become_data_test_entries():
    args = build_parser().parse_args(
        ["eval", "--checkpoint", "c.pth", "--test", "viper=/d/viper", "--test", "market1501=/m"]
    )
    (over,) = _eval_overrides(args)
    assert over.startswith("data.test=")
    assert json.loads(over[len("data.test=") :]) == [
        {
            "name": "manifest",
            "root": "/d/viper",
            "label": "viper",
            "options": {"test_fraction": 0.5, "query_cams": [1], "gallery_cams": [2]},
        },
        {"name": "market1501", "root": "/m"},
    ]
    bad = build_parser().parse_args(["eval", "--checkpoint", "c.pth", "--test", "viper"])
    with pytest.raises(SystemExit, match="--test expects NAME=ROOT"):
        _eval_overrides(bad)
