"""The gallery store, both backends: search against a numpy reference, idempotence, delete."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from partreid.store import CropBatch, open_store
from partreid.store.base import tracklet_key

K = 10
INFO = {"dim": 32, "model": {"name": "bot", "feature_dim": 32, "digest": "abc"}}
FILTERS = [
    {},
    {"cameras": [1, 4]},
    {"after": 200.0, "before": 700.0},
    {"cameras": [2, 3, 5], "after": 100.0, "before": 450.5},
    {"cameras": [0], "after": 900.0},
    {"before": 50.0},
]


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def reference(b: CropBatch, q: np.ndarray, by: str, cameras=None, after=None, before=None):
    """Brute-force top-K of the filtered subset: [(id or tracklet, distance, best crop id)]."""
    f = _unit(b.features)
    qn = _unit(q)
    cam_ok = np.ones(len(b), bool) if cameras is None else np.isin(b.camera, cameras)
    if by == "crop":
        ok = cam_ok.copy()
        if after is not None:
            ok &= b.timestamp >= after
        if before is not None:
            ok &= b.timestamp < before
        idx = np.nonzero(ok)[0]
        out = []
        for qq in qn:
            d = np.maximum(2 - 2 * f[idx] @ qq, 0)
            order = sorted(range(len(idx)), key=lambda i: (round(d[i], 6), b.ids[idx[i]]))
            out.append([(int(b.ids[idx[i]]), d[i], None) for i in order[:K]])
        return out
    keys = [tracklet_key(c, t, i) for c, t, i in zip(b.camera, b.track_id, b.ids)]
    groups = {}
    for j, key in enumerate(keys):
        groups.setdefault(key, []).append(j)
    out = []
    for qq in qn:
        cand = []
        for key, js in groups.items():
            ts = b.timestamp[js]
            if cameras is not None and b.camera[js[0]] not in cameras:
                continue
            if after is not None and ts.max() < after:
                continue
            if before is not None and ts.min() >= before:
                continue
            d = max(2 - 2 * float(_unit(f[js].mean(0)) @ qq), 0)
            dc = np.maximum(2 - 2 * f[js] @ qq, 0)
            best = min(range(len(js)), key=lambda i: (round(dc[i], 6), b.ids[js[i]]))
            cand.append((key, d, int(b.ids[js[best]])))
        cand.sort(key=lambda c: (round(c[1], 6), c[0]))
        out.append(cand[:K])
    return out


def check(hits, ref, by):
    """Hits equal the reference: same ids in the same order, distances to 1e-5."""
    assert len(hits) == len(ref)
    for hs, rs in zip(hits, ref):
        got = [h.id if by == "crop" else h.tracklet for h in hs]
        assert got == [r[0] for r in rs]
        np.testing.assert_allclose([h.distance for h in hs], [r[1] for r in rs], atol=1e-5)
        if by == "tracklet":
            assert [h.best.id for h in hs] == [r[2] for r in rs]
            for h in hs:
                assert h.best.tracklet == h.tracklet and h.start <= h.best.timestamp <= h.end


def queries(b: CropBatch, n: int = 5, seed: int = 1) -> np.ndarray:
    """Random queries, a stored crop's feature, and the tied vector (exact ties)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, b.dim)).astype(np.float32)
    q[0] = b.features[7] * 3
    q[1] = b.features[-1]  # TIE crops at distance 0: ordered by id
    return q


def test_search_matches_reference(store_uri, gallery):
    q = queries(gallery)
    with open_store(store_uri(), create=True, info=INFO) as st:
        assert st.add(gallery) == len(gallery)
        for by in ("crop", "tracklet"):
            for flt in FILTERS:
                check(st.search(q, K, by=by, **flt), reference(gallery, q, by, **flt), by)
        hits = st.search(q[1], K)[0]  # the tie group, ids ascending, distance 0
        assert [h.distance for h in hits] == pytest.approx([0.0] * K, abs=1e-6)
        assert [h.id for h in hits] == sorted(gallery.ids[-15:].tolist())[:K]
        h = st.search(q[0], 1)[0][0]
        j = 7
        assert h.id == gallery.ids[j] and h.camera == gallery.camera[j]
        assert h.timestamp == pytest.approx(gallery.timestamp[j])
        assert h.track_id == gallery.track_id[j] and h.frame == gallery.frame[j]
        assert h.box == pytest.approx(tuple(gallery.box[j]))
        assert h.path == gallery.path[j] and h.pid == gallery.pid[j]
        feat, meta = st.get_tracklet(h.tracklet)
        th = st.search(feat, 1, by="tracklet")[0][0]
        assert th.tracklet == h.tracklet == meta["tracklet"] and th.distance < 1e-5
        assert st.search(q, K, cameras=[99]) == [[]] * len(q)
        assert st.info["model"] == INFO["model"] and st.info["dim"] == 32
    with open_store(store_uri()) as st:  # reopened: the same answers
        assert st.info == {**INFO}
        for by in ("crop", "tracklet"):
            flt = FILTERS[3]
            check(st.search(q, K, by=by, **flt), reference(gallery, q, by, **flt), by)


