"""Several handles (processes) on one embedded store: an ingest writing while a server searches,
two writers one after the other, and a reader opening while a writer's batch is in flight."""

from __future__ import annotations

import fcntl
import os

import numpy as np
import pytest

from partreid.store import open_store

from .conftest import DIM, make_gallery


def _ids(hits):
    return [[getattr(h, "id", None) or h.tracklet for h in row] for row in hits]


def test_a_reader_sees_what_another_handle_commits(tmp_path):
    path = str(tmp_path / "store")
    g = make_gallery(600)
    first, second = g.select(np.arange(300)), g.select(np.arange(300, 600))
    writer = open_store(path, create=True, info={"dim": DIM})
    reader = open_store(path)
    writer.add(first)
    q = g.features[:5]
    for by in ("crop", "tracklet"):  # the reader built its indexes on the first half
        reader.search(q, 10, by=by)
    writer.add(second)
    both = open_store(path)  # a fresh handle: what a restart would see
    for by in ("crop", "tracklet"):
        for cams in (None, [1, 2]):
            want = _ids(both.search(q, 10, by=by, cameras=cams))
            assert _ids(reader.search(q, 10, by=by, cameras=cams)) == want
    assert reader.stats().crops == 600 and reader.stats().extra["vector_rows"] == 600
    for st in (writer, reader, both):
        st.close()


def test_two_writers_take_turns_without_overwriting_rows(tmp_path):
    path = str(tmp_path / "store")
    g = make_gallery(600)
    a = open_store(path, create=True, info={"dim": DIM})
    b = open_store(path)
    a.add(g.select(np.arange(200)))
    b.add(g.select(np.arange(200, 400)))  # b's cached row count is stale: it must re-read it
    a.add(g.select(np.arange(400, 600)))
    assert b.add(g.select(np.arange(100))) == 0  # already there (added by a): nothing added
    a.delete(camera=3)
    a.close()
    b.close()
    fresh = str(tmp_path / "fresh")
    keep = g.camera != 3
    with open_store(fresh, create=True, info={"dim": DIM}) as ref:
        ref.add(g.select(keep))
        want = _ids(ref.search(g.features[:8], 10, by="crop"))
    with open_store(path) as st:
        assert st.stats().crops == int(keep.sum())
        assert _ids(st.search(g.features[:8], 10, by="crop")) == want
        assert os.path.getsize(os.path.join(path, "vectors.f32")) == 600 * DIM * 4


def test_opening_during_a_writers_batch_leaves_its_rows_alone(tmp_path):
    path = str(tmp_path / "store")
    g = make_gallery(100)
    with open_store(path, create=True, info={"dim": DIM}) as st:
        st.add(g)
    vec = os.path.join(path, "vectors.f32")
    with open(vec, "ab") as f:  # a batch written, its transaction not committed yet
        f.write(np.ones((7, DIM), np.float32).tobytes())
    with open(os.path.join(path, "writer.lock"), "a+b") as lock:  # ... by a live writer
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        with open_store(path) as st:
            assert st.stats().crops == 100
        assert os.path.getsize(vec) == 107 * DIM * 4  # not cut under the writer's feet
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    with open_store(path) as st:  # no writer: the rows are a dead batch's, dropped
        assert st.stats().crops == 100
    assert os.path.getsize(vec) == 100 * DIM * 4


pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX file locks")
