"""Site identities kept in a store (both backends): link_store gives every tracklet an identity,
linking twice changes nothing, new footage joins the identities already given, both backends
give the same identities, and forgetting a person leaves nothing of it behind."""

from __future__ import annotations

import numpy as np
import pytest

from partreid.store import CropBatch, IdentityNotFoundError, StoreError, open_store
from partreid.store.link import Tracklets as LinkInput
from partreid.store.link import Transitions, link_store, violations

DIM = 16
INFO = {"dim": DIM, "model": {"name": "test"}}


def site_crops(seed: int = 0, people: int = 8, cameras: int = 3, id0: int = 0) -> CropBatch:
    """Crops of ``people`` walking through ``cameras``: 2-4 tracks each, one after the other
    (10-30 s between), 3 crops a track one second apart; features: the person's direction
    plus a little noise; ``pid`` the person."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, DIM))
    rows = []
    track = {c: 0 for c in range(1, cameras + 1)}
    for p in range(people):
        t = 1000.0 + float(rng.integers(0, 100))
        for _ in range(int(rng.integers(2, 5))):
            cam = int(rng.integers(1, cameras + 1))
            track[cam] += 1
            for j in range(3):
                rows.append((p, cam, track[cam], t + j))
            t += 3 + float(rng.integers(10, 30))
    pid = np.array([r[0] for r in rows])
    n = len(rows)
    return CropBatch(
        ids=np.arange(id0, id0 + n),
        features=centres[pid] + 0.05 * rng.normal(size=(n, DIM)),
        camera=np.array([r[1] for r in rows]),
        timestamp=np.array([r[3] for r in rows]),
        track_id=np.array([r[2] for r in rows]),
        path=[f"p{r[0]}.jpg" for r in rows],
        pid=pid,
    )


def identities(st) -> dict:
    table = st.tracklets()
    return dict(zip(table.keys, table.identity.tolist()))


def persons(st) -> dict:
    """tracklet id -> the person its crops show (from the crops' pid)."""
    out = {}
    for key in st.tracklets().keys:
        cam, trk = (int(v) for v in key.split(":"))
        hits = st.search(st.get_tracklet(key)[0], 1, by="crop", cameras=[cam])[0]
        out[key] = hits[0].pid
    return out


def test_link_store_gives_each_person_one_identity(store_uri):
    with open_store(store_uri(), create=True, info=INFO) as st:
        st.add(site_crops())
        assert set(identities(st).values()) == {-1}
        report = link_store(st, threshold=0.5)
        got = identities(st)
        truth = persons(st)
        assert report.tracklets == len(got) and report.changed == len(got)
        assert report.identities == report.new_identities == len(set(truth.values())) == 8
        for a in got:  # one identity per person, one person per identity
            for b in got:
                assert (got[a] == got[b]) == (truth[a] == truth[b])
        assert sorted(set(got.values())) == list(range(1, 9))
        assert st.identity_log().next_id == 9 and st.identity_log().merges == []
        again = link_store(st, threshold=0.5)
        assert again.changed == 0 and again.merges == [] and identities(st) == got


def test_new_footage_joins_the_identities_already_given(store_uri):
    crops = site_crops(seed=1)
    early = crops.timestamp < np.median(crops.timestamp)
    with open_store(store_uri(), create=True, info=INFO) as st:
        st.add(crops.select(early))
        link_store(st, threshold=0.5)
        before = identities(st)
        st.add(crops.select(~early))
        report = link_store(st, threshold=0.5)
        after = identities(st)
        assert all(after[k] == v for k, v in before.items())  # kept
        assert report.merges == []
    with open_store(store_uri("once"), create=True, info=INFO) as st:
        st.add(crops)
        link_store(st, threshold=0.5)
        assert identities(st) == after  # as one run over everything, ids included


def test_merges_are_recorded_not_renumbered(store_uri):
    crops = site_crops(seed=2, people=3)
    with open_store(store_uri(), create=True, info=INFO) as st:
        st.add(crops)
        keys = st.tracklets().keys
        st.set_identities({k: 10 + i for i, k in enumerate(keys)}, next_id=40)  # all apart
        report = link_store(st, threshold=0.5)
        got = identities(st)
        assert len(set(got.values())) == 3
        final = dict(report.merges)
        for i, key in enumerate(keys):  # each old id leads to the new one through the merges
            old = 10 + i
            while old in final:
                assert final[old] < old
                old = final[old]
            assert got[key] == old
        assert len(report.merges) == len(keys) - 3
        log = st.identity_log()
        assert sorted((a, b) for a, b, _ in log.merges) == sorted(report.merges)
        assert log.next_id == 40  # ids are never reused


def test_scope_and_transitions(store_uri):
    crops = site_crops(seed=3)
    with open_store(store_uri(), create=True, info=INFO) as st:
        st.add(crops)
        link_store(st, cameras=[1], threshold=0.5)
        got = identities(st)
        assert all((v >= 0) == k.startswith("1:") for k, v in got.items())
        none = Transitions({})  # no move between cameras allowed
        link_store(st, threshold=0.5, transitions=none)
        table = st.tracklets(features=True)
        t = LinkInput(table.keys, table.camera, table.start, table.end, table.features)
        assert violations(t, table.identity, none) == []
        assert all(len(set(table.camera[table.identity == i])) == 1 for i in table.identity)


def test_forget_a_person_leaves_nothing(store_uri):
    crops = site_crops(seed=4)
    with open_store(store_uri(), create=True, info=INFO) as st:
        st.add(crops)
        link_store(st, threshold=0.5)
        truth = persons(st)
        got = identities(st)
        victim = got[next(iter(got))]
        keys = [k for k, v in got.items() if v == victim]
        person = truth[keys[0]]
        n_crops = int((crops.pid == person).sum())
        before = st.stats().crops
        assert st.delete_identity(victim) == n_crops
        assert st.stats().crops == before - n_crops
        assert st.stats().tracklets == len(got) - len(keys)
        assert len(st.tracklets(identities=[victim])) == 0
        assert victim not in identities(st).values()
        hits = st.search(crops.features[crops.pid == person], 50, by="crop")
        assert all(h.pid != person for row in hits for h in row)
        for key in keys:
            with pytest.raises(StoreError):
                st.get_tracklet(key)
        with pytest.raises(IdentityNotFoundError):
            st.delete_identity(victim)
        link_store(st, threshold=0.5)  # the others keep theirs; no id comes back
        assert victim not in identities(st).values()
        assert all(identities(st)[k] == v for k, v in got.items() if v != victim)


def test_a_deleted_tracklet_loses_its_identity(store_uri):
    crops = site_crops(seed=5)
    with open_store(store_uri(), create=True, info=INFO) as st:
        st.add(crops)
        link_store(st, threshold=0.5)
        key = st.tracklets().keys[0]
        cam, trk = (int(v) for v in key.split(":"))
        st.delete(track=key)
        mask = (crops.camera == cam) & (crops.track_id == trk)
        st.add(crops.select(mask))  # the same tracklet id again: a new tracklet
        assert identities(st)[key] == -1
        assert st.set_identities({"9:99": 3, key: 2}) == 1  # unknown ids are skipped
        assert identities(st)[key] == 2


def test_both_backends_give_the_same_identities(tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    crops = site_crops(seed=6, people=12)
    out = []
    for uri in (str(tmp_path / "e"), f"milvus://{tmp_path / 'm.db'}"):
        with open_store(uri, create=True, info=INFO) as st:
            st.add(crops)
            link_store(st)  # the threshold chosen from the data
            link_store(st, cameras=[2], after=1000.0)
            out.append((identities(st), st.tracklets().records()))
    assert out[0] == out[1]
