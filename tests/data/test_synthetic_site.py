"""The synthetic multi-camera site: MOT boxes and videos a video ingest can read, ground truth
that agrees with them, routes along the walkways within their windows, passes cut into several
tracks where a person is hidden, determinism and clear errors."""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

from partreid.data.datasets import DatasetError
from partreid.data.datasets.synthetic_site import (
    INDEX,
    TRANSITIONS,
    _pillar,
    cut_tracks,
    generate_site,
    read_site,
    site_walkways,
)
from partreid.data.sources import read_mot_boxes, video_frame_rate

av = pytest.importorskip("av")

SITE = dict(cameras=6, people=16, seconds=45.0, fps=3.0, width=128, height=96, seed=5)


@pytest.fixture(scope="module")
def data_root(tiny_synthetic):
    """The session's tiny synthetic set (16 identities): the site's people are 17..."""
    return str(tiny_synthetic)


@pytest.fixture(scope="module")
def site(data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("site"))
    return out, generate_site(out, data_root, **SITE)


def _tracks_by_person(gt):
    """pid -> [(start s, end s, camera, track id)] in time order, from site.json."""
    fps = gt["fps"]
    per = defaultdict(list)
    for v in gt["videos"]:
        for tid, t in v["tracks"].items():
            per[t["pid"]].append(
                ((t["first_frame"] - 1) / fps, (t["last_frame"] - 1) / fps, v["camera"], int(tid))
            )
    return {pid: sorted(ts) for pid, ts in per.items()}


def test_boxes_videos_and_ground_truth_agree(site):
    out, info = site
    gt = read_site(out)
    assert info.ground_truth == os.path.join(out, INDEX)
    assert [v.camera for v in info.videos] == list(range(1, 7))
    assert sorted(int(p) for p in gt["people"]) == list(range(17, 17 + 16))  # new to the set
    for video, entry in zip(info.videos, gt["videos"]):
        rows = read_mot_boxes(video.boxes)
        with av.open(video.video) as c:
            assert sum(1 for _ in c.decode(video=0)) == video.frames == entry["frames"] == 135
        assert video_frame_rate(video.video) == pytest.approx(3.0)
        x, y, w, h = rows[:, 2:6].T
        assert (x >= 0).all() and (x + w <= 128).all() and (y >= 0).all() and (y + h <= 96).all()
        assert len({(int(r[0]), int(r[1])) for r in rows}) == len(rows)  # one row per frame/id
        for tid, t in entry["tracks"].items():
            frames = sorted(rows[rows[:, 1] == int(tid), 0].astype(int))
            assert frames == list(range(t["first_frame"], t["last_frame"] + 1))  # no gaps
            assert len(frames) >= 2  # min_frames
        firsts = [entry["tracks"][k]["first_frame"] for k in sorted(entry["tracks"], key=int)]
        assert firsts == sorted(firsts)  # numbered by first frame
        assert {int(k): v["pid"] for k, v in entry["tracks"].items()} == video.tracks


def test_routes_follow_the_walkways_within_their_windows(site):
    out, _ = site
    gt = read_site(out)
    with open(os.path.join(out, TRANSITIONS), newline="") as f:
        rows = list(csv.DictReader(f))
    win = {
        (int(r["from_camera"]), int(r["to_camera"])): (float(r["min_s"]), float(r["max_s"]))
        for r in rows
    }
    assert set(win) == {(a, b) for a, b in win} and all((b, a) in win for a, b in win)
    moves = 0
    for pid, tracks in _tracks_by_person(gt).items():
        route = gt["people"][str(pid)]
        assert {t[2] for t in tracks} <= {p["camera"] for p in route}
        for a, b in zip(tracks, tracks[1:]):
            if a[2] == b[2]:
                assert b[0] > a[1]  # one camera: one track after the other
                continue
            lo, hi = win[(a[2], b[2])]
            assert lo <= b[0] - a[1] <= hi, (pid, a, b)
            moves += 1
    assert moves >= 16  # people do go from camera to camera
    cams = [len({t[2] for t in ts}) for ts in _tracks_by_person(gt).values()]
    assert max(cams) >= 3


