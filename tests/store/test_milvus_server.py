"""What a Milvus server store adds to the shared matrix (test_store): its credentials and where
they never go, its index options and their record, the exact and ANN search paths against
numpy, reads that see the handle's own writes at once, stats that read no crop, and a writer
killed between its crops and its tracklets (Lite and server alike)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from partreid.store import StoreError, open_store
from partreid.store.base import tracklet_key
from partreid.store.milvus_uri import parse_milvus_uri, redact

from .conftest import make_gallery
from .test_store import FILTERS, INFO, K, check, queries, reference

PASSWORD = "pw-of-the-tests-7f3a"  # the session server's (tests/conftest.py)


@pytest.fixture
def uri(milvus_server_uri, milvus_collections):
    """``uri(name, options)``: a store URI of this test's own on the session's server."""

    def make(name: str = "site", options: str = "") -> str:
        return f"{milvus_server_uri}/{milvus_collections(name)}" + (
            f"?{options}" if options else ""
        )

    return make


def _one_line_without_secret(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text and PASSWORD not in text, text
    return text


def test_credentials_wrong_missing_or_from_a_token_file(uri, tmp_path, milvus_server):
    good = uri()
    bare = good.replace(f"root:{PASSWORD}@", "")
    wrong = good.replace(f":{PASSWORD}@", ":not-it@")
    with pytest.raises(StoreError) as e:
        open_store(wrong, create=True, info=INFO)
    text = _one_line_without_secret(e.value)
    assert "wrong user or password" in text and "not-it" not in text and "root:***@" in text
    with pytest.raises(StoreError, match="needs credentials.*token_file"):
        open_store(bare, create=True, info=INFO)
    token = tmp_path / "milvus.token"
    token.write_text(f"root:{PASSWORD}\n")
    with open_store(f"{bare}?token_file={token}", create=True, info=INFO) as st:
        st.add(make_gallery(20))
        s = st.stats()
        assert s.crops == 20 and PASSWORD not in json.dumps(s.to_dict(), default=str)
        rows = st._query(st._meta, "key >= 0", ["info"])  # what the store keeps about itself
        assert rows and all(PASSWORD not in r["info"] and "token" not in r["info"] for r in rows)
    token.write_text("")
    with pytest.raises(StoreError, match="token_file .*is empty"):
        open_store(f"{bare}?token_file={token}")
    with pytest.raises(StoreError, match="cannot read token_file .*nowhere"):
        open_store(f"{bare}?token_file={tmp_path / 'nowhere'}")
    with pytest.raises(StoreError, match="credentials in the URI and a token_file"):
        open_store(f"{good}?token_file={token}")


def test_uri_options_and_their_errors():
    t = parse_milvus_uri("milvus://u:p%40ss@10.0.0.5:19530/site?index=ivf_flat&nlist=256&nprobe=8")
    assert (t.kind, t.target, t.prefix, t.credentials) == (
        "server",
        "10.0.0.5:19530",
        "site",
        "u:p@ss",
    )
    assert t.spec().record() == {"kind": "IVF_FLAT", "nlist": 256, "nprobe": 8}
    assert t.shown == "milvus://u:***@10.0.0.5:19530/site?index=ivf_flat&nlist=256&nprobe=8"
    default = parse_milvus_uri("milvus://h:1/x").spec().record()
    assert default == {"kind": "HNSW", "M": 16, "efConstruction": 128, "ef": 128}
    assert parse_milvus_uri("milvus:///a/b.db").spec().kind == "FLAT"  # Milvus Lite: exact
    assert redact("milvus://user:secret@h:1/c") == "milvus://user:***@h:1/c"
    for bad, words in [
        ("milvus://h:1/x?index=annoy", ["index='annoy'", "hnsw"]),
        ("milvus://h:1/x?M=abc", ["M='abc'", "integer"]),
        ("milvus://h:1/x?exact=99999", ["exact='99999'", "0..16384"]),
        ("milvus://u:secret@h:1/x?colour=red", ["unknown option 'colour'", "index", "ef"]),
        ("milvus:///a/b.db?token_file=/t", ["Milvus Lite has no users"]),
    ]:
        with pytest.raises(StoreError) as e:
            parse_milvus_uri(bad)
        for w in words:
            assert w in str(e.value)
        assert "secret" not in str(e.value)


def test_index_recorded_and_refused(uri, gallery):
    base = uri()
    with open_store(base + "?M=8&efConstruction=64&ef=32", create=True, info=INFO) as st:
        st.add(gallery)
        assert st.stats().extra["index"] == {"kind": "HNSW", "M": 8, "efConstruction": 64, "ef": 32}
    with open_store(base) as st:  # reopened: the recorded index, not the default
        assert st.index.record() == {"kind": "HNSW", "M": 8, "efConstruction": 64, "ef": 32}
    with open_store(base + "?ef=200") as st:  # a search parameter is the handle's own
        assert st.index.record()["ef"] == 200
    with pytest.raises(StoreError, match="made with index .*HNSW.*reindex=1"):
        open_store(base + "?index=ivf_flat&nlist=16")
    with pytest.raises(StoreError) as e:  # a value Milvus itself refuses: its reason, one line
        open_store(uri("refused", "M=3000"), create=True, info=INFO)
    text = _one_line_without_secret(e.value)
    assert "Milvus refused the index" in text and "M out of range" in text


@pytest.mark.slow  # ~10 s: collections released, indexes rebuilt, loaded again
def test_reindex_rebuilds_as_asked(uri, gallery):
    q = queries(gallery)
    base = uri()
    with open_store(base, create=True, info=INFO) as st:
        st.add(gallery)
    with open_store(base + "?index=ivf_flat&nlist=16&reindex=1") as st:
        assert st.stats().extra["index"] == {"kind": "IVF_FLAT", "nlist": 16, "nprobe": 32}
        for by in ("crop", "tracklet"):
            check(st.search(q, K, by=by, **FILTERS[3]), reference(gallery, q, by, **FILTERS[3]), by)
    with open_store(base) as st:  # the new index is the recorded one now
        assert st.index.kind == "IVF_FLAT"


@pytest.mark.parametrize("options", [pytest.param("exact=0", marks=pytest.mark.slow), "exact=40"])
def test_ann_and_fallback_paths_equal_numpy(uri, gallery, options, monkeypatch):
    """exact=0: every search takes the ANN path (600 rows: below the 1,024 Milvus indexes, so
    still exhaustive and comparable); exact=40 with an index that misses a row: the rows are
    ranked here instead."""
    from partreid.store.milvus import MilvusStore

    q = queries(gallery)
    with open_store(uri(options=options), create=True, info=INFO) as st:
        st.add(gallery)
        if options == "exact=40":
            real = MilvusStore._vsearch

            def missing_one(self, coll, data, limit, expr, fields):
                res = real(self, coll, data, limit, expr, fields)
                return [hs[:-1] if len(hs) == limit and limit > 1 else hs for hs in res]

            monkeypatch.setattr(MilvusStore, "_vsearch", missing_one)
            flts = [{"cameras": [0], "after": 900.0}, {"before": 50.0}]  # <= 40 rows each
            for flt in flts:
                expr = st._expr("crop", flt.get("cameras"), flt.get("after"), flt.get("before"))
                assert 0 < st._count(st._crops, expr) <= 40
        else:
            flts = FILTERS
        for by in ("crop", "tracklet"):
            for flt in flts:
                check(st.search(q, K, by=by, **flt), reference(gallery, q, by, **flt), by)


def test_a_handle_reads_its_own_writes_and_what_came_before(uri):
    g = make_gallery(400)
    a = open_store(uri(), create=True, info=INFO)
    for i in range(0, 400, 100):  # each add seen at once by the handle that made it
        part = g.select(np.arange(i, i + 100))
        a.add(part)
        assert a.contains(part.ids).all() and a.stats().crops == i + 100
        hit = a.search(part.features[10], 1)[0][0]  # (the gallery's last 15 are ties)
        assert hit.id == part.ids[10] and hit.distance < 1e-5
    b = open_store(a.uri.replace("***", PASSWORD))  # opened after: sees every write before it
    assert b.stats().crops == 400 and b.contains(g.ids).all()
    n = b.delete(camera=1)
    assert n == (g.camera == 1).sum() and b.stats().crops == 400 - n
    assert not b.contains(g.ids[g.camera == 1]).any()
    a.close()
    b.close()


def test_stats_read_no_crop(uri, monkeypatch):
    from partreid.store.milvus import MilvusStore

    g = make_gallery(300)
    with open_store(uri(), create=True, info=INFO) as st:
        st.add(g)
        real = MilvusStore._query
        asked = []

        def only_counts(self, coll, expr, fields, *a, **kw):
            asked.append((coll, fields))
            assert coll != self._crops or fields == ["count(*)"], "a stats call read crops"
            return real(self, coll, expr, fields, *a, **kw)

        monkeypatch.setattr(MilvusStore, "_query", only_counts)
        s = st.stats()
        assert any(c == st._crops for c, _ in asked)  # it did ask: counts
    assert s.cameras == {int(c): int((g.camera == c).sum()) for c in np.unique(g.camera)}
    assert (s.first, s.last) == (g.timestamp.min(), g.timestamp.max())
    assert s.tracklets == len(set(map(tracklet_key, g.camera, g.track_id, g.ids)))


class Killed(BaseException):
    """The writer dies here (not an Exception: nothing catches it on the way out)."""


@pytest.mark.parametrize("backend", ["milvus", "milvus-server"])
def test_a_writer_killed_between_crops_and_tracklets_is_repaired(
    backend, request, tmp_path, monkeypatch
):
    from partreid.store.milvus import MilvusStore

    if backend == "milvus":
        pytest.importorskip("milvus_lite")
        store = f"milvus://{tmp_path / 'site.db'}"
    else:
        store = request.getfixturevalue("uri")()
    g = make_gallery(600)
    first, second = g.select(np.arange(250)), g.select(np.arange(250, 600))
    q = queries(g)
    st = open_store(store, create=True, info=INFO)
    st.add(first)

    def die(self, rows):
        raise Killed

    monkeypatch.setattr(MilvusStore, "_update_tracklets", die)  # after the crops are in
    with pytest.raises(Killed):
        st.add(second)
    monkeypatch.undo()
    st._c.close()  # the process is gone: no close(), nothing flushed or finished
    st._c = None
    with open_store(store) as st:
        s = st.stats()
        assert st.contains(second.ids).all() and s.extra["pending_writes"] == 1
        assert s.tracklets < len(set(map(tracklet_key, g.camera, g.track_id, g.ids)))  # stale
        assert st.add(second) == 0  # the ingest run again: nothing to add, tracklets repaired
        assert st.stats().extra["pending_writes"] == 0
        check(st.search(q, K, by="tracklet"), reference(g, q, "tracklet"), "tracklet")
        for key in {tracklet_key(c, t, i) for c, t, i in zip(g.camera, g.track_id, g.ids)}:
            feat, meta = st.get_tracklet(key)
            m = np.array(
                [tracklet_key(c, t, i) == key for c, t, i in zip(g.camera, g.track_id, g.ids)]
            )
            f = g.features[m] / np.linalg.norm(g.features[m], axis=1, keepdims=True)
            ref = f.mean(0) / np.linalg.norm(f.mean(0))
            np.testing.assert_allclose(feat, ref, atol=1e-5)
            assert (meta["n_crops"], meta["start"], meta["end"]) == (
                m.sum(),
                g.timestamp[m].min(),
                g.timestamp[m].max(),
            )


def test_repair_leaves_a_live_writers_cameras_alone(uri):
    """repair(cameras) finishes only the journal rows of those cameras (one writer per
    camera: another camera's row may be a live writer's); repair() only the stale ones."""
    g = make_gallery(200)
    store = uri()
    with open_store(store, create=True, info=INFO) as writer:
        writer.add(g)
        key = f"{int(g.camera[0])}:{int(g.track_id[0])}"
        other = [c for c in range(6) if c != int(g.camera[0])][0]
        writer._journal("add", [other], [key])  # camera `other`'s writer, mid-batch
        with open_store(store) as st:  # another process
            assert st.repair([int(g.camera[0])]) == 0 and st.repair() == 0
            assert st.stats().extra["pending_writes"] == 1
            assert st.repair([other]) == 1 and st.stats().extra["pending_writes"] == 0


def test_no_store_there_is_one_line(uri):
    with pytest.raises(StoreError) as e:
        open_store(uri("never_made"))
    text = _one_line_without_secret(e.value)
    assert "no gallery store" in text and "create=True" in text
    assert re.search(r"root:\*\*\*@127\.0\.0\.1:\d+/", text)


def test_check_recall_says_when_the_store_falls_short(uri, gallery, monkeypatch, caplog):
    from partreid.store.milvus import MilvusStore

    q = queries(gallery)
    with open_store(uri(options="recall=0.95&exact=0"), create=True, info=INFO) as st:
        st.add(gallery)
        assert st.check_recall(q, K, cameras=[1, 4]) == 1.0 and not caplog.records
        real = MilvusStore._vsearch

        def poor(self, coll, data, limit, expr, fields):  # an index that misses the best half
            return [hs[5:] for hs in real(self, coll, data, limit, expr, fields)]

        monkeypatch.setattr(MilvusStore, "_vsearch", poor)
        r = st.check_recall(q, K, by="tracklet", after=200.0, before=700.0)
        assert r < 0.95
        assert f"recall@10 {r:.3f}" in caplog.text and "below the asked 0.950" in caplog.text
        assert "raise ef" in caplog.text and PASSWORD not in caplog.text
