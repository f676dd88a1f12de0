"""Data sets, transforms, samplers and loaders.

``build_dataset(name, root, **options)`` returns an object with ``.train``, ``.query`` and
``.gallery`` lists of ``(image_path, pid, camid)``; see :func:`list_datasets`.
"""

from .datasets import ReIDDataset, build_dataset, generate_synthetic, list_datasets
from .io import ImageDataset, UnreadableImageError, check_images, read_image

__all__ = [
    "ReIDDataset",
    "build_dataset",
    "generate_synthetic",
    "list_datasets",
    "ImageDataset",
    "UnreadableImageError",
    "check_images",
    "read_image",
]
