"""``partreid ingest`` / ``search --store`` / ``store delete|stats``: footage into a store and the
investigator's questions, against brute-force references; idempotent, resumable after kill -9,
and clear errors for what a user can get wrong."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from partreid.checkpoint import model_meta, save_checkpoint
from partreid.cli import main
from partreid.commands.ingest import crop_ids, ingest_command, open_timed_source
from partreid.config import load_config
from partreid.data.io import list_image_files
from partreid.data.names import market_labels
from partreid.inference import Extractor
from partreid.models import build_model
from partreid.store import open_store
from partreid.store.query import parse_cameras, records
from partreid.store.query import search_store as search_hits
from partreid.utils.times import parse_time


def search_store(*args, **kwargs):
    """The store's hits for one query as the records the CLI and the server answer."""
    return records(search_hits(*args, **kwargs))


T0 = "2026-12-03T14:00:00Z"


@pytest.fixture(scope="module")
def crops(tiny_synthetic):
    """The tiny data set's gallery folder: Market names give the cameras."""
    return os.path.join(tiny_synthetic, "bounding_box_test")


@pytest.fixture(scope="module")
def feats(ckpt, crops):
    """Unit-norm features, cameras and paths of every crop, computed without the store."""
    paths = list_image_files(crops)[0]
    f = Extractor(ckpt, device="cpu", num_workers=0, progress=False)(paths)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    cams = np.asarray(market_labels(paths)[1]) + 1
    return f, cams, paths


def _ingest(ckpt, source, store, **kw):
    kw.setdefault("start_time", T0)
    return ingest_command(ckpt, source, store, device="cpu", num_workers=0, progress=False, **kw)


def _brute(feats, query, cams, keep, k):
    f, cam, paths = feats
    idx = np.flatnonzero(np.isin(cam, cams) & keep)
    d = np.maximum(2 - 2 * f[idx] @ query, 0)
    order = np.lexsort((idx, d))[:k]  # (ties by id are rare on real features)
    return [paths[i] for i in idx[order]], d[order]


def test_ingest_is_idempotent_and_search_equals_brute_force(ckpt, crops, feats, tmp_path):
    store = str(tmp_path / "site")
    rep = _ingest(ckpt, crops, store)
    assert rep.added == len(feats[2]) and rep.already == 0
    again = _ingest(ckpt, crops, store)
    assert again.added == 0 and again.already == len(feats[2])
    with open_store(store) as st:
        s = st.stats()
        assert s.crops == len(feats[2])
        assert s.cameras == {int(c): int((feats[1] == c).sum()) for c in set(feats[1])}
        q = feats[0][3]
        for cams in ([1], [2, 3], sorted(set(feats[1]))):
            got = search_store(st, q[None], 10, by="crop", cameras=cams)
            paths, dist = _brute(feats, q, cams, np.ones(len(feats[2]), bool), 10)
            assert [r["path"] for r in got] == paths
            np.testing.assert_allclose([r["distance"] for r in got], dist, atol=1e-5)


def test_time_filters_and_delete(ckpt, crops, feats, tmp_path):
    store = str(tmp_path / "site")
    names = sorted(os.listdir(crops))
    first, second = tmp_path / "morning", tmp_path / "noon"  # the same crops, two times
    for folder, t in ((first, "2026-12-03T09:00:00"), (second, "2026-12-03T12:00:00+01:00")):
        folder.mkdir()
        for n in names:
            os.symlink(os.path.join(crops, n), folder / n)
        _ingest(ckpt, str(folder), store, start_time=t)
    with open_store(store) as st:
        q = feats[0][5][None]
        morning = search_store(st, q, 5, by="crop", before=parse_time("2026-12-03T10:00:00"))
        noon = search_store(st, q, 5, by="crop", after=parse_time("2026-12-03T10:00:00"))
    assert all(r["time"].startswith("2026-12-03T09:00") for r in morning)
    assert all(r["time"].startswith("2026-12-03T11:00") for r in noon)  # +01:00 is 11:00 UTC
    assert [r["distance"] for r in morning] == [r["distance"] for r in noon]
    assert main(["store", "delete", store, "--before", "2026-12-03T10:00:00"]) == 0
    with open_store(store) as st:
        assert st.stats().crops == len(names)
        left = search_store(st, q, 50, by="crop")
    assert all(r["time"].startswith("2026-12-03T11:00") for r in left)
    cam = int(feats[1][0])
    assert main(["store", "delete", store, "--camera", str(cam)]) == 0
    with open_store(store) as st:
        assert cam not in st.stats().cameras
        assert all(r["camera"] != cam for r in search_store(st, q, 50, by="crop"))


