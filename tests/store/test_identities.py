"""Site identities kept in a store (both backends): link_store gives every tracklet an identity,
linking twice changes nothing, new footage joins the identities already given, both backends
give the same identities, and forgetting a person leaves nothing of it behind."""

from __future__ import annotations

import numpy as np
import pytest

from partreid.store import IdentityNotFoundError, StoreError, open_store
from partreid.store.link import Tracklets as LinkInput
from partreid.store.link import Transitions, link_store, violations

INFO = {"dim": 16, "model": {"name": "test"}}  # site_crops: 16-d (tests/conftest.py)


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


def test_link_store_gives_each_person_one_identity(store_uri, site_crops):
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


def test_new_footage_joins_the_identities_already_given(store_uri, site_crops):
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


def test_merges_are_recorded_not_renumbered(store_uri, site_crops):
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


def test_scope_and_transitions(store_uri, site_crops):
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


def test_forget_a_person_leaves_nothing(store_uri, site_crops):
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


def test_a_deleted_tracklet_loses_its_identity(store_uri, site_crops):
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


def test_both_backends_give_the_same_identities(tmp_path, site_crops):
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


def test_search_by_identity_answers_people_with_routes(store_uri, site_crops):
    from partreid.store.identity import identity_counts, route_of, search_identities

    crops = site_crops(seed=7, people=6)
    with open_store(store_uri(), create=True, info=INFO) as st:
        st.add(crops)
        link_store(st, threshold=0.5)
        truth = persons(st)
        table = st.tracklets(features=True)
        key = table.keys[0]
        me = int(table.identity[0])
        hits = search_identities(st, table.features[0], topk=3)
        assert len(hits) == 3 and hits[0].identity == me and hits[0].distance < 0.05
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        assert len({h.identity for h in hits}) == 3
        route = hits[0].route
        mine = {k for k, v in truth.items() if v == truth[key]}
        assert {s.tracklet for s in route} == mine  # the whole route, every camera
        assert [s.start for s in route] == sorted(s.start for s in route)
        feat = dict(zip(table.keys, table.features))
        for s in route:  # each step's distance is its tracklet's to the query
            want = 2 - 2 * float(feat[s.tracklet] @ table.features[0])
            assert s.distance == pytest.approx(max(want, 0.0), abs=1e-5)
        rec = hits[0].record(1)
        assert rec["identity"] == me and rec["tracklets"] == len(route)
        assert rec["route"][0]["start"].endswith("Z")
        assert [s.tracklet for s in route_of(st, me)] == [s.tracklet for s in route]
        cam = route[0].camera  # filters choose who, the route stays whole
        hits = search_identities(st, table.features[0], topk=2, cameras=[cam])
        assert hits[0].identity == me and len(hits[0].route) == len(route)
        counts = identity_counts(st)
        assert counts["identities"] == 6 and counts["unlinked_tracklets"] == 0
        assert counts["per_camera"] == {
            c: len({truth[k] for k in truth if k.startswith(f"{c}:")}) for c in (1, 2, 3)
        }
        early = identity_counts(st, after=0.0, before=float(crops.timestamp.min()) + 1)
        assert early["identities"] == 1


def test_an_unlinked_tracklet_is_a_route_of_its_own(store_uri, site_crops):
    from partreid.store.identity import search_identities

    crops = site_crops(seed=8, people=3)
    with open_store(store_uri(), create=True, info=INFO) as st:
        st.add(crops)
        table = st.tracklets(features=True)
        hits = search_identities(st, table.features[0], topk=2)
        assert hits[0].identity is None and [s.tracklet for s in hits[0].route] == [table.keys[0]]