def test_readd_is_idempotent(store_uri, gallery):
    q = queries(gallery)
    with open_store(store_uri(), create=True, info=INFO) as st:
        half = gallery.select(np.arange(300))
        assert st.add(half) == 300
        s0 = st.stats()
        assert st.add(half) == 0
        assert st.stats() == s0
        assert st.add(gallery) == len(gallery) - 300  # the rest only
        twice = gallery.select(np.r_[0:5, 0:5])  # a batch repeating its own ids
        assert st.add(twice) == 0
        s1 = st.stats()
        before = st.search(q, K, by="tracklet")
        assert st.add(gallery) == 0
        assert st.stats() == s1 and st.search(q, K, by="tracklet") == before
        check(before, reference(gallery, q, "tracklet"), "tracklet")
        assert s1.crops == len(gallery)
        keys = {
            tracklet_key(c, t, i) for c, t, i in zip(gallery.camera, gallery.track_id, gallery.ids)
        }
        assert s1.tracklets == len(keys)
        assert s1.cameras == {int(c): int((gallery.camera == c).sum()) for c in range(6)}
        assert s1.first == pytest.approx(gallery.timestamp.min())
        assert s1.last == pytest.approx(gallery.timestamp.max())
        assert s1.dim == 32 and s1.model == INFO["model"]
        c = st.contains(np.r_[gallery.ids[:3], [-5, 1]])
        assert c.tolist() == [True, True, True, False, False]


def test_delete_matches_fresh_store(store_uri, gallery):
    q = queries(gallery)
    b = gallery
    tracked = np.nonzero(b.track_id >= 0)[0]
    cam, trk = int(b.camera[tracked[3]]), int(b.track_id[tracked[3]])
    with open_store(store_uri(), create=True, info=INFO) as st:
        st.add(b)
        gone = np.zeros(len(b), bool)
        n = st.delete(before=100.0)
        assert n == (b.timestamp < 100).sum()
        gone |= b.timestamp < 100
        m = ~gone & (b.camera == 2) & (b.timestamp < 500)
        assert st.delete(camera=2, before=500.0) == m.sum()  # AND of the conditions
        gone |= m
        m = ~gone & (b.camera == cam) & (b.track_id == trk)
        assert st.delete(track=f"{cam}:{trk}") == m.sum()
        gone |= m
        assert st.delete(track=(cam, trk)) == 0  # already gone
        ids = b.ids[~gone][::17]
        assert st.delete(ids=ids) == len(ids)
        gone |= np.isin(b.ids, ids)
        # a tracklet that loses some of its crops (not all): its feature and span change
        partial = [j for j in tracked if not gone[j]]
        j = partial[0]
        sib = np.nonzero((b.camera == b.camera[j]) & (b.track_id == b.track_id[j]) & ~gone)[0]
        if len(sib) > 1:
            assert st.delete(ids=[b.ids[sib[0]]]) == 1
            gone[sib[0]] = True
        assert st.delete(before=-1e9) == 0
        keep = b.select(~gone)
        s = st.stats()
        for by in ("crop", "tracklet"):
            for flt in FILTERS[:4]:
                check(st.search(q, K, by=by, **flt), reference(keep, q, by, **flt), by)
    with open_store(store_uri("fresh"), create=True, info=INFO) as fresh:
        fresh.add(keep)
        sf = fresh.stats()
        fresh_hits = fresh.search(q, K, by="tracklet")
    with open_store(store_uri()) as st:  # reopened: deletions stay
        s2 = st.stats()
        for key in ("crops", "tracklets", "cameras", "first", "last"):
            assert getattr(s, key) == getattr(s2, key) == getattr(sf, key), key
        assert s2.crops == (~gone).sum() and 2 in s2.cameras
        hits = st.search(q, K, by="tracklet")
        assert [[h.tracklet for h in hs] for hs in hits] == [
            [h.tracklet for h in hs] for hs in fresh_hits
        ]
        for hs, fs in zip(hits, fresh_hits):
            for h, f in zip(hs, fs):
                assert (h.n_crops, h.start, h.end, h.best.id) == (
                    f.n_crops,
                    f.start,
                    f.end,
                    f.best.id,
                )
                assert h.distance == pytest.approx(f.distance, abs=1e-5)
        for hs in st.search(q, 50):
            assert not np.isin([h.id for h in hs], b.ids[gone]).any()
        assert not st.contains(b.ids[gone]).any() and st.contains(keep.ids).all()
        feat, meta = st.get_tracklet(f"{b.camera[j]}:{b.track_id[j]}")
        live = np.nonzero((b.camera == b.camera[j]) & (b.track_id == b.track_id[j]) & ~gone)[0]
        np.testing.assert_allclose(feat, _unit(_unit(b.features[live]).mean(0)), atol=1e-5)
        assert meta["n_crops"] == len(live)
        assert meta["start"] == pytest.approx(b.timestamp[live].min())
        with pytest.raises(ValueError, match="no tracklet"):
            st.get_tracklet(f"{cam}:{trk}")


