"""What partreid offers, by name, without importing torch: the models with their options and
the data sets. ``partreid list`` and anything else that only needs the names read this.

The live registries stay the truth: :func:`partreid.models.list_models` /
:func:`partreid.models.model_options` (read from build_backbone and each model's constructor) and
:func:`partreid.data.list_datasets`. ``tests/test_catalogue.py`` checks that this copy equals
them name by name, option by option (value, type and order), and that every ``"module:name"``
below is the object registered under that name, so a model or data set added, renamed or given
a new option without a line here fails the tests.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

#: model name -> ("module:Class" that registers it, its keyword options with their defaults, in
#: the constructor's order)
MODELS: Dict[str, Tuple[str, Dict[str, object]]] = {
    "bot": (
        "partreid.models.bot:BoT",
        {
            "backbone": "resnet50",
            "pretrained": False,
            "last_stride": 1,
            "pooling": "avg",
            "test_feature": "after_bn",
        },
    ),
    "cgpn": (
        "partreid.models.cgpn:CGPN",
        {
            "backbone": "resnet50",
            "pretrained": False,
            "last_stride": 1,
            "stripes": (2, 3, 4),
            "global_parts": 2,
            "global_part": True,
            "local_part": "coarse",
            "mse_supervision": True,
            "detach_target": False,
            "reduction_dim": 256,
            "triplet_on": "pooled",
            "triplet_features": "global",
            "global_conv_init": "identity",
        },
    ),
    "mgn": (
        "partreid.models.mgn:MGN",
        {
            "backbone": "resnet50",
            "pretrained": False,
            "last_stride": 1,
            "global_last_stride": 2,
            "parts": (2, 3),
            "reduction_dim": 256,
            "triplet_on": "pooled",
        },
    ),
    "pcb": (
        "partreid.models.pcb:PCB",
        {
            "backbone": "resnet50",
            "pretrained": False,
            "last_stride": 1,
            "stripes": 6,
            "pooling": "avg",
            "reduction_dim": 256,
            "test_feature": "reduced",
            "abp": False,
            "abp_pool": "avg",
        },
    ),
    "rmgl": (
        "partreid.models.rmgl:RMGL",
        {
            "backbone": "resnet50",
            "pretrained": False,
            "last_stride": 1,
            "stripes": (2, 3),
            "branch_cut": "res_conv2c",
            "rp": True,
            "only_rp": False,
            "partition_depth": "res3",
            "rp_global": "stitch",
            "abp": True,
            "abp_pool": "avg",
            "pooling": "max",
            "reduction_dim": 256,
            "reduction_relu": False,
            "triplet_on": "reduced",
        },
    ),
}

#: data set name -> "module:loader" registered under it (aliases share a loader)
DATASETS: Dict[str, str] = {
    "cuhk03": "partreid.data.datasets.cuhk03:load_cuhk03",
    "cuhk03_detected": "partreid.data.datasets.cuhk03:load_cuhk03",
    "cuhk03_labeled": "partreid.data.datasets.cuhk03:load_cuhk03",
    "dukemtmc": "partreid.data.datasets.dukemtmc:load_dukemtmc",
    "manifest": "partreid.data.datasets.manifest:load_manifest",
    "market1501": "partreid.data.datasets.market1501:load_market1501",
    "msmt17": "partreid.data.datasets.msmt17:load_msmt17",
    "occluded_duke": "partreid.data.datasets.occluded_duke:load_occluded_duke",
    "synthetic": "partreid.data.datasets.synthetic:load_synthetic",
}


def list_models() -> List[str]:
    """The model names, sorted (as :func:`partreid.models.list_models`)."""
    return sorted(MODELS)


def model_options(name: str) -> Dict[str, object]:
    """Model ``name``'s options with their defaults (as :func:`partreid.models.model_options`)."""
    return dict(MODELS[name][1])


def list_datasets() -> List[str]:
    """The data set names, sorted (as :func:`partreid.data.list_datasets`)."""
    return sorted(DATASETS)
