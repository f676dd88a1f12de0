"""``partreid ingest`` into a Milvus server: the embedded store's answers (the model in ONNX
Runtime on one side, PyTorch on the other), the CLI's store commands on it, and several ingest
processes at once, one per camera, one of them killed and restarted: every crop once, every
tracklet exact."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from partreid.cli import main
from partreid.commands.ingest import crop_ids, ingest_command, open_timed_source
from partreid.data.io import list_image_files
from partreid.inference import Extractor
from partreid.store import StoreError, open_store
from partreid.store.query import records, search_store
from partreid.utils.times import parse_time

from .test_ingest import _other_checkpoint

T0 = parse_time("2026-12-03T14:00:00Z")


def camera_manifests(crops: str, folder) -> dict:
    """One timed manifest per camera of a Market-style folder: track = identity, one crop per
    second within a track, camera c's tracks from T0 + c hours."""
    rows: dict = {}
    for path in list_image_files(crops)[0]:
        m = re.match(r"^(\d+)_c(\d+)", os.path.basename(path))
        if not m:
            continue
        pid, cam = int(m.group(1)), int(m.group(2))
        mine = rows.setdefault(cam, [])
        k = sum(1 for r in mine if r[1] == pid)
        mine.append((path, pid, k, T0 + 3600 * cam + 10 * pid + k))
    out = {}
    for cam, mine in rows.items():
        out[cam] = str(folder / f"cam{cam}.csv")
        with open(out[cam], "w") as f:
            f.write("image,timestamp,camera,track_id,frame,pid\n")
            f.writelines(f"{p},{t},{cam},{pid},{k},{pid}\n" for p, pid, k, t in mine)
    return out


@pytest.fixture(scope="module")
def manifests(tiny_synthetic, tmp_path_factory):
    return camera_manifests(
        os.path.join(tiny_synthetic, "bounding_box_test"), tmp_path_factory.mktemp("manifests")
    )


def _ingest(ckpt, source, store, **kw):
    return ingest_command(ckpt, source, store, device="cpu", num_workers=0, progress=False, **kw)


@pytest.mark.parametrize("runtime", ["torch", pytest.param("onnx", marks=pytest.mark.slow)])
def test_server_answers_as_embedded(
    ckpt, manifests, tmp_path, milvus_server_uri, milvus_collections, capsys, runtime
):
    """(onnx: the server's crops embedded by ONNX Runtime on a checked export, the embedded
    store's by PyTorch; slow: the export is made and checked first.)"""
    server = f"{milvus_server_uri}/{milvus_collections()}"
    embedded = str(tmp_path / "site")
    for source in manifests.values():
        _ingest(ckpt, source, embedded)
        _ingest(ckpt, source, server, runtime=runtime)
    again = _ingest(ckpt, manifests[1], server, runtime=runtime)
    assert again.added == 0 and again.already > 0
    first = open_timed_source(manifests[2], None, None, None, None)[0].paths[0]
    q = Extractor(ckpt, device="cpu", num_workers=0, progress=False)([first])
    with open_store(embedded) as a, open_store(server) as b:
        assert a.stats().cameras == b.stats().cameras and a.stats().tracklets == b.stats().tracklets
        for by in ("crop", "tracklet"):
            for cams, after in ((None, None), ([2], T0 + 7200 + 15)):
                ra = records(search_store(a, q, 8, by, cams, after, None))
                rb = records(search_store(b, q, 8, by, cams, after, None))
                key = "path" if by == "crop" else "best_path"
                assert [r[key] for r in ra] == [r[key] for r in rb]
                np.testing.assert_allclose(
                    [r["distance"] for r in ra], [r["distance"] for r in rb], atol=1e-4
                )
    capsys.readouterr()
    assert main(["store", "stats", server]) == 0
    out = capsys.readouterr().out
    assert "root:***@" in out and "pw-of-the-tests" not in out
    assert main(["store", "delete", server, "--camera", "1"]) == 0
    with open_store(server) as b:
        assert 1 not in b.stats().cameras and 2 in b.stats().cameras
    capsys.readouterr()
    other = _other_checkpoint(tmp_path / "other.pth", distance="euclidean")
    assert main(["ingest", other, manifests[1], "--store", server, "--device", "cpu"]) == 2
    err = capsys.readouterr().err  # another model's store: refused, naming both
    assert "fingerprint" in err and other in err and "pw-of-the-tests" not in err
    wrong = server.replace(":pw-of-the-tests-7f3a@", ":wrong@")
    assert main(["store", "stats", wrong]) == 2
    err = capsys.readouterr().err.strip()
    assert "wrong user or password" in err and "wrong@" not in err and len(err.splitlines()) == 1


