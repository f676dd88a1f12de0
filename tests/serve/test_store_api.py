"""``partreid serve --store``: the store's API against search_store called directly, its
filters, the crops it serves, the access token and the audit log."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import types

import numpy as np
import pytest
from PIL import Image

from partreid.errors import InvalidValueError, NotFoundError
from partreid.store.query import records
from partreid.store.query import search_store as search_hits
from partreid.utils.times import parse_time


def search_store(*args, **kwargs):
    """The store's hits for one query as the records the CLI and the server answer."""
    return records(search_hits(*args, **kwargs))


T = "2026-12-03T"
TOKEN = "s3cret-token-for-the-tests-0123456789"


@pytest.fixture(scope="module", params=["embedded", "milvus-server"])
def served(request, store_setup):
    """The store the app serves: the session's embedded one, or the same footage ingested
    into a collection of the session's Milvus server (dropped after the module)."""
    if request.param == "embedded":
        yield store_setup
        return
    from partreid.commands.ingest import ingest_command
    from partreid.store import open_store

    base = request.getfixturevalue("milvus_server_uri")
    name = f"serve_{os.getpid()}"
    uri = f"{base}/{name}"
    common = dict(device="cpu", batch_size=32, num_workers=0, progress=False)
    ingest_command(store_setup["checkpoint"], store_setup["manifest"], uri, **common)
    ingest_command(
        store_setup["checkpoint"],
        store_setup["video"],
        uri,
        boxes=store_setup["boxes"],
        camera=9,
        start_time="2026-12-03T14:30:00",
        **common,
    )
    store = open_store(uri)
    yield {**store_setup, "store": store}
    store.close()
    _drop_collections(base, name)


def _drop_collections(base_uri: str, prefix: str) -> None:
    import pymilvus

    creds, _, hostport = base_uri.split("://", 1)[1].rpartition("@")
    c = pymilvus.MilvusClient(uri=f"http://{hostport}", token=creds)
    for coll in c.list_collections():
        if coll.startswith(prefix + "_"):
            c.drop_collection(coll)
    c.close()


@pytest.fixture(scope="module")
def sclient(served):
    """A TestClient over the store app (no token, no audit), on each backend."""
    from fastapi.testclient import TestClient

    from partreid.serve import create_app

    with TestClient(create_app(served["worker"], store=served["store"])) as c:
        yield c


@pytest.fixture(scope="module")
def guarded(store_setup, tmp_path_factory):
    """A token-protected app with an audit log over a copy of the store (deletions happen)."""
    from fastapi.testclient import TestClient

    from partreid.serve import create_app
    from partreid.serve.access import AuditLog
    from partreid.store import open_store

    root = tmp_path_factory.mktemp("guarded")
    copy = str(root / "store")
    shutil.copytree(store_setup["store_dir"], copy)
    audit = AuditLog(str(root / "audit.log"))
    with open_store(copy) as store:
        app = create_app(store_setup["worker"], store=store, token=TOKEN, audit=audit)
        with TestClient(app) as c:
            yield {"client": c, "store": store, "audit": audit.path}
    audit.close()


def _query_image(store_setup) -> str:
    """A crop of the store (camera 2, identity 9) as the uploaded query."""
    return store_setup["query_image"]


def _feature(worker, path) -> np.ndarray:
    """The query feature as the server computes it (same preprocessing, same model)."""
    img = Image.open(path).convert("RGB")
    return np.asarray(worker.extractor([worker.preprocess(img)]), np.float32)


def _same(api_rows, ref_rows, by):
    key = "tracklet" if by == "tracklet" else "id"
    assert [r[key] for r in api_rows] == [r[key] for r in ref_rows]
    np.testing.assert_allclose(
        [r["distance"] for r in api_rows], [r["distance"] for r in ref_rows], atol=1e-5
    )
    for a, b in zip(api_rows, ref_rows):
        assert {k: a[k] for k in b if k != "distance"} == {
            k: v for k, v in b.items() if k != "distance"
        }


def _check_filters(rows, by, cams, after, before):
    for r in rows:
        assert r["camera"] in cams
        if by == "tracklet":  # the span overlaps [after, before)
            assert parse_time(r["end"]) >= after and parse_time(r["start"]) < before
        else:
            assert after <= parse_time(r["time"]) < before


