"""Synthetic camera footage: files and MOT boxes a video ingest can read, boxes that hold the
drawn person (and nothing drawn outside them), the data set's test identities in their outfits,
cross-camera ground truth, determinism."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from partreid.data.datasets import DatasetError, generate_synthetic
from partreid.data.datasets.synthetic import _rng, read_marker, render_image
from partreid.data.datasets.synthetic_video import (
    INDEX,
    camera_background,
    camera_of,
    generate_videos,
    identity_of,
)
from partreid.data.sources import read_mot_boxes, video_frame_rate, video_source
from partreid.errors import MissingExtraError

av = pytest.importorskip("av")

VIDEO = dict(cameras=2, seconds=3.0, fps=5.0, people=4, width=160, height=120, seed=3)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_video_data")
    generate_synthetic(
        root,
        num_ids=12,
        test_fraction=0.5,
        num_cams=2,
        images_per_id_per_cam=2,
        height=64,
        width=32,
        num_distractors=2,
        num_junk=1,
        seed=1,
    )
    return str(root)


@pytest.fixture(scope="module")
def videos(data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("videos"))
    return out, generate_videos(out, data_root, **VIDEO)


def decode(path: str) -> list:
    with av.open(path) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_files_boxes_and_ground_truth(videos, data_root):
    out, infos = videos
    with open(os.path.join(out, INDEX), encoding="utf-8") as f:
        index = json.load(f)
    test_ids = set(read_marker(data_root)["test_ids"])
    queries = {int(n.split("_")[0]) for n in os.listdir(os.path.join(data_root, "query"))}
    cams_of = {}
    assert [v["camera"] for v in index["videos"]] == [1, 2] == [i.camera for i in infos]
    for info, entry in zip(infos, index["videos"]):
        assert (
            info.video
            == os.path.join(out, entry["file"])
            == os.path.join(out, f"cam{info.camera}.mkv")
        )
        assert info.boxes == os.path.join(out, entry["boxes"])
        assert entry["fps"] == info.fps == 5.0 and entry["frames"] == info.frames == 15
        assert entry["start"] == 0.0
        assert len(decode(info.video)) == info.frames
        assert video_frame_rate(info.video) == pytest.approx(5.0)
        rows = read_mot_boxes(info.boxes)
        x, y, w, h = rows[:, 2:6].T
        assert (x >= 0).all() and (y >= 0).all() and (x + w <= 160).all() and (y + h <= 120).all()
        assert (rows[:, 0] >= 1).all() and (rows[:, 0] <= info.frames).all()
        assert (h >= 0.4 * 120).all() and (h <= 0.8 * 120).all()  # a person, not a sliver
        assert set(rows[:, 1].astype(int)) == set(info.tracks)
        pairs = {(int(r[0]), int(r[1])) for r in rows}
        assert len(pairs) == len(rows)  # one row per track and frame
        assert {int(k): v["pid"] for k, v in entry["tracks"].items()} == info.tracks
        assert set(info.tracks.values()) <= test_ids & queries
        for pid in info.tracks.values():
            cams_of.setdefault(pid, set()).add(info.camera)
    assert any(len(c) == 2 for c in cams_of.values())  # "where else was this person" answers


def test_boxes_hold_the_person_and_nothing_is_drawn_elsewhere(videos, data_root):
    out, infos = videos
    checked = 0
    for info in infos:
        empty = camera_background(data_root, info.camera, 160, 120, seed=VIDEO["seed"])
        frames = decode(info.video)
        rows = read_mot_boxes(info.boxes).astype(int)
        pw, ph = np.median(rows[:, 4]).astype(int), np.median(rows[:, 5]).astype(int)
        margin = rows[:, 4].max()  # people coming in or going out, below min_visible
        for f, frame in enumerate(frames, start=1):
            changed = np.abs(frame.astype(int) - empty).max(axis=2) > 25
            here = rows[rows[:, 0] == f]
            touched = np.abs(frame.astype(int) - empty).max(axis=2) > 8
            for _, _, x, y, w, h, *_ in here:
                assert changed[y : y + h, x : x + w].mean() > 0.25  # the person is there
                box = touched[y : y + h, x : x + w]  # and reaches every side of the box
                assert box[:2].any() and box[-2:].any() and box[:, :2].any() and box[:, -2:].any()
            free = np.ones((120, 160), bool)
            free[:, :margin], free[:, 160 - margin :] = False, False
            for _, _, x, y, w, h, *_ in here:
                free[max(0, y - 6) : y + h + 6, max(0, x - 6) : x + w + 6] = False
            for x0 in range(margin, 160 - margin - pw + 1):
                if free[:ph, x0 : x0 + pw].all():
                    patch = (slice(0, ph), slice(x0, x0 + pw))
                    np.testing.assert_array_equal(frame[patch], empty[patch])
                    checked += 1
                    break
    assert checked >= 2


def test_same_arguments_same_files(videos, data_root, tmp_path):
    out, infos = videos
    again = generate_videos(str(tmp_path / "again"), data_root, **VIDEO)
    for a, b in zip(infos, again):
        assert Path(a.boxes).read_bytes() == Path(b.boxes).read_bytes()
        assert Path(a.video).read_bytes() == Path(b.video).read_bytes()
        for fa, fb in zip(decode(a.video), decode(b.video)):
            np.testing.assert_array_equal(fa, fb)
        assert a.tracks == b.tracks
    other = generate_videos(str(tmp_path / "other"), data_root, **{**VIDEO, "seed": 4})
    assert Path(other[0].boxes).read_bytes() != Path(infos[0].boxes).read_bytes()


def test_video_source_cuts_the_crops(videos):
    _, infos = videos
    info = infos[0]
    rows = read_mot_boxes(info.boxes)
    src = video_source(info.video, info.boxes)
    assert len(src) == len(rows) and src.notes["boxes_outside_frame"] == 0
    assert src.notes["boxes_clipped"] == 0
    frames = decode(info.video)
    crops = src.dataset(np.asarray)
    for (crop, index, error), _ in zip(crops, range(4)):
        x, y, w, h = src.boxes[index].astype(int)
        assert error == "" and src.track_ids[index] in info.tracks
        np.testing.assert_array_equal(crop, frames[src.frames[index] - 1][y : y + h, x : x + w])


def test_outfits_are_the_data_sets(data_root):
    """identity_of / camera_of redraw the set's crops byte for byte: the people in the videos
    wear what they wear in query/ and bounding_box_test/."""
    p = read_marker(data_root)["params"]
    name = sorted(os.listdir(os.path.join(data_root, "query")))[0]
    pid, cam, k = int(name[:4]), int(name[6]), int(name[9:13])
    rng = _rng(p["seed"], 5, pid, cam - 1, k)
    ident, camera = identity_of(p["seed"], pid), camera_of(p["seed"], cam)
    img = render_image(ident, camera, rng, p["height"], p["width"], p["occlusion"], p["cutoff"])
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=p["quality"])
    with open(os.path.join(data_root, "query", name), "rb") as f:
        assert buf.getvalue() == f.read()


def test_clear_errors(tmp_path, data_root, monkeypatch):
    with pytest.raises(DatasetError, match="synthetic.json"):
        generate_videos(str(tmp_path / "v"), str(tmp_path))
    with pytest.raises(DatasetError, match="cameras"):
        generate_videos(str(tmp_path / "v"), data_root, cameras=0)
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingExtraError, match="video"):
        generate_videos(str(tmp_path / "v"), data_root, **VIDEO)