@pytest.fixture
def video(tmp_path, write_video):
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(6)]
    path = tmp_path / "cam7.mkv"
    write_video(path, frames)
    rows = [
        f"{t},{tid},{5 + 4 * t},{3 + tid},20,40,1,-1,-1,-1" for t in range(1, 7) for tid in (1, 2)
    ]
    (tmp_path / "gt.txt").write_text("\n".join(rows) + "\n")
    return str(path), str(tmp_path / "gt.txt")


def test_video_tracklets_times_and_query_by_tracklet(ckpt, video, tmp_path):
    path, boxes = video
    store = str(tmp_path / "site")
    _ingest(ckpt, path, store, boxes=boxes, camera=7, fps=2.0)
    with open_store(store) as st:
        s = st.stats()
        assert s.crops == 12 and s.tracklets == 2 and s.cameras == {7: 12}
        assert s.first == parse_time(T0) and s.last == parse_time(T0) + 2.5  # frame 6
        feat, meta = st.get_tracklet("7:1")
        hits = st.search(np.zeros((1, st.dim), np.float32) + feat, 12, by="crop")[0]
    crop = np.stack([st_feat for st_feat in _crop_feats(ckpt, path, boxes, track=1)])
    mean = crop.mean(0)
    np.testing.assert_allclose(feat, mean / np.linalg.norm(mean), atol=1e-5)
    assert {h.tracklet for h in hits} == {"7:1", "7:2"}
    code = main(
        ["search", "--store", store, "--tracklet", "7:1", "--out", str(tmp_path / "r.json")]
    )
    assert code == 0
    with open(tmp_path / "r.json") as f:
        res = json.load(f)["results"]
    assert [r["tracklet"] for r in res] == ["7:2"]  # the query's own tracklet is left out
    assert res[0]["start"] == "2026-12-03T14:00:00.000Z" and res[0]["n_crops"] == 6
    with open_store(store) as st:  # by crop, the query's own 6 crops leave room for the others
        feat, _ = st.get_tracklet("7:1")
        crops = search_store(st, feat[None], 4, by="crop", exclude="7:1")
    assert [r["tracklet"] for r in crops] == ["7:2"] * 4


def _crop_feats(ckpt, path, boxes, track):
    ext = Extractor(ckpt, device="cpu", num_workers=0, progress=False)
    src, _ = open_timed_source(path, boxes, 7, T0, 2.0)
    f = ext.extract(path, boxes=boxes)
    keep = f.track_ids == track
    g = f.features[keep]
    assert len(src) == 12
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def test_manifest_times_and_cameras(crops, tmp_path):
    """Ingest reads a manifest with the one reader: its timestamp and camera columns, or camid
    (0-based) with --start-time; --camera wins over the file."""
    a, b = (os.path.join(crops, n) for n in sorted(os.listdir(crops))[:2])
    timed = tmp_path / "timed.csv"
    timed.write_text(
        "image,timestamp,camera,track_id,frame\n"
        f"{a},2026-12-03T14:00:00Z,4,1,1\n{b},1796306460,5,2,9\n"
    )
    src, timing = open_timed_source(str(timed), None, None, None, None)
    assert timing.timestamp.tolist() == [1796306400.0, 1796306460.0]  # 14:00 and 14:01 UTC
    assert timing.camera.tolist() == [4, 5] and src.track_ids.tolist() == [1, 2]
    assert open_timed_source(str(timed), None, 9, None, None)[1].camera.tolist() == [9, 9]
    plain = tmp_path / "plain.csv"
    plain.write_text(f"image,pid,camid\n{a},1,0\n{b},2,2\n")
    _, timing = open_timed_source(str(plain), None, None, T0, None)
    assert timing.camera.tolist() == [1, 3] and (timing.timestamp == parse_time(T0)).all()
    with pytest.raises(ValueError, match="when was it recorded"):
        open_timed_source(str(plain), None, None, None, None)
    blank = tmp_path / "blank.csv"
    blank.write_text(f"image,timestamp,camera\n{a},1796306400,\n{b},1796306400,2\n")
    with pytest.raises(ValueError, match="blank.csv: rows without a camera"):
        open_timed_source(str(blank), None, None, None, None)
    bad = tmp_path / "bad.csv"
    bad.write_text(f"image,timestamp\n{a},1796306400\n{b},noon\n")
    with pytest.raises(ValueError, match=r"(?s)1 row\(s\) of .*bad.csv.*line 3: timestamp 'noon'"):
        open_timed_source(str(bad), None, None, None, None)


