"""The torch-free catalogue (``partreid.catalogue``) against the live registries it copies: the
same names, the same options (value, type and order) and the very objects registered."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

from partreid import catalogue
from partreid.data import list_datasets
from partreid.data.datasets import base as datasets_base
from partreid.models import list_models, model_options, registry


def _resolve(target):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _typed(options):
    return [(k, type(v).__name__, repr(v)) for k, v in options.items()]


def test_models_equal_the_registry():
    assert sorted(catalogue.MODELS) == list_models()
    for name, (target, options) in catalogue.MODELS.items():
        assert _typed(options) == _typed(model_options(name)), name
        assert _resolve(target) is registry._get(name), f"{name}: {target}"


def test_datasets_equal_the_registry():
    assert sorted(catalogue.DATASETS) == list_datasets()
    for name, target in catalogue.DATASETS.items():
        assert _resolve(target) is datasets_base._lookup(name).loader, f"{name}: {target}"


def test_the_catalogue_imports_nothing_heavy():
    code = "import json, sys, partreid.catalogue; print(json.dumps(sorted(sys.modules)))"
    env = dict(os.environ, PYTHONPATH=str(Path(catalogue.__file__).parents[1]))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    loaded = {m.split(".")[0] for m in json.loads(out.stdout)}
    assert "partreid" in loaded and not loaded & {"torch", "torchvision", "numpy", "PIL"}
