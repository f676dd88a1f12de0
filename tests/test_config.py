import pytest
import yaml

from partreid.config import ConfigError, load_config, parse_overrides


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_defaults_and_overrides_are_typed(tmp_path):
    cfg = load_config(
        None,
        [
            "optim.lr=0.1",
            "schedule.milestones=[5,8]",
            "model.name=bot",
            "model.backbone=resnet18",
            "train.amp=false",
            "data.root=/x",
        ],
    )
    assert cfg.optim.lr == 0.1 and cfg.schedule.milestones == [5, 8]
    assert cfg.model == {"name": "bot", "backbone": "resnet18"} and cfg.train.amp is False
    assert cfg.data.root == "/x"


def test_base_chain_merges_dicts_and_replaces_lists(tmp_path):
    _write(
        tmp_path / "base.yaml",
        {
            "optim": {"lr": 0.01, "momentum": 0.8},
            "schedule": {"milestones": [1, 2, 3]},
            "model": {"name": "bot", "backbone": "resnet18"},
        },
    )
    (tmp_path / "abl").mkdir()
    child = _write(
        tmp_path / "abl" / "c.yaml",
        {"base": "../base.yaml", "optim": {"lr": 0.5}, "schedule": {"milestones": [7]}},
    )
    cfg = load_config(child)
    assert cfg.optim.lr == 0.5 and cfg.optim.momentum == 0.8
    assert cfg.schedule.milestones == [7] and cfg.model["backbone"] == "resnet18"


def test_unknown_keys_are_errors_listing_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"optim\.lrr.*valid keys of optim.*'lr'"):
        load_config(None, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="sampler: expected a mapping"):
        load_config(_write(tmp_path / "a.yaml", {"sampler": 3}))  # section replaced by scalar
    with pytest.raises(ConfigError, match=r"model\.depth.*valid keys of model"):
        load_config(None, ["model.name=bot", "model.depth=3"])
    with pytest.raises(ConfigError, match="unknown model"):
        load_config(None, ["model.name=resnet9000"])
    with pytest.raises(ConfigError, match="margn"):
        load_config(None, ["losses=[{type: triplet, output: triplet, margn: 1}]"])
    with pytest.raises(ConfigError, match="transforms"):
        load_config(None, ["transforms.flipp=0.5"])


def test_wrong_types_are_named(tmp_path):
    with pytest.raises(ConfigError, match="schedule.epochs: expected an integer"):
        load_config(None, ["schedule.epochs=ten"])
    with pytest.raises(ConfigError, match="train.amp: expected true or false"):
        load_config(None, ["train.amp=3"])


def test_missing_file_and_loops(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "none.yaml"))
    _write(tmp_path / "x.yaml", {"base": "y.yaml"})
    _write(tmp_path / "y.yaml", {"base": "x.yaml"})
    with pytest.raises(ConfigError, match="loop"):
        load_config(str(tmp_path / "x.yaml"))


def test_parse_overrides_nested():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])
