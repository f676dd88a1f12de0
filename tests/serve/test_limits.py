"""Hostile requests: every value is bounded before it costs memory or time, a bad one is a 4xx
naming the parameter and its limit, and the server keeps serving; wrong tokens are slowed per
client (429 + Retry-After, audited) without locking out the right token of another client; the
CLI answers the same values in one line with exit status 2."""

from __future__ import annotations

import json
import shutil

import pytest

from partreid.cli import main
from partreid.store.base import MAX_ID
from partreid.store.query import MAX_CAMERA_TERMS, MAX_TOPK

TOKEN = "limits-test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def sclient(store_setup):
    """A TestClient over the shared store (only requests that change nothing)."""
    from fastapi.testclient import TestClient

    from partreid.serve import create_app

    with TestClient(create_app(store_setup["worker"], store=store_setup["store"])) as c:
        yield c


def _ids(body):
    return [r["tracklet"] for r in body["results"]]


def test_the_reported_camera_range_is_one_range(sclient, store_setup):
    """``cameras=1-300000000`` killed the server (a 3e8-element list): now one BETWEEN."""
    base = {"tracklet": "9:1", "topk": 20}
    r = sclient.get("/api/store/search_tracklet", params={**base, "cameras": "1-300000000"})
    assert r.status_code == 200, r.text
    assert r.json()["filters"]["cameras"] == [[1, 300000000]]
    every = sclient.get("/api/store/search_tracklet", params={**base, "cameras": "1,2,3,9"})
    assert _ids(r.json()) == _ids(every.json()) and _ids(every.json())
    widest = sclient.get("/api/store/search_tracklet", params={**base, "cameras": f"0-{MAX_ID}"})
    assert _ids(widest.json()) == _ids(every.json())


@pytest.mark.parametrize(
    "params, field, limit",
    [
        ({"before": "-1e308"}, "before", "1970-01-01"),  # was a 500 (OverflowError)
        ({"after": "1e308"}, "after", "9999-12-31T23:59:59Z"),
        ({"after": "nan"}, "after", "1970-01-01"),
        ({"before": "2026-12-03T14:00:00" + "0" * 60}, "before", "64 characters"),
        ({"cameras": ",".join(["1"] * (MAX_CAMERA_TERMS + 1))}, "cameras", "at most 64 terms"),
        ({"cameras": f"1-{MAX_ID + 1}"}, "cameras", str(MAX_ID)),
        ({"cameras": "1" * 5000}, "cameras", "characters"),
        ({"topk": 10**30}, "topk", "100"),
        ({"topk": -1}, "topk", "1"),
        ({"tracklet": "1:" + "9" * 50}, "tracklet", "45 characters"),
        ({"tracklet": "1:99999999999999999999"}, "tracklet", str(MAX_ID)),
        ({"tracklet": "1:-3"}, "tracklet", "CAMERA:TRACK"),
    ],
)
def test_bad_values_are_422_naming_parameter_and_limit(sclient, params, field, limit):
    r = sclient.get("/api/store/search_tracklet", params={"tracklet": "9:1", **params})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith(field) and limit in detail, detail
    assert sclient.get("/api/store/stats").status_code == 200


@pytest.mark.parametrize(
    "params, field",
    [
        ({"camera": "9" * 30}, "camera"),
        ({"camera": "-1"}, "camera"),
        ({"track": "x:1"}, "track"),
        ({"track": "17"}, "track"),  # a bare track needs a camera
        ({"before": "1e999"}, "before"),
    ],
)
def test_bad_deletions_are_422_and_delete_nothing(sclient, params, field):
    before = sclient.get("/api/store/stats").json()["crops"]
    r = sclient.post("/api/store/delete", params=params)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(field)
    assert sclient.get("/api/store/stats").json()["crops"] == before


def test_oversized_and_odd_requests(sclient, store_setup):
    r = sclient.get("/api/store/crops/" + "a" * 100)
    assert r.status_code == 422 and r.json()["detail"].startswith("crop_id")
    long_name = "x" * 100_000 + ".jpg"
    with open(store_setup["query_image"], "rb") as f:
        data = f.read()
    r = sclient.post("/api/store/search", files={"image": (long_name, b"junk", "image/jpeg")})
    assert r.status_code == 400 and len(r.json()["detail"]) < 400  # the name is cut
    r = sclient.post("/api/store/search", files={"image": ("q.jpg", data, "text/html")})
    assert r.status_code == 415 and r.json()["detail"].startswith("image")
    r = sclient.post(
        "/api/store/delete?camera=" + "1" * 100, headers={"content-type": "text/plain"}
    )
    assert r.status_code == 422  # a bad query is no "not multipart" 415
    for body in [
        b"[" * 4000,
        b'{"token": 5}',
        b"{}",
        b"\xff\xfe",
        b'{"token": "' + b"a" * 600 + b'"}',
    ]:
        r = sclient.post("/api/login", content=body)
        assert r.status_code == 422 and r.json()["detail"].startswith("token"), body[:20]
    r = sclient.post("/api/login", content=b" " * 5000)
    assert r.status_code == 413 and "4096" in r.json()["detail"]
    assert sclient.get("/api/health").json()["status"] == "ok"


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with almost no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [5000, 50000])  # over the 16 M pixel limit; over PIL's own
def test_an_image_claiming_too_many_pixels_is_413_before_decoding(sclient, side):
    files = {"image": ("bomb.png", _png_claiming(side, side), "image/png")}
    r = sclient.post("/api/store/search", files=files)
    assert r.status_code == 413 and "pixels" in r.json()["detail"], r.text
    assert sclient.get("/api/health").status_code == 200