@pytest.mark.parametrize("faiss_on", [True, False])
def test_embedded_large_subset_paths(tmp_path, gallery, monkeypatch, faiss_on):
    """Filtered subsets above SMALL go through faiss + IDSelector, or numpy blocks without it."""
    from partreid.store import embedded

    if faiss_on:
        pytest.importorskip("faiss")
    else:
        monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now fails
    monkeypatch.setattr(embedded, "SMALL", 5)
    q = queries(gallery)
    with open_store(str(tmp_path / "s"), create=True, info=INFO) as st:
        st.add(gallery.select(np.arange(400)))
        st.search(q[:1], 1)  # builds the in-memory indexes, then updated incrementally
        st.search(q[:1], 1, by="tracklet")
        st.add(gallery)
        st.delete(before=100.0)
        keep = gallery.select(gallery.timestamp >= 100)
        for by in ("crop", "tracklet"):
            for flt in FILTERS[:4]:
                check(st.search(q, K, by=by, **flt), reference(keep, q, by, **flt), by)


def test_embedded_span_bound(tmp_path, gallery):
    """A tracklet that grows across batches stays found by ``after`` (the span bound rises); a
    new store has the filters' indexes and the span bound from its creation on."""
    import sqlite3

    q = queries(gallery)
    path = str(tmp_path / "s")
    late = gallery.select(np.arange(len(gallery)))
    j = int(np.nonzero(gallery.track_id >= 0)[0][0])
    late.timestamp[j] = 5000.0  # one crop of a track far later: that track spans ~5000 s
    with open_store(path, create=True, info=INFO) as st:
        st.add(gallery.select(np.arange(len(gallery)) != j))
        st.add(late.select(np.array([j])))
    flt = {"after": 4000.0, "before": 6000.0}
    with open_store(path) as st:
        check(
            st.search(q, K, by="tracklet", **flt), reference(late, q, "tracklet", **flt), "tracklet"
        )
    db = sqlite3.connect(path + "/meta.sqlite", isolation_level=None)
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    span = db.execute("SELECT value FROM meta WHERE key='max_span'").fetchone()[0]
    db.close()
    assert {"crops_cam_ts_row", "crops_ts_row", "tracklets_cam_t0", "tracklets_t0"} <= names
    mates = (late.camera == late.camera[j]) & (late.track_id == late.track_id[j])
    assert span == pytest.approx(5000.0 - late.timestamp[mates].min())


def test_milvus_best_crop_when_counts_understate(tmp_path, gallery):
    """The best crop stays exact when a tracklet has more crops than its count says (the
    bounded search is then cut off and the lookup falls back to a full query)."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    q = queries(gallery)
    with open_store(f"milvus://{tmp_path / 'm.db'}", create=True, info=INFO) as st:
        st.add(gallery)
        ref = reference(gallery, q, "tracklet")
        for qi in range(len(q)):
            hits = st.search(q[qi], K, by="tracklet")[0]
            for h in hits:
                h.best, h.n_crops = None, 0
            st._best(normalize_rows(q[qi]), hits)
            assert [h.best.id for h in hits] == [r[2] for r in ref[qi]]


def normalize_rows(x):
    """float32 unit rows, as the store normalises queries."""
    return _unit(x).astype(np.float32)


@pytest.mark.parametrize("limit", [16384, 7])
def test_milvus_camera_edges_found_together_equal_each_alone(tmp_path, gallery, monkeypatch, limit):
    """After a delete, the cameras' first and last crops are found for all cameras in a few
    queries; the answer equals numpy's, also when an answer may be cut (a tiny limit) and with
    crops spread far apart in time (windows that grow several times)."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    import partreid.store.milvus as milvus

    b = gallery
    b.timestamp = np.where(b.camera % 2 == 0, b.timestamp, b.timestamp * 1e4)  # up to ~3.8 months
    monkeypatch.setattr(milvus, "MAX_LIMIT", limit)
    with open_store(f"milvus://{tmp_path / 'm.db'}", create=True, info=INFO) as st:
        st.add(b)
        cut = 150.0 * np.where(b.camera % 2 == 0, 1, 1e4)
        gone = b.timestamp < cut
        for c in range(6):  # each camera loses its first crops, camera 5 also its last
            st.delete(camera=c, before=float(np.max(cut[b.camera == c])))
        last5 = b.ids[b.camera == 5][np.argmax(b.timestamp[b.camera == 5])]
        st.delete(ids=[last5])
        gone |= b.ids == last5
        spans = st._spans()
        for c in range(6):
            t = b.timestamp[(b.camera == c) & ~gone]
            assert spans[c] == (pytest.approx(t.min()), pytest.approx(t.max()), len(t)), c
