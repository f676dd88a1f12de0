"""Fixtures for the data-set tests: tiny image files in the real layouts, and the shared data."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable

import pytest
from PIL import Image


def _shared_dir() -> Path:
    env = os.environ.get("PARTREID_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".." / "shared"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (or ``$PARTREID_SHARED/data``); skips the test when it is absent."""
    data = _shared_dir() / "data"
    if not data.is_dir():
        pytest.skip(f"shared data not found at {data} (set PARTREID_SHARED to use it)")
    return data


@pytest.fixture(scope="session")
def jpeg_bytes() -> bytes:
    """A tiny valid JPEG, written under every fake image name."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 8), (120, 30, 200)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def write_images(jpeg_bytes):
    """``write_images(folder, names)``: create ``folder`` and one tiny JPEG per name."""

    def write(folder: Path, names: Iterable[str]) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(jpeg_bytes)
        return folder

    return write


@pytest.fixture
def corrupt_jpeg(jpeg_bytes):
    """``corrupt_jpeg(path)``: overwrite ``path`` with a truncated JPEG that cannot be decoded."""

    def corrupt(path: Path) -> Path:
        Path(path).write_bytes(jpeg_bytes[: len(jpeg_bytes) // 3])
        return Path(path)

    return corrupt