@pytest.mark.parametrize("by", ["tracklet", "crop"])
def test_upload_search_equals_search_store_with_filters(sclient, served, by):
    path = _query_image(served)
    with open(path, "rb") as f:
        data = f.read()
    feat = _feature(served["worker"], path)
    store = served["store"]
    for cams, after, before in [
        ("", None, None),
        ("2,9", f"{T}14:30:00", f"{T}15:00:01"),
        ("1-3", f"{T}14:00:00.5", f"{T}16:00:00Z"),
    ]:
        params = {"topk": 8, "by": by, "cameras": cams}
        params.update({k: v for k, v in (("after", after), ("before", before)) if v})
        r = sclient.post(
            "/api/store/search", params=params, files={"image": ("q.jpg", data, "image/jpeg")}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        c = [int(x) for x in cams.replace("-", ",").split(",")] if cams else None
        c = list(range(c[0], c[1] + 1)) if cams == "1-3" else c
        t0 = parse_time(after) if after else None
        t1 = parse_time(before) if before else None
        ref = search_store(store, feat, 8, by, c, t0, t1)
        assert ref, "the reference found nothing: the test would prove nothing"
        _same(body["results"], ref, by)
        assert body["query"]["sha256"] == hashlib.sha256(data).hexdigest()
        ranges = {"": None, "2,9": [[2, 2], [9, 9]], "1-3": [[1, 3]]}[cams]  # never expanded
        assert body["filters"]["cameras"] == ranges and body["filters"]["by"] == by
        if cams:
            _check_filters(body["results"], by, set(c), t0, t1)
    if by == "tracklet":  # the query's own tracklet comes first, grouped: 2 crops of id 9
        first = sclient.post("/api/store/search", files={"image": ("q.jpg", data)}).json()
        assert first["results"][0]["tracklet"] == "2:9" and first["results"][0]["n_crops"] == 2


@pytest.mark.parametrize("by", ["tracklet", "crop"])
def test_tracklet_search_equals_search_store_and_leaves_itself_out(sclient, served, by):
    store = served["store"]
    feat, _ = store.get_tracklet("9:1")
    params = {"tracklet": "9:1", "topk": 5, "by": by, "cameras": "9,1", "after": f"{T}14:00:00"}
    body = sclient.get("/api/store/search_tracklet", params=params).json()
    n_self = store.get_tracklet("9:1")[1]["n_crops"]
    ref = search_store(
        store, feat[None], 5 + n_self, by, [1, 9], parse_time(f"{T}14:00:00"), None, "9:1"
    )
    _same(body["results"], ref[:5], by)
    assert body["results"] and all(r["tracklet"] != "9:1" for r in body["results"])
    assert body["query"]["n_crops"] == 12 and body["query"]["start"].startswith(f"{T}14:30:00")
    assert {r["camera"] for r in body["results"]} <= {1, 9}


def test_crop_endpoint_serves_returned_crops_only(sclient, store_setup):
    body = sclient.get(
        "/api/store/search_tracklet", params={"tracklet": "9:2", "by": "crop", "cameras": "9"}
    ).json()
    video_hits = [r for r in body["results"] if r["path"].endswith(".mp4")]
    assert video_hits
    for r in video_hits[:3]:  # cut from the video frame: the 32 x 64 box, the track's colour
        img = sclient.get(r["image_url"])
        assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
        crop = np.asarray(Image.open(io.BytesIO(img.content)).convert("RGB"), np.float32)
        assert crop.shape == (64, 32, 3)
        assert crop[8:-8, 8:-8].mean(axis=(0, 1))[0] > 150  # track 1 is red
    with open(_query_image(store_setup), "rb") as f:
        up = sclient.post("/api/store/search", files={"image": ("q.jpg", f.read())})
    best = up.json()["results"][0]
    img = sclient.get(best["image_url"])
    assert img.status_code == 200
    assert Image.open(io.BytesIO(img.content)).size == Image.open(best["best_path"]).size
    for bad in ["0" * 24, "..%2F..%2Fetc%2Fpasswd", best["crop_id"][:-1] + "x"]:
        r = sclient.get(f"/api/store/crops/{bad}")
        assert r.status_code == 404  # "../.." does not even reach the route
        assert "no such crop" in r.json()["detail"] or "%2F" in bad


@pytest.mark.parametrize(
    "params, field",
    [
        ({"after": "yesterday"}, "after"),
        ({"before": "2026-13-40T99:00"}, "before"),
        ({"after": f"{T}15:00", "before": f"{T}14:00"}, "before"),
        ({"cameras": "3-x"}, "cameras"),
        ({"cameras": "a,b"}, "cameras"),
        ({"topk": 0}, "topk"),
        ({"topk": 1000}, "topk"),
        ({"by": "person"}, "by"),
    ],
)
def test_bad_filters_are_422_naming_the_field(sclient, params, field):
    r = sclient.get("/api/store/search_tracklet", params={"tracklet": "9:1", **params})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(field), r.json()
    assert sclient.get("/api/store/stats").status_code == 200  # still serving


def test_unknown_tracklet_and_bad_upload(sclient):
    r = sclient.get("/api/store/search_tracklet", params={"tracklet": "7:777"})
    assert r.status_code == 404 and "tracklet" in r.json()["detail"]
    r = sclient.get("/api/store/search_tracklet", params={"tracklet": "nonsense"})
    assert r.status_code == 422 and r.json()["detail"].startswith("tracklet")
    r = sclient.post("/api/store/search", files={"image": ("x.png", b"not a png", "image/png")})
    assert r.status_code == 400 and "not an image" in r.json()["detail"]


def test_stats_and_health_describe_the_store(sclient, served):
    st = sclient.get("/api/store/stats").json()
    raw = served["store"].stats()
    assert (st["crops"], st["tracklets"]) == (raw.crops, raw.tracklets)
    assert [c["camera"] for c in st["cameras"]] == [1, 2, 3, 9]
    assert st["first"] == f"{T}14:00:00.000Z" and st["model"]["name"] == "bot"
    health = sclient.get("/api/health").json()
    assert health["mode"] == "store" and health["auth"] is False
    assert sclient.get("/api/gallery").status_code == 404  # no fixed gallery here
    page = sclient.get("/")
    assert page.status_code == 200 and "store.js" in page.text


def test_token_guards_every_api_route(guarded, monkeypatch):
    import partreid.serve.access as access

    c = guarded["client"]
    calls = []
    real = access.hmac.compare_digest
    monkeypatch.setattr(access.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    for method, url in [
        ("get", "/api/health"),
        ("get", "/api/store/stats"),
        ("get", "/api/store/search_tracklet?tracklet=9:1"),
        ("get", "/api/store/crops/" + "0" * 24),
        ("post", "/api/store/delete?camera=1"),
        ("post", "/api/store/search"),
    ]:
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}):
            r = getattr(c, method)(url, headers=headers)
            assert r.status_code == 401, (url, r.status_code)
            assert "token" in r.json()["detail"]
    assert calls, "tokens must be compared with hmac.compare_digest"
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert c.get("/api/store/stats", headers=ok).status_code == 200
    assert c.get("/").status_code == 200  # the page loads, and asks for the token
    assert c.get("/api/auth").json() == {"required": True, "ok": False}
    # the page's way: POST the token once, then an HttpOnly cookie (works for <img>)
    assert c.post("/api/login", json={"token": "nope"}).status_code == 401
    r = c.post("/api/login", json={"token": TOKEN})
    assert r.status_code == 200 and "httponly" in r.headers["set-cookie"].lower()
    assert "samesite=strict" in r.headers["set-cookie"].lower()
    assert c.get("/api/store/stats").status_code == 200
    assert c.get("/api/auth").json() == {"required": True, "ok": True}
    c.post("/api/logout")
    c.cookies.clear()
    assert c.get("/api/store/stats").status_code == 401