# ------------------------------------------------------------------------- throttled sign-in


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def guarded(store_setup, tmp_path):
    """A token-protected app with an audit log over a copy of the store, a fake clock, and a
    client factory by address."""
    from fastapi.testclient import TestClient

    from partreid.serve import create_app
    from partreid.serve.access import AuditLog
    from partreid.store import open_store

    copy = str(tmp_path / "store")
    shutil.copytree(store_setup["store_dir"], copy)
    audit = AuditLog(str(tmp_path / "audit.log"))
    clock = Clock()
    with open_store(copy) as store:
        app = create_app(store_setup["worker"], store=store, token=TOKEN, audit=audit)
        app.state.throttle.clock = clock
        clients = {}

        def client(host: str):
            if host not in clients:
                clients[host] = TestClient(app, client=(host, 40000))
            return clients[host]

        yield {"client": client, "clock": clock, "audit": audit.path}
    audit.close()


def _audit(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _login(c, token):
    return c.post("/api/login", json={"token": token})


def test_wrong_tokens_are_slowed_per_client_and_audited(guarded):
    a, b, clock = guarded["client"]("10.0.0.1"), guarded["client"]("10.0.0.2"), guarded["clock"]
    for i in range(5):  # five different guesses are free
        assert _login(a, f"guess-number-{i}-xxxxxxxx").status_code == 401
    assert _login(a, "guess-number-0-xxxxxxxx").status_code == 401  # a repeat is no new guess
    assert _login(a, "guess-number-5-xxxxxxxx").status_code == 401  # the 6th: shut out 1 s
    r = _login(a, TOKEN)  # even the right token: the token is not looked at
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert "try again in 1 s" in r.json()["detail"]
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert a.get("/api/store/stats", headers=ok).status_code == 429
    assert a.get("/api/store/stats").status_code == 401  # no token: nothing to refuse
    # another client is not locked out
    r = _login(b, TOKEN)
    assert r.status_code == 200 and "httponly" in r.headers["set-cookie"].lower()
    assert b.get("/api/store/stats", headers=ok).status_code == 200
    # the wait doubles with each further guess, also for Bearer tokens on any route
    clock.t += 1.5
    bad = {"Authorization": "Bearer guess-number-6-xxxxxxxx"}
    assert a.get("/api/store/stats", headers=bad).status_code == 401
    r = a.get("/api/store/stats", headers=ok)
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    clock.t += 2.5
    assert _login(a, "guess-number-7-xxxxxxxx").status_code == 401
    assert _login(a, "x" * 20).headers["Retry-After"] == "4"
    # after the wait the right token is taken, and the slate is clean
    clock.t += 4.5
    assert a.get("/api/store/stats", headers=ok).status_code == 200
    assert _login(a, "guess-again-xxxxxxxxxxxx").status_code == 401
    assert _login(a, TOKEN).status_code == 200
    lines = _audit(guarded["audit"])
    failed = [x for x in lines if x["event"] in ("login_failed", "token_failed")]
    assert [x["client"] for x in failed] == ["10.0.0.1"] * len(failed)
    assert [x["guesses"] for x in failed] == [1, 2, 3, 4, 5, 5, 6, 7, 8, 1]
    assert [x["shut_out_s"] for x in failed] == [0, 0, 0, 0, 0, 0, 1, 2, 4, 0]
    assert failed[7]["event"] == "token_failed" and failed[7]["route"] == "/api/store/stats"
    assert failed[7]["refused_before"] == 2  # the 429s since the line before are counted
    assert sum(x["refused_before"] for x in failed) == 3  # the last one's: forgotten with it


def test_the_wait_is_capped_and_forgotten_after_a_quiet_hour(guarded):
    a, clock = guarded["client"]("2001:db8::1"), guarded["clock"]
    neighbour = guarded["client"]("2001:db8::2")  # the same /64: the same client
    waits = []
    for i in range(20):
        clock.t += 1000
        wrong = f"wrong-token-number-{i:03d}"
        assert _login(a if i % 2 else neighbour, wrong).status_code == 401
        waits.append(_login(a, wrong).headers.get("Retry-After"))  # a repeat: 401 or 429
    assert waits[:6] == [None] * 5 + ["1"] and waits[-1] == "900"
    clock.t += 3601
    assert _login(a, "wrong-token-after-an-hour").status_code == 401  # counted from 1 again
    assert _login(a, TOKEN).status_code == 200


# ------------------------------------------------------------------------------- the CLI


def _cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_cli_bounds_are_one_line_and_exit_2(store_setup, tmp_path, capsys):
    store = str(tmp_path / "store")
    shutil.copytree(store_setup["store_dir"], store)
    ok = ["search", "--store", store, "--tracklet", "9:1", "--out", str(tmp_path / "r.json")]
    code, err = _cli(capsys, *ok, "--cameras", "1-99999999999")  # was a MemoryError traceback
    assert code == 0, err
    with open(tmp_path / "r.json") as f:
        assert json.load(f)["cameras"] == [[1, 99999999999]]
    for extra, words in [
        (["--cameras", "1-99999999999999999999"], ["--cameras", str(MAX_ID)]),
        (["--before=-1e308"], ["--before", "1970-01-01"]),
        (["--topk", str(MAX_TOPK + 1)], ["--topk", str(MAX_TOPK)]),
    ]:
        code, err = _cli(capsys, *ok, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert all(w in err for w in words), err
    code, err = _cli(capsys, "store", "delete", store, "--camera", "9" * 30)
    assert code == 2 and "--camera" in err and len(err.strip().splitlines()) == 1
    code, err = _cli(capsys, "search", "--store", store, "--tracklet", "9:" + "1" * 50)
    assert code == 2 and "--tracklet" in err
