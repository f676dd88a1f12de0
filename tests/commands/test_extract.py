"""partreid extract: folders, manifests, videos with MOT boxes, sharding, clear errors."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from partreid.checkpoint import CheckpointError
from partreid.cli import main
from partreid.data.sources import SourceError, open_source, read_mot_boxes
from partreid.features import Features
from partreid.inference import Extractor
from partreid.inference.stream import run_items
from partreid.utils.distributed import shard_bounds


@pytest.fixture(scope="module")
def ext(ckpt):
    return Extractor(ckpt, device="cpu", batch_size=3, num_workers=0, progress=False)


def _write_images(folder, names, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (70, 30, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


MARKET = ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s2_001001_02.jpg"]


def test_folder_recursive_market_names_and_meta(tmp_path, ext, ckpt):
    paths = _write_images(tmp_path / "g", MARKET[:2] + [f"sub/{MARKET[2]}"])
    (tmp_path / "g" / "notes.txt").write_text("not an image")
    feats = ext.extract(str(tmp_path / "g"), out=str(tmp_path / "g.npz"))
    back = Features.load(str(tmp_path / "g.npz"))
    assert sorted(back.paths.tolist()) == sorted(paths) and len(back) == 3
    by_path = dict(zip(back.paths.tolist(), zip(back.pids.tolist(), back.camids.tolist())))
    assert by_path[paths[0]] == (2, 0) and by_path[paths[1]] == (2, 1)
    assert by_path[paths[2]] == (7, 2)
    np.testing.assert_array_equal(back.features, feats.features)
    np.testing.assert_allclose(back.features, ext(back.paths.tolist()), atol=1e-6)
    assert np.isnan(back.boxes).all() and (back.frames == -1).all()
    m = back.meta
    assert m["model"] == "bot" and m["checkpoint"] == os.path.abspath(ckpt)
    assert m["feature_dim"] == 512 and m["distance"] == "cosine" and m["normalize"] is False
    assert m["flip"] is True and m["input"]["height"] == 64 and m["ignored_files"] == 1
    assert m["source"] == os.path.abspath(tmp_path / "g")


def test_folder_without_market_names_gets_unknown_labels(tmp_path, ext):
    _write_images(tmp_path / "g", ["a.png", MARKET[0]])
    feats = ext.extract(str(tmp_path / "g"))
    assert (feats.pids == -1).all() and (feats.camids == -1).all()


def test_manifest_columns_and_single_image(tmp_path, ext):
    paths = _write_images(tmp_path / "imgs", ["x.png", "y.png", "z.png"])
    (tmp_path / "m.csv").write_text("image,pid,camid\nimgs/z.png,5,2\nimgs/x.png,9,-1\n")
    feats = ext.extract(str(tmp_path / "m.csv"))
    assert feats.paths.tolist() == [paths[2], paths[0]]
    assert feats.pids.tolist() == [5, 9] and feats.camids.tolist() == [2, -1]
    one = ext.extract(paths[1])
    assert len(one) == 1 and one.paths[0] == paths[1]
    np.testing.assert_allclose(one.features, ext([paths[1]]), atol=1e-6)


def test_unreadable_images_are_named_and_left_out(tmp_path, ext, caplog):
    paths = _write_images(tmp_path / "g", ["a.jpg", "b.jpg"])
    (tmp_path / "g" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with caplog.at_level(logging.WARNING, logger="partreid"):
        feats = ext.extract(str(tmp_path / "g"))
    assert feats.paths.tolist() == paths
    assert feats.meta["num_unreadable"] == 1 and "broken.jpg" in feats.meta["unreadable"][0]
    assert "1 of 3 item(s)" in caplog.text and "broken.jpg" in caplog.text


def test_clear_errors(tmp_path, ext, ckpt, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match=r"no images found under .*empty.*1 other file"):
        ext.extract(str(tmp_path / "empty"))
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(SourceError, match="cannot extract from .*data.txt: expected a folder"):
        ext.extract(str(tmp_path / "data.txt"))
    (tmp_path / "fake.jpg").write_text("not an image")
    with pytest.raises(SourceError, match=r"(?s)none of the 1 item.*fake.jpg"):
        ext.extract(str(tmp_path / "fake.jpg"))
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 16)
    with pytest.raises(SourceError, match="clip.mp4 is a video: give the person boxes"):
        ext.extract(str(tmp_path / "clip.mp4"))
    (tmp_path / "boxes.txt").write_text(
        "1,1,0,0,10,20,1\n2,1,abc,0,10,20\n0,2,1,1,5,5\n3,1,1,1,0,5\n"
    )
    with pytest.raises(SourceError, match=r"(?s)3 bad row\(s\).*line 2.*line 3: frame.*line 4"):
        read_mot_boxes(str(tmp_path / "boxes.txt"))
    with pytest.raises(FileNotFoundError, match="input not found"):
        ext.extract(str(tmp_path / "nope"))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a partreid checkpoint"):
        Extractor(str(tmp_path / "other.pth"))
    # the command line turns each into one line and exit code 2
    out = str(tmp_path / "f.npz")
    assert main(["extract", ckpt, str(tmp_path / "empty"), "--out", out]) == 2
    assert main(["extract", str(tmp_path / "other.pth"), str(tmp_path), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "partreid extract: error: no images found" in err
    assert "partreid extract: error:" in err and "not a partreid checkpoint" in err


def test_video_with_mot_boxes(tmp_path, ext, caplog, write_video):
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(4)]
    video = tmp_path / "cam.mkv"
    write_video(video, frames)
    (tmp_path / "gt.txt").write_text(
        "2,7,10,5,20,40,1,-1,-1\n"  # frame 2, track 7
        "1,3,70,30,20,40,1\n"  # partly outside: clipped to x 70..80, y 30..60
        "1,4,100,10,10,10,1\n"  # entirely outside: counted, skipped
        "4,3,0.5,1.5,30.2,20,1\n"  # fractional: widened to whole pixels
        "9,5,0,0,10,10,1\n"  # past the last frame: named
    )
    with caplog.at_level(logging.INFO, logger="partreid"):
        feats = ext.extract(str(video), boxes=str(tmp_path / "gt.txt"))
    assert "1 of 5 boxes lie entirely outside" in caplog.text
    assert "past the end of the video" in caplog.text
    assert feats.frames.tolist() == [1, 2, 4] and feats.track_ids.tolist() == [3, 7, 3]
    np.testing.assert_array_equal(feats.boxes, [[70, 30, 10, 30], [10, 5, 20, 40], [0, 1, 31, 21]])
    assert feats.meta["boxes_outside_frame"] == 1 and feats.meta["num_unreadable"] == 1
    assert set(feats.paths.tolist()) == {str(video)}
    crops = [
        Image.fromarray(frames[f - 1][y : y + h, x : x + w])
        for f, (x, y, w, h) in zip(feats.frames, feats.boxes.astype(int))
    ]
    np.testing.assert_allclose(feats.features, ext(crops), atol=1e-5)


def test_sharded_runs_merge_to_the_single_run(tmp_path, ext):
    _write_images(tmp_path / "g", [f"{i:04d}_c1s1_000001_01.jpg" for i in range(5)])
    src = open_source(str(tmp_path / "g"))
    full, kept, _ = run_items(ext, src, 0, len(src))
    for world in (2, 3):
        ranges = [shard_bounds(len(src), r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == 5
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        parts = [run_items(ext, src, a, b) for a, b in ranges]
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), kept)
        np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), full, atol=1e-5)


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path, ckpt):
    if shutil.which("torchrun") is None and not hasattr(torch.distributed, "run"):
        pytest.skip("torch.distributed.run is not available")
    _write_images(tmp_path / "g", [f"{i:04d}_c{1 + i % 2}s1_000001_01.jpg" for i in range(9)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    one = str(tmp_path / "one.npz")
    two = str(tmp_path / "two.npz")
    args = [str(ckpt), str(tmp_path / "g"), "--device", "cpu", "--workers", "1", "--no-progress"]
    subprocess.run(
        [sys.executable, "-m", "partreid", "extract", *args, "--out", one],
        check=True,
        env=env,
        timeout=300,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            "-m",
            "partreid",
            "extract",
            *args,
            "--out",
            two,
        ],
        check=True,
        env=env,
        timeout=300,
    )
    a, b = Features.load(one), Features.load(two)
    assert b.paths.tolist() == a.paths.tolist() and b.meta["world_size"] == 2
    np.testing.assert_array_equal(b.pids, a.pids)
    np.testing.assert_allclose(b.features, a.features, atol=1e-5)
