"""``partreid serve --store``: a person's route (site identities), searching from it, and
forgetting the person -- which leaves nothing of it in search, stats or the page."""

from __future__ import annotations

import json

import numpy as np
import pytest

TOKEN = "s3cret-token-for-the-tests-0123456789"
OK = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def linked(store_setup, linked_copy, tmp_path_factory):
    """A token-protected app with an audit log over a linked copy of the store."""
    from fastapi.testclient import TestClient

    from partreid.serve import create_app
    from partreid.serve.access import AuditLog
    from partreid.store import open_store

    audit = AuditLog(str(tmp_path_factory.mktemp("audit") / "audit.log"))
    with open_store(linked_copy()) as store:
        app = create_app(store_setup["worker"], store=store, token=TOKEN, audit=audit)
        with TestClient(app) as c:
            yield {"client": c, "store": store, "audit": audit.path}
    audit.close()


def _audit(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _person(store):
    """The identity with the most tracklets and one of its tracklets."""
    table = store.tracklets()
    ids, counts = np.unique(table.identity, return_counts=True)
    who = int(ids[np.argmax(counts)])
    return who, table.keys[int(np.nonzero(table.identity == who)[0][0])]


def test_route_of_a_tracklets_person(linked):
    from partreid.store.identity import route_of

    c, store = linked["client"], linked["store"]
    who, key = _person(store)
    assert c.get("/api/store/route", params={"tracklet": key}).status_code == 401
    r = c.get("/api/store/route", params={"tracklet": key}, headers=OK)
    assert r.status_code == 200
    body = r.json()
    want = route_of(store, who)
    assert body["identity"] == who and len(body["route"]) == len(want) >= 2
    assert [s["tracklet"] for s in body["route"]] == [s.tracklet for s in want]
    assert [s["start"] for s in body["route"]] == sorted(s["start"] for s in body["route"])
    for step in body["route"]:  # a crop per tracklet, of that tracklet
        assert step["image_url"] and c.get(step["image_url"], headers=OK).status_code == 200
    assert _audit(linked["audit"])[-1]["event"] == "route"
    r = c.get("/api/store/route", params={"tracklet": "777:1"}, headers=OK)
    assert r.status_code == 404 and r.json()["detail"].startswith("tracklet")
    r = c.get("/api/store/route", params={"tracklet": "x"}, headers=OK)
    assert r.status_code == 422 and r.json()["detail"].startswith("tracklet")


def test_search_from_a_route_leaves_the_route_out(linked):
    c, store = linked["client"], linked["store"]
    who, _ = _person(store)
    table = store.tracklets(identities=[who], features=True)
    r = c.get("/api/store/search_route", params={"identity": who, "topk": 5}, headers=OK)
    assert r.status_code == 200
    res = r.json()["results"]
    assert len(res) == 5 and not {x["tracklet"] for x in res} & set(table.keys)
    mean = table.features.mean(0)
    hits = store.search(mean, 5 + len(table), by="tracklet")[0]
    want = [h.tracklet for h in hits if h.tracklet not in set(table.keys)][:5]
    assert [x["tracklet"] for x in res] == want
    assert [x["rank"] for x in res] == [1, 2, 3, 4, 5]
    assert _audit(linked["audit"])[-1]["query"] == {"identity": who, "tracklets": len(table)}
    r = c.get("/api/store/search_route", params={"identity": "0"}, headers=OK)
    assert r.status_code == 422 and r.json()["detail"].startswith("identity")


def test_forget_a_person_leaves_nothing_on_the_page(linked):
    c, store = linked["client"], linked["store"]
    who, key = _person(store)
    route = c.get("/api/store/route", params={"tracklet": key}, headers=OK).json()["route"]
    keys = {s["tracklet"] for s in route}
    crops = sum(s["n_crops"] for s in route)
    before = c.get("/api/store/stats", headers=OK).json()["crops"]
    assert c.post("/api/store/delete_identity", params={"identity": who}).status_code == 401
    r = c.post("/api/store/delete_identity", params={"identity": who}, headers=OK)
    assert r.status_code == 200 and r.json()["deleted"] == crops
    assert r.json()["store"]["crops"] == before - crops
    last = _audit(linked["audit"])[-1]
    assert last["event"] == "delete" and last["conditions"] == {"identity": who}
    assert set(last["tracklets"]) == keys and last["deleted"] == crops
    for step in route:  # its crops are no longer served, its tracklets unknown
        assert c.get(step["image_url"], headers=OK).status_code == 404
        r = c.get("/api/store/route", params={"tracklet": step["tracklet"]}, headers=OK)
        assert r.status_code == 404
    other = next(k for k in store.tracklets().keys)
    r = c.get("/api/store/search_tracklet", params={"tracklet": other, "topk": 100}, headers=OK)
    assert not {x["tracklet"] for x in r.json()["results"]} & keys
    r = c.get(
        "/api/store/search_tracklet",
        params={"tracklet": other, "by": "crop", "topk": 100},
        headers=OK,
    )
    assert not {x["tracklet"] for x in r.json()["results"]} & keys
    assert who not in set(store.tracklets().identity.tolist())
    r = c.post("/api/store/delete_identity", params={"identity": who}, headers=OK)
    assert r.status_code == 404 and r.json()["detail"].startswith("identity")
