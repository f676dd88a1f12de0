"""CSV-manifest data sets: split column, random identity split, classic-set protocols."""

from __future__ import annotations

import csv
import dataclasses
import os
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from partreid.data.datasets import (
    CLASSIC_PROTOCOLS,
    DatasetError,
    DatasetNotFoundError,
    build_dataset,
)
from partreid.data.datasets.manifest import SplitOptions, random_identity_split
from partreid.data.io import UnreadableImageError
from partreid.data.list_files import read_manifest_rows
from partreid.data.sources import manifest_source


def write_manifest(
    folder: Path, rows, write_images, header=("image", "pid", "camid"), name="manifest.csv"
):
    """rows: tuples matching ``header``; images are created under ``folder``."""
    write_images(folder, [r[0] for r in rows])
    with open(folder / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return folder / name


def pid_set(items):
    return {pid for _, pid, _ in items}


def grid_rows(num_ids=10, cams=(0, 1, 2), per_cam=2, unknown=False):
    return [
        (f"img/{p}_{c}_{k}.jpg", p, -1 if unknown else c)
        for p in range(1, num_ids + 1)
        for c in cams
        for k in range(per_cam)
    ]


# ------------------------------------------------------------------------------------------
# split column
# ------------------------------------------------------------------------------------------
def test_split_column_with_string_labels(tmp_path, write_images):
    rows = [
        ("a/1.jpg", "alice", 0, "train"),
        ("a/2.jpg", "alice", 1, "train"),
        ("b/1.jpg", "bob", 0, "TRAIN"),
        ("c/1.jpg", "carol", 0, "query"),
        ("c/2.jpg", "carol", 1, "gallery"),
        ("c/3.jpg", "carol", -1, "gallery"),
    ]
    write_manifest(tmp_path, rows, write_images, header=("image", "pid", "camid", "split"))
    ds = build_dataset("manifest", tmp_path)
    # labels sorted: alice 0, bob 1, carol 2; train relabelled (already 0, 1)
    assert sorted((os.path.relpath(p, tmp_path), pid, cam) for p, pid, cam in ds.train) == [
        ("a/1.jpg", 0, 0),
        ("a/2.jpg", 0, 1),
        ("b/1.jpg", 1, 0),
    ]
    assert [(pid, cam) for _, pid, cam in ds.query] == [(2, 0)]
    assert sorted((pid, cam) for _, pid, cam in ds.gallery) == [(2, -1), (2, 1)]
    assert "not all integers" in ds.summary() and "'split' column" in ds.summary()
    assert ds.num_train_pids == 2 and ds.num_train_cams == 2


def test_split_column_errors(tmp_path, write_images):
    rows = [("x.jpg", 1, 0, "train"), ("y.jpg", 2, 0, "test")]
    write_manifest(tmp_path, rows, write_images, header=("image", "pid", "camid", "split"))
    with pytest.raises(DatasetError, match=r"line 3: split 'test'"):
        build_dataset("manifest", tmp_path)
    with pytest.raises(DatasetError, match="only apply to protocol='random_ids'"):
        build_dataset("manifest", tmp_path, test_fraction=0.3)
    # explicit random_ids ignores the column
    ds = build_dataset("manifest", tmp_path, protocol="random_ids", test_fraction=0.0)
    assert len(ds.train) == 2 and "ignored" in ds.summary()


def test_manifest_file_and_header_errors(tmp_path, write_images):
    with pytest.raises(DatasetNotFoundError, match="manifest.csv"):
        build_dataset("manifest", tmp_path)
    write_manifest(
        tmp_path, [("x.jpg", 1, 0)], write_images, header=("path", "pid", "camid"), name="bad.csv"
    )
    with pytest.raises(
        DatasetError, match=r"bad.csv: header must contain image,pid,camid.*missing image"
    ):
        build_dataset("manifest", tmp_path, csv="bad.csv")
    write_manifest(tmp_path, [("x.jpg", 1, "a"), ("y.jpg", 1, 0)], write_images, name="cam.csv")
    with pytest.raises(DatasetError, match=r"line 2: camid 'a'"):
        build_dataset("manifest", tmp_path / "cam.csv")  # root may be the CSV itself
    path = write_manifest(
        tmp_path, [("x.jpg", 1, 0), ("gone/z.jpg", 2, 1)], write_images, name="miss.csv"
    )
    os.remove(tmp_path / "gone" / "z.jpg")
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("manifest", path)
    assert "1 of 2 images" in str(err.value) and os.path.join("gone", "z.jpg") in str(err.value)


def test_corrupt_image_is_named_by_verify(tmp_path, write_images, corrupt_jpeg):
    write_manifest(tmp_path, grid_rows(4), write_images)
    bad = corrupt_jpeg(tmp_path / "img" / "3_1_0.jpg")
    ds = build_dataset("manifest", tmp_path)  # listing only: not decoded
    assert len(ds.train) + len(ds.query) + len(ds.gallery) == 24
    with pytest.raises(UnreadableImageError) as err:
        build_dataset("manifest", tmp_path, verify=True)
    assert str(bad) in str(err.value) and "1 of 24" in str(err.value)


# ------------------------------------------------------------------------------------------
# random identity split
# ------------------------------------------------------------------------------------------
def test_random_ids_split_rules(tmp_path, write_images):
    rows = grid_rows(10, cams=(0, 1, 2), per_cam=2)
    write_manifest(tmp_path, rows, write_images)
    ds = build_dataset("manifest", tmp_path, seed=4)
    test_ids = pid_set(ds.query)
    assert len(test_ids) == 5 and ds.num_train_pids == 5  # test_fraction 0.5
    train_original = set(ds.train_pid_map)
    assert train_original.isdisjoint(test_ids) and train_original | test_ids == set(range(1, 11))
    assert len(ds.train) == 5 * 6
    # one query per identity and camera, every other test image in the gallery
    assert Counter((pid, cam) for _, pid, cam in ds.query) == {
        (p, c): 1 for p in test_ids for c in range(3)
    }
    assert Counter(pid for _, pid, _ in ds.gallery) == {p: 3 for p in test_ids}
    assert not set(ds.query) & set(ds.gallery)
    # same seed -> same split; another seed -> another one
    assert build_dataset("manifest", tmp_path, seed=4).query == ds.query
    assert build_dataset("manifest", tmp_path, seed=5).query != ds.query
    three = build_dataset("manifest", tmp_path, num_test_ids=3)
    assert len(pid_set(three.query)) == 3 and three.num_train_pids == 7
    everything = build_dataset("manifest", tmp_path, test_fraction=0)
    assert everything.num_train_pids == 10 and len(everything.train) == 60
    assert everything.query == [] and everything.gallery == []
    with pytest.raises(DatasetError, match=r"num_test_ids=11 is not in \[0, 10\]"):
        build_dataset("manifest", tmp_path, num_test_ids=11)


def test_random_ids_unknown_cameras_and_no_match_kept(tmp_path, write_images):
    rows = grid_rows(6, cams=(0,), per_cam=3, unknown=True) + [("img/solo.jpg", 7, -1)]
    write_manifest(tmp_path, rows, write_images)
    ds = build_dataset("manifest", tmp_path, test_fraction=1.0)
    # camid -1: one query per identity, no camera filtering; the single-image identity keeps its query
    assert Counter(pid for _, pid, _ in ds.query) == {p: 1 for p in range(1, 8)}
    assert Counter(pid for _, pid, _ in ds.gallery) == {p: 2 for p in range(1, 7)}
    assert "1 query image(s) have no cross-camera gallery match" in ds.summary()


def test_random_ids_camera_protocols(tmp_path, write_images):
    # 8 ids in cams 1 and 2; 3 ids only in cam 2 and 2 ids only in cam 1 (PRID-like)
    rows = [(f"p/{p}_{c}.jpg", p, c) for p in range(1, 9) for c in (1, 2)]
    rows += [(f"p/{p}_2.jpg", p, 2) for p in (20, 21, 22)] + [
        (f"p/{p}_1.jpg", p, 1) for p in (30, 31)
    ]
    write_manifest(tmp_path, rows, write_images)
    ds = build_dataset(
        "manifest",
        tmp_path,
        num_test_ids=4,
        query_cams=[1],
        gallery_cams=[2],
        gallery_only_ids=True,
        seed=1,
    )
    test_ids = pid_set(ds.query)
    assert len(test_ids) == 4 and test_ids <= set(range(1, 9))
    assert {cam for _, _, cam in ds.query} == {1} and {cam for _, _, cam in ds.gallery} == {2}
    assert pid_set(ds.gallery) == test_ids | {20, 21, 22}  # single-camera ids as distractors
    assert set(ds.train_pid_map) == set(range(1, 9)) - test_ids  # single-camera ids never train
    assert "3 of their images added to the gallery" in ds.summary() and "2 dropped" in ds.summary()
    with pytest.raises(DatasetError, match=r"cameras of this data set are \[1, 2\]"):
        build_dataset("manifest", tmp_path, query_cams=[0])
    per_id = build_dataset("manifest", tmp_path, query_per="identity", test_fraction=1.0)
    assert Counter(pid for _, pid, _ in per_id.query) == {p: 1 for p in pid_set(per_id.query)}
    assert len(per_id.query) == 13


def test_split_options_are_checked_once_when_made():
    opts = SplitOptions(seed=2, query_cams=[1], gallery_cams=range(2, 4))
    assert opts.query_cams == (1,) and opts.gallery_cams == (2, 3)  # kept as tuples
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seed = 3
    with pytest.raises(DatasetError, match=r"query_per must be one of \['camera', 'identity'\]"):
        SplitOptions(query_per="person")
    with pytest.raises(DatasetError, match=r"test_fraction must be in \[0, 1\], got 1.5"):
        SplitOptions(test_fraction=1.5)
    SplitOptions(test_fraction=1.5, num_test_ids=3)  # the fraction is unused with a count
    # the split the options ask for: seeded, half the identities to test, every image placed once
    items = [(f"x/{p}_{c}_{k}.jpg", p, c) for p in range(1, 11) for c in (1, 2) for k in range(2)]
    train, query, gallery, notes = random_identity_split(items, SplitOptions(seed=4))
    assert len(pid_set(query)) == 5 and pid_set(train).isdisjoint(pid_set(query))
    assert sorted(query + gallery + train) == sorted(items)
    assert (train, query, gallery, notes) == random_identity_split(items, SplitOptions(seed=4))
    assert random_identity_split(items, SplitOptions(seed=5))[1] != query
    assert notes[0].startswith("random identity split (seed 4): 5 train / 5 test identities")


def test_split_column_refuses_changed_split_options(tmp_path, write_images):
    rows = [("x.jpg", 1, 0, "train"), ("y.jpg", 1, 1, "query"), ("z.jpg", 1, 2, "gallery")]
    write_manifest(tmp_path, rows, write_images, header=("image", "pid", "camid", "split"))
    # the seed and options given at their defaults are accepted; every other option is named
    ds = build_dataset("manifest", tmp_path, seed=7, query_per="camera", test_fraction=0.5)
    assert len(ds.query) == 1 and len(ds.gallery) == 1
    with pytest.raises(DatasetError, match=r"option\(s\) query_per, gallery_cams only apply"):
        build_dataset("manifest", tmp_path, query_per="identity", gallery_cams=[2])


# ------------------------------------------------------------------------------------------
# the classic sets of ../shared/data/classic with their standard protocols
# ------------------------------------------------------------------------------------------
# (images, identities, cameras) from the shared README, then the protocol's expected
# (train ids, train images, query images, gallery images)
CLASSIC_EXPECTED = {
    "viper": ((1264, 632, {1, 2}), (316, 632, 316, 316)),
    "prid": ((1134, 934, {1, 2}), (100, 200, 100, 100 + 549)),
    "grid": ((1275, 1025, None), (125, 250, 125, 125 + 775)),
    "ilid": ((477, 120, {-1}), (60, None, None, None)),
    "caviar4reid": ((1220, 72, {1, 2}), (36, None, None, None)),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(CLASSIC_EXPECTED))
def test_classic_sets(shared_data, name):
    folder = shared_data / "classic" / name
    if not (folder / "manifest.csv").is_file():
        pytest.skip(f"{folder}/manifest.csv not found")
    with open(folder / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    (n_images, n_ids, cams), (train_ids, train_images, n_query, n_gallery) = CLASSIC_EXPECTED[name]
    assert len(rows) == n_images and len({r["pid"] for r in rows}) == n_ids
    if cams is not None:
        assert {int(r["camid"]) for r in rows} == cams

    ds = build_dataset("manifest", folder, seed=0, **CLASSIC_PROTOCOLS[name])
    test_ids = pid_set(ds.query)
    assert ds.num_train_pids == train_ids
    assert set(ds.train_pid_map).isdisjoint(test_ids | pid_set(ds.gallery))  # no identity overlap
    for expected, got in (
        (train_images, len(ds.train)),
        (n_query, len(ds.query)),
        (n_gallery, len(ds.gallery)),
    ):
        if expected is not None:
            assert got == expected
    images = {}
    for _, pid, cam in ds.query:
        images.setdefault(pid, []).append(cam)
    if (
        name == "ilid"
    ):  # one image per identity as query; identities with a single image have no match
        n_per_id = Counter(int(r["pid"]) for r in rows)
        assert len(ds.query) == len(test_ids) == 60
        assert {p for p in test_ids if n_per_id[p] > 1} <= pid_set(ds.gallery)
        assert len(ds.train) + len(ds.query) + len(ds.gallery) == n_images
    else:
        assert test_ids <= pid_set(ds.gallery)  # every query has its identity in the gallery
    if name == "caviar4reid":
        per_pid = defaultdict(set)
        for r in rows:
            per_pid[int(r["pid"])].add(int(r["camid"]))
        assert Counter((pid, cam) for _, pid, cam in ds.query) == {
            (p, c): 1 for p in test_ids for c in per_pid[p]
        }
        assert len(ds.train) + len(ds.query) + len(ds.gallery) == n_images
    if name in ("viper", "prid"):  # cam a queries against cam b gallery
        assert {c for _, _, c in ds.query} == {1} and {c for _, _, c in ds.gallery} == {2}
    assert all(os.path.isfile(p) for p, _, _ in ds.query[:5] + ds.gallery[:5] + ds.train[:5])


# ------------------------------------------------------------------------------------------
# the one manifest reader (data sets, extract, ingest)
# ------------------------------------------------------------------------------------------
def test_reader_with_timestamps_cameras_and_tracks(tmp_path, write_images):
    header = ("image", "timestamp", "camera", "track_id", "frame", "pid")
    rows = [
        ("c/a.jpg", "2026-12-03T14:00:00Z", 3, 7, 1, 12),
        ("c/b.jpg", "2026-12-03T15:00:01+01:00", 3, 7, 2, ""),
        ("c/c.jpg", "1764770400.5", "", "", "", 4),
    ]
    path = write_manifest(tmp_path, rows, write_images, header=header, name="timed.csv")
    m = read_manifest_rows(str(path))
    # the times by hand: 2026-12-03T14:00:00 UTC is 1796306400 s after the epoch
    assert m.timestamps.tolist() == [1796306400.0, 1796306401.0, 1764770400.5]
    assert m.cameras.tolist() == [3, 3, -1] and m.camids.tolist() == [2, 2, -1]
    assert m.track_ids.tolist() == [7, 7, -1] and m.frames.tolist() == [1, 2, -1]
    assert m.pids.tolist() == [12, -1, 4] and m.splits == [] and m.notes == []
    assert m.paths == [str(tmp_path / "c" / n) for n in ("a.jpg", "b.jpg", "c.jpg")]
    # extract's and ingest's source carries the same columns
    src = manifest_source(str(path))
    assert src.timestamps.tolist() == m.timestamps.tolist()
    assert src.cameras.tolist() == [3, 3, -1] and src.frames.tolist() == [1, 2, -1]


def test_reader_without_timestamps(tmp_path, write_images):
    rows = [("x.jpg", "bob", 0, "train"), ("y.jpg", "alice", -1, "Query")]
    path = write_manifest(
        tmp_path, rows, write_images, header=("image", "pid", "camid", "split"), name="m.csv"
    )
    m = read_manifest_rows(str(path))
    assert m.timestamps is None and m.cameras is None
    assert m.pids.tolist() == [1, 0] and "not all integers" in m.notes[0]  # sorted labels
    assert m.camids.tolist() == [0, -1] and m.splits == ["train", "query"]
    assert (m.track_ids == -1).all() and (m.frames == -1).all()
    src = manifest_source(str(path))
    assert src.timestamps is None and src.notes["splits"] == {"query": 1, "train": 1}


def test_reader_names_every_bad_row_by_file_and_line(tmp_path, write_images):
    header = ("image", "timestamp", "camid", "frame")
    rows = [
        ("a.jpg", "2026-12-03T14:00:00", 1, 5),
        ("b.jpg", "yesterday", 1, 5),
        ("", "2026-12-03T14:00:00", 1, 5),
        ("c.jpg", "2026-12-03T14:00:00", "a", "x"),
        ("a.jpg", "2026-12-03T14:00:00", 2**63, "9" * 5000),
    ]
    write_images(tmp_path, ["a.jpg", "b.jpg", "c.jpg"])
    with open(tmp_path / "bad.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    with pytest.raises(DatasetError) as err:
        read_manifest_rows(str(tmp_path / "bad.csv"))
    text = str(err.value)
    assert text.startswith(f"6 row(s) of {tmp_path / 'bad.csv'} are invalid")
    lines = text.splitlines()[1:]
    assert lines[0].strip().startswith("line 3: timestamp 'yesterday' is not a time")
    assert [ln.strip() for ln in lines[1:]] == [
        "line 4: empty image",
        "line 5: camid 'a' is not an integer",
        "line 5: frame 'x' is not an integer",
        f"line 6: camid {2**63} is outside the 64-bit integers",
        f"line 6: frame {'9' * 5000} is outside the 64-bit integers",
    ]
    # pid set on every row where it is required (data sets), camid or camera but not both
    write_manifest(tmp_path, [("a.jpg", "", 0)], write_images, name="nopid.csv")
    with pytest.raises(DatasetError, match="line 2: empty pid"):
        build_dataset("manifest", tmp_path / "nopid.csv")
    both = write_manifest(
        tmp_path, [("a.jpg", 1, 1)], write_images, header=("image", "camid", "camera"), name="2.csv"
    )
    with pytest.raises(DatasetError, match="2.csv: give the camera as camid or as camera"):
        read_manifest_rows(str(both))
    gone = write_manifest(
        tmp_path, [("a.jpg",), ("gone.jpg",)], write_images, header=("image",), name="gone.csv"
    )
    os.remove(tmp_path / "gone.jpg")
    with pytest.raises(
        DatasetNotFoundError, match=r"(?s)1 of 2 images listed in .*gone.csv.*gone.jpg"
    ):
        manifest_source(str(gone))
