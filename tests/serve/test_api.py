"""The HTTP API against independent references: numpy brute-force ranking, the gallery files."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest


def _files(folder):
    return sorted(
        os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".jpg")
    )


def _upload(path, name=None, ctype="image/jpeg"):
    with open(path, "rb") as f:
        data = f.read()
    return {"image": (name or os.path.basename(path), data, ctype)}


def _reference(worker, query_feature, exclude=None):
    """Gallery rows by euclidean distance to ``query_feature`` (numpy, ties by row)."""
    g = worker.gallery.features.features.astype(np.float64)
    d = np.sqrt(((g - query_feature.astype(np.float64)) ** 2).sum(1))
    order = np.lexsort((np.arange(len(d)), d))
    if exclude is not None:
        order = order[order != exclude]
    return order, d


def _assert_ok(client):
    """The server still answers a valid request after a bad one."""
    r = client.get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_health_describes_model_gallery_and_limits(client, serve_setup):
    r = client.get("/api/health")
    assert r.status_code == 200
    body = r.json()
    assert body["model"]["name"] == "bot"
    assert body["model"]["input"] == [64, 32]
    assert body["model"]["heatmap"] is True
    files = _files(serve_setup["gallery"])
    assert body["gallery"]["size"] == len(files)
    assert body["gallery"]["identities_known"] is True
    cams = sorted({int(os.path.basename(p).split("_c")[1][0]) - 1 for p in files})
    assert body["gallery"]["cameras"] == cams
    assert body["limits"]["max_topk"] == 100


def test_api_docs_page_needs_no_internet(client):
    pytest.importorskip("fastapi_offline")
    page = client.get("/docs")
    assert page.status_code == 200
    srcs = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(
        r"url: '([^']+)'", page.text
    )
    assert srcs and all(u.startswith("/") for u in srcs), srcs  # nothing from another host
    assert client.get("/docs-static/swagger-ui-bundle.js").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {"/api/search", "/api/gallery", "/api/health"} <= set(spec["paths"])


def test_gallery_pages_cover_every_item_once(client, serve_setup):
    n = client.get("/api/health").json()["gallery"]["size"]
    seen = []
    for offset in range(0, n + 7, 7):
        page = client.get(f"/api/gallery?offset={offset}&limit=7").json()
        assert page["total"] == n
        assert len(page["items"]) == max(0, min(7, n - offset))
        seen += [it["index"] for it in page["items"]]
    assert seen == list(range(n))
    rels = {it["path"] for it in client.get(f"/api/gallery?limit={n}").json()["items"]}
    want = {os.path.relpath(p, serve_setup["gallery"]) for p in _files(serve_setup["gallery"])}
    assert rels == want


def test_gallery_filters_match_numpy(client, serve_setup):
    g = serve_setup["worker"].gallery
    cam = int(g.camids[0])
    pid = int(g.pids[0])
    for query, mask in (
        (f"camid={cam}", g.camids == cam),
        (f"pid={pid}", g.pids == pid),
        (f"camid={cam}&pid={pid}", (g.camids == cam) & (g.pids == pid)),
    ):
        page = client.get(f"/api/gallery?limit=200&{query}").json()
        assert page["total"] == int(mask.sum())
        assert [it["index"] for it in page["items"]] == np.flatnonzero(mask).tolist()
    assert client.get("/api/gallery?camid=12345").json() == {
        "total": 0,
        "offset": 0,
        "limit": 48,
        "items": [],
    }


def test_gallery_item_and_image(client, serve_setup):
    item = client.get("/api/gallery/3").json()
    assert item["index"] == 3
    r = client.get(item["image_url"])
    assert r.status_code == 200
    with open(os.path.join(serve_setup["gallery"], item["path"]), "rb") as f:
        assert r.content == f.read()
    r2 = client.get("/api/gallery/image", params={"path": item["path"]})
    assert r2.status_code == 200 and r2.content == r.content


def test_search_exact_gallery_image_is_first_and_ranking_matches_numpy(client, serve_setup):
    worker = serve_setup["worker"]
    files = _files(serve_setup["gallery"])
    target = files[5]
    r = client.post("/api/search?topk=8", files=_upload(target))
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    first = res[0]
    assert os.path.join(serve_setup["gallery"], first["path"]) == target
    assert first["distance"] == pytest.approx(0.0, abs=0.05)  # others are ~1-2 away
    qf = worker.extractor([target])[0]
    order, d = _reference(worker, qf)
    assert [x["index"] for x in res] == order[:8].tolist()
    np.testing.assert_allclose([x["distance"] for x in res], d[order[:8]], rtol=1e-3, atol=0.05)
    assert [x["rank"] for x in res] == list(range(1, 9))


def test_search_by_item_leaves_itself_out(client, serve_setup):
    worker = serve_setup["worker"]
    res = client.get("/api/search/item/2?topk=5").json()
    assert res["query"]["index"] == 2
    order, d = _reference(worker, worker.gallery.features.features[2], exclude=2)
    assert [x["index"] for x in res["results"]] == order[:5].tolist()
    pid = res["query"]["pid"]
    for x in res["results"]:
        assert x["match"] == (x["pid"] == pid)


def test_search_marks_matches_only_when_the_query_identity_is_known(client, serve_setup):
    target = _files(serve_setup["query"])[0]
    pid = int(os.path.basename(target).split("_")[0])
    res = client.post(f"/api/search?topk=10&pid={pid}", files=_upload(target)).json()["results"]
    assert [x["match"] for x in res] == [x["pid"] == pid for x in res]
    res = client.post("/api/search?topk=10", files=_upload(target)).json()["results"]
    assert all(x["match"] is None for x in res)


def test_rerank_switch_uses_the_index_reranking(client, serve_setup):
    worker = serve_setup["worker"]
    target = _files(serve_setup["query"])[1]
    r = client.post("/api/search?topk=10&rerank=true", files=_upload(target)).json()
    assert r["rerank"] is True
    qf = worker.extractor([target])
    dist, idx = worker.gallery.index.search(qf, topk=10, rerank=True)
    assert [x["index"] for x in r["results"]] == idx[0].tolist()
    np.testing.assert_allclose([x["distance"] for x in r["results"]], dist[0], atol=1e-5)


def test_heatmap_png_has_the_model_input_aspect(client, serve_setup):
    from PIL import Image

    target = _files(serve_setup["query"])[0]
    r = client.post("/api/heatmap", files=_upload(target))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.size[1] == 2 * img.size[0] and img.size[1] >= 64
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert arr.std() > 1.0  # a map, not a flat picture
    res = client.post("/api/search?heatmap=true&topk=3", files=_upload(target)).json()
    assert res["heatmap"].startswith("data:image/png;base64,")


def test_combined_heatmap_is_the_mean_of_normalised_maps():
    import torch
    from PIL import Image

    from partreid.serve.worker import heatmap_png

    a = torch.zeros(4, 2)
    a[0, 0] = 5.0  # hot top-left
    b = torch.zeros(4, 2)
    b[3, 1] = 0.1  # hot bottom-right, on another scale
    img = np.asarray(Image.open(io.BytesIO(heatmap_png({"a": a, "b": b}, 8, 4))).convert("RGB"))
    # both corners equally hot (each map normalised before averaging): jet's red channel
    assert img[0, 0, 0] == img[7, 3, 0] and img[0, 0, 0] > 100
    cold = img[0, 3].astype(int)  # top-right: cold in both maps -> jet's blue end
    hot = img[0, 0].astype(int)
    assert cold[2] > cold[0] and hot[0] > hot[2]


# ---------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small_client(serve_setup):
    """A client with small limits: 20,000-byte uploads, 10,000 pixels."""
    from fastapi.testclient import TestClient

    from partreid.serve import ServeLimits, create_app

    limits = ServeLimits(max_upload_bytes=20_000, max_pixels=10_000, max_topk=20, max_page_size=10)
    with TestClient(create_app(serve_setup["worker"], limits=limits)) as c:
        yield c


def _png(w, h):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 120, 40)).save(buf, "PNG")
    return buf.getvalue()


def test_upload_too_large_is_413_by_length_and_by_stream(small_client, serve_setup):
    big = os.urandom(50_000)
    r = small_client.post("/api/search", files={"image": ("big.jpg", big, "image/jpeg")})
    assert r.status_code == 413 and "limit of 20000 bytes" in r.json()["detail"]
    _assert_ok(small_client)

    def chunks():  # no Content-Length: the limit applies while reading
        yield (
            b'--abc\r\nContent-Disposition: form-data; name="image"; filename="x.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n"
        )
        for _ in range(20):
            yield b"x" * 8192

    r = small_client.post(
        "/api/search",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=abc"},
    )
    assert r.status_code == 413 and "upload limit" in r.json()["detail"]
    _assert_ok(small_client)
    ok = small_client.post("/api/search?topk=3", files=_upload(_files(serve_setup["query"])[0]))
    assert ok.status_code == 200 and len(ok.json()["results"]) == 3


def test_not_an_image_is_400(client, serve_setup):
    r = client.post(
        "/api/search", files={"image": ("x.jpg", b"hello, not a picture", "image/jpeg")}
    )
    assert r.status_code == 400 and "not an image" in r.json()["detail"]
    r = client.post("/api/search", files={"image": ("x.jpg", b"", "image/jpeg")})
    assert r.status_code == 400 and "empty" in r.json()["detail"]
    _assert_ok(client)


def test_truncated_image_is_400(client, serve_setup):
    with open(_files(serve_setup["query"])[0], "rb") as f:
        data = f.read()
    r = client.post(
        "/api/search", files={"image": ("cut.jpg", data[: len(data) // 2], "image/jpeg")}
    )
    assert r.status_code == 400 and "truncated" in r.json()["detail"]
    _assert_ok(client)
    from PIL import Image

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 64, 3), np.uint8))
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        noise.save(buf, fmt)
        cut = buf.getvalue()[: int(len(buf.getvalue()) * 0.8)]  # header intact, pixels cut
        r = client.post("/api/search", files={"image": (f"cut.{fmt}", cut, "image/png")})
        assert r.status_code == 400 and "truncated" in r.json()["detail"], r.text
        _assert_ok(client)
    assert (
        client.post("/api/search", files=_upload(_files(serve_setup["query"])[0])).status_code
        == 200
    )


def _bomb_png(w, h):
    """A valid grey PNG of w x h black pixels, built directly with zlib (fast, tiny)."""
    import struct
    import zlib

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    raw = zlib.compress(b"\x00" * ((w + 1) * h), 9)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def test_decompression_bomb_is_413_without_decoding(client, small_client):
    from PIL import Image

    bomb = _bomb_png(6000, 6000)  # 36 megapixels in a few tens of kilobytes
    assert len(bomb) < 100_000
    assert Image.open(io.BytesIO(bomb)).size == (6000, 6000)  # a real PNG, as PIL sees it
    r = client.post("/api/search", files={"image": ("bomb.png", bomb, "image/png")})
    assert r.status_code == 413 and "pixels" in r.json()["detail"]
    r = small_client.post("/api/search", files={"image": ("b.png", _png(200, 100), "image/png")})
    assert r.status_code == 413 and "limit of 10000" in r.json()["detail"]
    _assert_ok(client)
    r = small_client.post("/api/search", files={"image": ("ok.png", _png(50, 100), "image/png")})
    assert r.status_code == 200


def test_pil_bomb_warning_is_an_error_once_installed(monkeypatch):
    import warnings

    from PIL import Image

    from partreid.serve import ServeLimits, UploadError, decode_upload
    from partreid.serve.worker import install_pixel_limit

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    with warnings.catch_warnings():
        install_pixel_limit(10_000)
        assert Image.MAX_IMAGE_PIXELS == 10_000
        with pytest.raises(Image.DecompressionBombWarning):
            Image.open(io.BytesIO(_png(120, 100)))  # 1.2x the limit: PIL only warns by default
        # decode_upload with a looser limit of its own still meets PIL's process-wide one
        with pytest.raises(UploadError) as e:
            decode_upload(_png(120, 100), ServeLimits(max_pixels=1_000_000))
        assert e.value.status == 413


def test_wrong_content_types_are_415(client, serve_setup):
    r = client.post("/api/search", files={"image": ("a.txt", b"plain text", "text/plain")})
    assert r.status_code == 415 and "text/plain" in r.json()["detail"]
    r = client.post("/api/search", json={"image": "abc"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    gif_like = io.BytesIO()
    from PIL import Image

    Image.new("L", (8, 8)).save(gif_like, "ICO")
    r = client.post("/api/search", files={"image": ("a.ico", gif_like.getvalue(), "image/x-icon")})
    assert r.status_code == 415 and "ICO" in r.json()["detail"]
    _assert_ok(client)


@pytest.mark.parametrize(
    "path,status",
    [
        ("../outside/0099_c1_secret.jpg", 400),
        ("../../etc/passwd", 400),
        ("/etc/passwd", 400),
        ("sub/../../x.jpg", 400),
        ("0099_c1_link.jpg", 403),  # a symlink in the gallery that points out of it
        ("nothere.jpg", 404),
        ("", 400),
    ],
)
def test_gallery_paths_stay_inside_the_gallery(client, path, status):
    r = client.get("/api/gallery/image", params={"path": path})
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert b"JFIF" not in r.content
    _assert_ok(client)


def test_gallery_item_that_is_a_symlink_out_is_refused(client, serve_setup):
    g = serve_setup["worker"].gallery
    i = int(np.flatnonzero(g.rel_paths == "0099_c1_link.jpg")[0])
    r = client.get(f"/api/gallery/{i}/image")
    assert r.status_code == 403 and "outside the gallery" in r.json()["detail"]
    assert client.get(f"/api/gallery/{len(g)}/image").status_code == 404
    r = client.get("/api/gallery/-1")  # below the schema's minimum: named, with its bound
    assert r.status_code == 422 and r.json()["detail"].startswith("index"), r.text
    _assert_ok(client)


def test_limits_on_topk_and_page_size_are_422_with_a_message(small_client):
    r = small_client.get("/api/gallery?limit=11")
    assert r.status_code == 422 and "limit" in r.json()["detail"]
    r = small_client.get("/api/search/item/0?topk=21")
    assert r.status_code == 422 and "topk" in r.json()["detail"]
    r = small_client.get("/api/search/item/0?topk=0")
    assert r.status_code == 422
    _assert_ok(small_client)
    assert len(small_client.get("/api/search/item/0?topk=20").json()["results"]) == 20


def test_limits_are_validated():
    from partreid.serve import ServeLimits

    with pytest.raises(ValueError, match="max_topk"):
        ServeLimits(max_topk=0)
    with pytest.raises(ValueError, match="exceeds"):
        ServeLimits(max_topk=5, default_topk=10)


def test_batched_requests_each_get_their_own_results(serve_setup):
    """Jobs queued together (one forward pass, grouped searches) are answered per request."""
    from PIL import Image

    worker = serve_setup["worker"]
    files = _files(serve_setup["gallery"])[:6]
    tensors = [worker.preprocess(Image.open(f).convert("RGB")) for f in files]
    feats = worker.extractor(files)
    # mixed top-K and re-ranking, plus a feature query, all queued before the worker wakes
    futures = [
        worker.submit_image(t, topk=3 + (i % 2), rerank=(i % 3 == 0)) for i, t in enumerate(tensors)
    ]
    futures.append(worker.submit_feature(feats[2], topk=5, rerank=False))
    for i, fut in enumerate(futures[:-1]):
        dist, idx = fut.result(timeout=60)
        want_d, want_i = worker.gallery.index.search(
            feats[i : i + 1], topk=3 + (i % 2), rerank=(i % 3 == 0)
        )
        assert idx.tolist() == want_i[0].tolist()
        # batch composition changes the last float bits of the features; sqrt magnifies
        # that near 0 (neighbours here are ~1-2 apart)
        np.testing.assert_allclose(dist, want_d[0], rtol=1e-3, atol=0.05)
    dist, idx = futures[-1].result(timeout=60)
    assert idx[0] == worker.gallery.index.search(feats[2:3], topk=1)[1][0, 0]


def test_health_counts_the_workers_batches(client, serve_setup):
    """/api/health's worker counters grow by what a request made the worker do."""
    before = client.get("/api/health").json()["worker"]
    target = _files(serve_setup["gallery"])[3]
    assert client.post("/api/search?topk=3", files=_upload(target)).status_code == 200
    after = client.get("/api/health").json()["worker"]
    assert after["batches"] == before["batches"] + 1
    assert after["queries"] == before["queries"] + 1
    assert after["model_s"] > before["model_s"] and after["search_s"] > before["search_s"]
    assert after["busy_s"] >= after["model_s"] - before["model_s"]
    assert after["mean_batch"] == pytest.approx(after["queries"] / after["batches"])
    assert after["pending"] == 0
