"""The gallery store's errors: each names the URI or the offending value."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from partreid.errors import PartreidError
from partreid.store import CropBatch, StoreError, open_store
from partreid.store.milvus_uri import redact

INFO = {"dim": 8, "model": {"name": "m"}}


def _batch(n: int = 4, dim: int = 8) -> CropBatch:
    return CropBatch(
        ids=np.arange(n), features=np.ones((n, dim)), camera=np.zeros(n), timestamp=np.arange(n)
    )


@pytest.mark.parametrize(
    "uri, words",
    [
        ("foo://x", ["foo://x", "unknown scheme 'foo'", "folder path", "milvus://"]),
        ("milvus://", ["milvus://", "host:port", "milvus:///abs/path/file.db"]),
        ("milvus://hostonly", ["milvus://hostonly", "host:port"]),
        ("milvus://h:99999", ["milvus://h:99999", "host:port"]),
        ("milvus://h:19530/bad-name", ["bad-name", "letters, digits"]),
        ("milvus:///", ["milvus:///", "file name"]),
        ("", ["empty"]),
    ],
)
def test_bad_uri(uri, words):
    with pytest.raises(StoreError) as e:
        open_store(uri, create=True, info=INFO)
    for w in words:
        assert w in str(e.value)
    assert isinstance(e.value, PartreidError) and isinstance(e.value, ValueError)


def test_missing_embedded_store(tmp_path):
    with pytest.raises(StoreError, match="no folder .*partreid ingest .*--store URI.*create=True"):
        open_store(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no gallery store in"):
        open_store(str(tmp_path / "empty"))
    with pytest.raises(StoreError, match="needs info with 'dim'"):
        open_store(str(tmp_path / "new"), create=True)
    with pytest.raises(StoreError, match=r"info\['dim'\]"):
        open_store(str(tmp_path / "new"), create=True, info={"dim": "x"})


def test_unreachable_milvus_server_fails_fast():
    pytest.importorskip("pymilvus")
    with socket.socket() as s:  # a free local port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for uri, where in [
        (f"milvus://127.0.0.1:{port}", f"127.0.0.1:{port}"),
        ("milvus://127.0.0.1:1/x", "127.0.0.1:1"),
    ]:
        t = time.monotonic()
        with pytest.raises(StoreError) as e:
            open_store(uri, create=True, info=INFO)
        assert time.monotonic() - t < 10
        assert f"Milvus server at {where}" in str(e.value) and uri in str(e.value)


def test_missing_milvus_lite_file(tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    uri = f"milvus://{tmp_path / 'none.db'}"
    with pytest.raises(StoreError, match="no Milvus Lite file .*none.db"):
        open_store(uri)
    with pytest.raises(StoreError, match="no folder .*nodir"):
        open_store(f"milvus://{tmp_path / 'nodir' / 'x.db'}", create=True, info=INFO)


def test_dim_and_delete_errors(store_uri):
    uri = store_uri()
    with open_store(uri, create=True, info=INFO) as st:
        st.add(_batch())
        with pytest.raises(StoreError, match="12-d, the store's dim is 8"):
            st.add(_batch(dim=12))
        with pytest.raises(StoreError, match=r"queries have shape \(1, 5\), the store's dim is 8"):
            st.search(np.ones(5), 3)
        with pytest.raises(StoreError, match="by='x'"):
            st.search(np.ones(8), 3, by="x")
        with pytest.raises(StoreError, match="at least one condition.*never deletes everything"):
            st.delete()
        with pytest.raises(StoreError, match="tracklet id 'abc'"):
            st.delete(track="abc")
        assert st.stats().crops == 4
    with pytest.raises(StoreError) as e:
        open_store(uri, create=True, info={"dim": 16})
    shown = redact(uri)  # a server's URI carries the test credentials: never in a message
    assert "holds 8-d features" in str(e.value) and "dim 16" in str(e.value)
    assert shown in str(e.value) and "Milvus@" not in str(e.value)
    with open_store(uri, create=True, info=INFO) as st:  # create on an existing store: opens it
        assert st.stats().crops == 4


def test_batch_errors():
    with pytest.raises(StoreError, match=r"features has shape \(3, 8\), expected \(4, dim\)"):
        CropBatch(ids=np.arange(4), features=np.ones((3, 8)), camera=0, timestamp=0)
    with pytest.raises(StoreError, match="CropBatch.camera has 2 values for 4 crops"):
        CropBatch(ids=np.arange(4), features=np.ones((4, 8)), camera=[0, 1], timestamp=0)
    with pytest.raises(StoreError, match="NaN"):
        CropBatch(ids=[1], features=[[np.nan, 1]], camera=0, timestamp=0)