def _count(store: str, camera: int) -> int:
    """Crops of a camera in the store (0 while it is not made yet)."""
    try:
        with open_store(store) as st:
            return st.stats().cameras.get(camera, 0)
    except StoreError:
        return 0


WORKER = textwrap.dedent(
    """
    import sys, time
    from partreid.commands import ingest
    from partreid.store.base import GalleryStore
    add = GalleryStore.add
    def slow_add(self, batch):  # a camera that keeps coming: time to be killed mid-way
        time.sleep(0.3)
        return add(self, batch)
    GalleryStore.add = slow_add
    ingest.ADD_ROWS = 2
    ingest.ingest_command(sys.argv[1], sys.argv[2], sys.argv[3], device="cpu", batch_size=2,
                          num_workers=0, progress=False)
    """
)


@pytest.mark.slow  # ~50 s: two processes importing torch, one of them twice
def test_concurrent_ingest_processes_one_killed_every_crop_once(
    ckpt, manifests, tmp_path, milvus_server_uri, milvus_collections
):
    store = f"{milvus_server_uri}/{milvus_collections()}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def start(cam):
        cmd = [sys.executable, "-c", WORKER, ckpt, manifests[cam], store]
        return subprocess.Popen(cmd, env=env)

    procs = {cam: start(cam) for cam in manifests}
    n = {cam: len(open_timed_source(m, None, None, None, None)[0]) for cam, m in manifests.items()}
    deadline = time.time() + 180  # both make the store at once, then write
    while time.time() < deadline and not _count(store, 1) >= 6:
        time.sleep(0.2)
    with open_store(store) as st:
        os.kill(procs[1].pid, signal.SIGKILL)
        procs[1].wait()
        part = st.stats().cameras.get(1, 0)
    assert 0 < part < n[1], f"the kill came at {part} of {n[1]} crops"
    procs[1] = start(1)  # restarted while camera 2's writer may still be writing
    for p in procs.values():
        assert p.wait(timeout=240) == 0
    f = Extractor(ckpt, device="cpu", num_workers=0, progress=False)
    with open_store(store) as st:
        s = st.stats()
        assert s.cameras == n and s.extra["pending_writes"] == 0
        for cam, manifest in manifests.items():
            src, timing = open_timed_source(manifest, None, None, None, None)
            assert st.contains(crop_ids(src, timing.camera)).all()
            feats = f(list(src.paths))
            feats /= np.linalg.norm(feats, axis=1, keepdims=True)
            for pid in np.unique(src.track_ids):
                feat, meta = st.get_tracklet(f"{cam}:{pid}")
                mine = src.track_ids == pid
                mean = feats[mine].mean(0)
                np.testing.assert_allclose(feat, mean / np.linalg.norm(mean), atol=1e-5)
                assert meta["n_crops"] == mine.sum()
                assert (meta["start"], meta["end"]) == (
                    timing.timestamp[mine].min(),
                    timing.timestamp[mine].max(),
                )
        assert s.tracklets == sum(
            len(np.unique(open_timed_source(m, None, None, None, None)[0].track_ids))
            for m in manifests.values()
        )
