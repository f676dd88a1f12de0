"""Fixtures of the gallery store tests: a synthetic gallery and the URI of each backend."""

from __future__ import annotations

import numpy as np
import pytest

from partreid.store import CropBatch

DIM = 32
TIE = 15  # crops sharing one exact vector (more than k, so ties straddle rank k)


def make_gallery(n: int = 600, dim: int = DIM, seed: int = 0, id0: int = 0) -> CropBatch:
    """Crops of 6 cameras over [0, 1000) s, tracks of 1-6 crops, some crops without a track, and
    ``TIE`` crops with one exact vector (entries 0 or 0.5: exact float32 dot products)."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, dim)).astype(np.float32) * rng.uniform(0.5, 3, (n, 1))
    camera = rng.integers(0, 6, n)
    ts = np.round(rng.uniform(0, 1000, n), 3)
    track = np.full(n, -1, np.int64)
    i, t = 0, 0
    while i < n - TIE:
        m = int(rng.integers(1, 7))
        if rng.random() < 0.8:
            track[i : i + m] = t
            camera[i : i + m] = camera[i]
            t += 1
        i += m
    track[n - TIE :] = -1
    v = np.zeros(dim, np.float32)
    v[:4] = 0.5
    feats[n - TIE :] = v
    return CropBatch(
        ids=np.arange(id0, id0 + n) * 7 + 3,  # not 0..n-1: ids are the caller's
        features=feats,
        camera=camera,
        timestamp=ts,
        track_id=track,
        frame=np.arange(n),
        box=rng.uniform(0, 100, (n, 4)).astype(np.float32),
        path=[f"cam{c}/img{j}.jpg" for j, c in enumerate(camera)],
        pid=rng.integers(-1, 50, n),
    )


@pytest.fixture
def gallery() -> CropBatch:
    """The default synthetic gallery."""
    return make_gallery()


BACKENDS = ["embedded", "milvus", "milvus-server"]


def _uri_maker(backend: str, request, tmp_path):
    """``uri(name)``: a fresh URI of ``backend``: a folder or a Milvus Lite file under tmp_path,
    or collections of this test's own on the session's Milvus server (skips without pymilvus)."""
    if backend != "embedded":
        pytest.importorskip("pymilvus")
    if backend == "milvus":
        pytest.importorskip("milvus_lite")
    names = {}
    if backend == "milvus-server":
        collection = request.getfixturevalue("milvus_collections")
        base = request.getfixturevalue("milvus_server_uri")

    def uri(name: str = "site") -> str:
        if backend == "embedded":
            return str(tmp_path / name)
        if backend == "milvus":
            return f"milvus://{tmp_path / (name + '.db')}"
        if name not in names:
            names[name] = collection(name)
        return f"{base}/{names[name]}"

    uri.backend = backend
    return uri


@pytest.fixture(params=BACKENDS)
def store_uri(request, tmp_path):
    """``store_uri(name)``: a fresh URI of the parametrised backend."""
    return _uri_maker(request.param, request, tmp_path)


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("milvus", marks=pytest.mark.slow),
        pytest.param("milvus-server", marks=pytest.mark.slow),
    ]
)
def any_uri(request, tmp_path):
    """Like ``store_uri``, with the Milvus runs in the slow set (for tests whose Milvus side
    another default test already covers)."""
    return _uri_maker(request.param, request, tmp_path)


def pytest_collection_modifyitems(config, items):
    """The site-identity tests on the server are slow (~65 s together; their Milvus Lite runs
    cover the same Milvus code in the default run): the default run stays in the CI budget."""
    slow = pytest.mark.slow
    for item in items:
        if "test_identities.py" in item.nodeid and "milvus-server" in item.nodeid:
            item.add_marker(slow)