def _audit(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_audit_lines_and_deletion(guarded, store_setup):
    c, ok = guarded["client"], {"Authorization": f"Bearer {TOKEN}"}
    before = len(_audit(guarded["audit"]))
    with open(_query_image(store_setup), "rb") as f:
        data = f.read()
    params = {"cameras": "2,3", "after": f"{T}14:00", "topk": 4, "by": "crop"}
    r = c.post("/api/store/search", params=params, headers=ok, files={"image": ("q.jpg", data)})
    assert r.status_code == 200
    hit = r.json()["results"][0]
    r = c.get("/api/store/search_tracklet", params={"tracklet": "9:1"}, headers=ok)
    lines = _audit(guarded["audit"])[before:]
    assert [x["event"] for x in lines] == ["search", "search"]
    up, tr = lines
    assert up["query"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert up["filters"] == {
        "cameras": [[2, 3]],
        "after": f"{T}14:00:00.000Z",
        "before": None,
        "by": "crop",
        "topk": 4,
    }
    assert up["results"] == 4 and up["route"] == "/api/store/search" and up["client"]
    assert up["time"].endswith("Z")
    assert tr["query"] == {"tracklet": "9:1"} and tr["results"] == 10
    # deletion: audited, the tracklet is gone, and so are its crops' images
    assert c.get(hit["image_url"], headers=ok).status_code == 200
    r = c.post("/api/store/delete", params={"track": hit["tracklet"]}, headers=ok)
    assert r.status_code == 200 and r.json()["deleted"] == 2
    assert c.get(hit["image_url"], headers=ok).status_code == 404
    r = c.get("/api/store/search_tracklet", params={"tracklet": hit["tracklet"]}, headers=ok)
    assert r.status_code == 404
    last = _audit(guarded["audit"])[-1]
    assert last["event"] == "delete" and last["deleted"] == 2
    assert last["conditions"]["track"] == hit["tracklet"]
    r = c.post("/api/store/delete", headers=ok)  # no condition: refused, nothing deleted
    assert r.status_code == 400 and "condition" in r.json()["detail"]
    r = c.post("/api/store/delete", params={"camera": "x"}, headers=ok)
    assert r.status_code == 422 and r.json()["detail"].startswith("camera")


def test_exposure_needs_a_token_file(tmp_path):
    from partreid.serve.access import check_exposure
    from partreid.serve.app import serve_command

    for host in ("127.0.0.1", "127.3.2.1", "::1", "localhost", "[::1]"):
        assert check_exposure(host, None) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""):
        with pytest.raises(InvalidValueError, match="--token-file"):
            check_exposure(host, None)
    token = tmp_path / "token"
    for text, why in [("", "empty"), ("short", "at least"), ("two words here ok ok", "one word")]:
        token.write_text(text)
        token.chmod(0o600)
        with pytest.raises(InvalidValueError, match=why):
            check_exposure("0.0.0.0", str(token))
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    with pytest.raises(InvalidValueError, match="readable by every user"):
        check_exposure("0.0.0.0", str(token))
    token.chmod(0o600)
    assert check_exposure("0.0.0.0", str(token)) == TOKEN
    with pytest.raises(NotFoundError):
        check_exposure("0.0.0.0", str(tmp_path / "missing"))
    # refused before anything is loaded (the checkpoint does not even exist)
    with pytest.raises(InvalidValueError, match="--token-file"):
        serve_command("no-such.pth", store=str(tmp_path / "s"), host="0.0.0.0")


def test_store_of_another_model_is_refused(store_setup):
    from partreid.serve.app import check_store_model, default_audit_path

    w = store_setup["worker"]
    other = types.SimpleNamespace(
        info=types.SimpleNamespace(fingerprint=lambda: "0123456789abcdef", name="other"),
        extractor=w.extractor,
    )
    check_store_model(w, store_setup["store"])  # its own model: fine
    with pytest.raises(InvalidValueError, match="built with"):
        check_store_model(other, store_setup["store"])
    assert default_audit_path("/data/site", "/c") == os.path.join("/data/site", "audit.log")
    assert default_audit_path("milvus:///abs/site.db", "/c") == os.path.join("/c", "audit.log")


def test_gallery_server_with_a_token_is_guarded_too(serve_setup):
    from fastapi.testclient import TestClient

    from partreid.serve import create_app

    with TestClient(create_app(serve_setup["worker"], token=TOKEN)) as c:
        assert c.get("/api/health").status_code == 401
        assert c.get("/api/gallery/0/image").status_code == 401
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/api/health", headers=ok).json()["status"] == "ok"
        assert c.get("/").status_code == 200 and "auth.js" in c.get("/").text


def test_cli_refuses_an_exposed_server_without_a_token(tmp_path, capsys):
    from partreid.cli import main

    assert main(["serve", "no-such.pth", "--store", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "--token-file" in capsys.readouterr().err