def test_passes_are_cut_where_people_are_hidden(site):
    out, info = site
    gt = read_site(out)
    splits = 0
    for video, entry in zip(info.videos, gt["videos"]):
        rows = read_mot_boxes(video.boxes)
        by_pid = defaultdict(list)
        for tid, t in entry["tracks"].items():
            by_pid[t["pid"]].append((t["first_frame"], t["last_frame"], int(tid)))
        for tracks in by_pid.values():
            tracks.sort()
            for (_f0, f1, a), (g0, _g1, b) in zip(tracks, tracks[1:]):
                if g0 - f1 > 6:  # a later pass through the same view
                    continue
                splits += 1
                # hidden in between: behind the pillar, or someone else is in the frame there
                xa = rows[(rows[:, 1] == a) & (rows[:, 0] == f1), 2:6][0]
                xb = rows[(rows[:, 1] == b) & (rows[:, 0] == g0), 2:6][0]
                lo, hi = min(xa[0], xb[0]), max(xa[0] + xa[2], xb[0] + xb[2])
                pillar = _pillar(video.camera, SITE["seed"], SITE["width"])
                others = rows[(rows[:, 0] > f1) & (rows[:, 0] < g0)]
                near_other = ((others[:, 2] < hi) & (others[:, 2] + others[:, 4] > lo)).any()
                behind = pillar is not None and pillar[0] < hi and pillar[1] > lo
                assert behind or near_other
    assert splits >= 3  # one person, several tracks in one view


def test_cut_tracks():
    box = (0, 0, 1, 1)
    frames = [(f, box, v) for f, v in zip(range(1, 11), [1, 1, 0.2, 1, 1, 1, 0.4, 1, 0.9, 0.1])]
    runs = cut_tracks(frames, 0.5, 2)
    assert [[f for f, _ in r] for r in runs] == [[1, 2], [4, 5, 6], [8, 9]]
    assert [[f for f, _ in r] for r in cut_tracks(frames, 0.5, 3)] == [[4, 5, 6]]
    assert cut_tracks([(1, box, 1.0), (3, box, 1.0)], 0.5, 1) == [[(1, box)], [(3, box)]]


def test_walkways_join_every_camera():
    for cameras in (2, 6, 9):
        ways = site_walkways(cameras, 0)
        seen, todo = {1}, [1]
        while todo:
            c = todo.pop()
            for a, b in ways:
                for x, y in ((a, b), (b, a)):
                    if x == c and y not in seen:
                        seen.add(y)
                        todo.append(y)
        assert seen == set(range(1, cameras + 1))
        assert all(0 < lo < hi for lo, hi in ways.values())


def test_same_arguments_same_files(site, data_root, tmp_path):
    out, info = site
    small = {**SITE, "people": 3, "seconds": 20.0}
    a = generate_site(str(tmp_path / "a"), data_root, **small)
    b = generate_site(str(tmp_path / "b"), data_root, **small)
    for va, vb in zip(a.videos, b.videos):
        assert Path(va.boxes).read_bytes() == Path(vb.boxes).read_bytes()
        assert Path(va.video).read_bytes() == Path(vb.video).read_bytes()
    ja, jb = (
        json.loads(Path(a.ground_truth).read_text()),
        json.loads(Path(b.ground_truth).read_text()),
    )
    ja.pop("data_root"), jb.pop("data_root")
    assert ja == jb


def test_clear_errors(tmp_path, data_root):
    with pytest.raises(DatasetError, match="synthetic.json"):
        generate_site(str(tmp_path / "s"), str(tmp_path))
    with pytest.raises(DatasetError, match="cameras"):
        generate_site(str(tmp_path / "s"), data_root, cameras=1)
    with pytest.raises(DatasetError, match="site.json"):
        read_site(str(tmp_path))
