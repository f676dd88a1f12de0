"""Person re-ID data sets: loaders for the standard layouts, CSV manifests and a synthetic set.

``build_dataset(name, root, **options)`` returns a :class:`ReIDDataset` (train / query / gallery
lists of ``(image_path, pid, camid)``); ``list_datasets()`` gives the registered names and
``dataset_options(name)`` the options one of them accepts.
"""

from __future__ import annotations

import warnings

# ``python -m partreid.data.datasets.synthetic`` runs a module this package has imported already;
# that is harmless here (it only generates files), so runpy's warning about it is silenced.
warnings.filterwarnings(
    "ignore",
    message=r"'partreid\.data\.datasets\.synthetic' found in sys\.modules",
    category=RuntimeWarning,
)

from . import cuhk03, dukemtmc, manifest, market1501, msmt17, occluded_duke, synthetic  # registers
from .base import (
    DatasetError,
    DatasetNotFoundError,
    Item,
    ReIDDataset,
    build_dataset,
    carve_validation,
    dataset_options,
    list_datasets,
    register_dataset,
)
from .manifest import CLASSIC_PROTOCOLS
from .synthetic import generate_synthetic

__all__ = [
    "CLASSIC_PROTOCOLS",
    "DatasetError",
    "DatasetNotFoundError",
    "Item",
    "ReIDDataset",
    "build_dataset",
    "carve_validation",
    "dataset_options",
    "generate_synthetic",
    "list_datasets",
    "register_dataset",
]
