"""Every shipped config file passes the schema (unknown keys, model options, loss terms)."""

from pathlib import Path

import pytest

from partreid.config import load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_configs_exist():
    assert len(CONFIGS) > 20


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_config_loads(path):
    cfg = load_config(str(path))
    assert cfg.model["name"] == path.relative_to(CONFIG_DIR).parts[0]  # configs/<model>/...