WRITER = textwrap.dedent(
    """
    import sys
    from partreid.commands import ingest
    ingest.ADD_ROWS = 8
    ingest.ingest_command(sys.argv[1], sys.argv[2], sys.argv[3], start_time="2026-12-03T14:00:00",
                          device="cpu", batch_size=4, num_workers=0, progress=False)
    """
)


def _rows(store):
    try:
        with sqlite3.connect(os.path.join(store, "meta.sqlite"), timeout=1) as db:
            return db.execute("SELECT count(*) FROM crops").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_kill_during_ingest_then_resume_gives_every_crop_once(ckpt, crops, feats, tmp_path):
    store = str(tmp_path / "site")
    n = len(feats[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen([sys.executable, "-c", WRITER, ckpt, crops, store], env=env)
    deadline = time.time() + 120
    while _rows(store) < 16 and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    part = _rows(store)
    assert 0 < part < n, f"the kill came at {part} of {n} crops"
    rep = _ingest(ckpt, crops, store)
    assert rep.already == part and rep.added == n - part
    src, timing = open_timed_source(crops, None, None, T0, None)
    with open_store(store) as st:
        assert st.stats().crops == n and st.contains(crop_ids(src, timing.camera)).all()


def test_both_backends_give_the_same_answers(ckpt, crops, feats, tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    stores = [str(tmp_path / "site"), f"milvus://{tmp_path / 'site.db'}"]
    for s in stores:
        _ingest(ckpt, crops, s)
    q = feats[0][7][None]
    answers = []
    for s in stores:
        with open_store(s) as st:
            answers.append(
                [
                    search_store(st, q, 10, by=by, cameras=cams)
                    for by in ("crop", "tracklet")
                    for cams in (None, [1, 2])
                ]
            )
    for a, b in zip(*answers):
        assert [r.get("path", r.get("best_path")) for r in a] == [
            r.get("path", r.get("best_path")) for r in b
        ]
        np.testing.assert_allclose(
            [r["distance"] for r in a], [r["distance"] for r in b], atol=1e-5
        )


def _other_checkpoint(path, backbone="resnet18", distance="cosine"):
    cfg = load_config(
        None,
        [
            "model.name=bot",
            f"model.backbone={backbone}",
            "model.pretrained=false",
            "input.height=64",
            "input.width=32",
            f"eval.distance={distance}",
        ],
    )
    torch.manual_seed(1)
    model = build_model("bot", 5, backbone=backbone, pretrained=False)
    save_checkpoint(str(path), model.state_dict(), model_meta(cfg, model, 5))
    return str(path)


def _err(capsys, *argv):
    assert main(list(argv)) == 2
    return capsys.readouterr().err


def test_clear_errors(ckpt, crops, video, tmp_path, capsys):
    store = str(tmp_path / "site")
    _ingest(ckpt, crops, store)
    other = _other_checkpoint(tmp_path / "other.pth", distance="euclidean")
    err = _err(capsys, "ingest", other, crops, "--store", store, "--start-time", T0)
    assert "model 'bot'" in err and "fingerprint" in err and ckpt in err and other in err
    wide = _other_checkpoint(tmp_path / "wide.pth", backbone="resnet50")
    err = _err(capsys, "ingest", wide, crops, "--store", store, "--start-time", T0)
    assert "2048" in err and "512" in err
    err = _err(capsys, "ingest", ckpt, crops, "--store", "foo://x", "--start-time", T0)
    assert "foo://x" in err and "unknown scheme" in err
    err = _err(capsys, "ingest", ckpt, crops, "--store", "milvus://127.0.0.1:1", "--start-time", T0)
    assert "127.0.0.1:1" in err
    err = _err(
        capsys, "ingest", ckpt, video[0], "--store", store, "--camera", "7", "--start-time", T0
    )
    assert "cam7.mkv is a video" in err and "--boxes" in err
    err = _err(capsys, "ingest", ckpt, crops, "--store", store, "--start-time", "yesterday")
    assert "--start-time 'yesterday' is not a time" in err and "ISO 8601" in err
    err = _err(capsys, "search", "--store", store, crops, "--after", "14h")
    assert "--after '14h' is not a time" in err
    err = _err(capsys, "search", "--store", store, crops, "--cameras", "x")
    assert "--cameras 'x'" in err


def test_parse_helpers():
    assert parse_cameras("3,4,7") == [(3, 4), (7, 7)]  # merged ranges, never expanded
    assert parse_cameras("5-3,1") == [(1, 1), (3, 5)]
    assert parse_cameras(None) is None
    assert parse_time("2026-12-03T14:00:00Z") == parse_time("2026-12-03T15:00:00+01:00")
    assert parse_time("1700000000.5") == 1700000000.5
