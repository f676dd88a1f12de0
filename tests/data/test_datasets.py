"""Loaders of the standard layouts, on tiny generated folders (and the shared CUHK03-NP copy)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import pytest

from partreid.data.datasets import (
    DatasetError,
    DatasetNotFoundError,
    ReIDDataset,
    build_dataset,
    carve_validation,
    dataset_options,
    list_datasets,
)
from partreid.data.io import UnreadableImageError

MARKET_TRAIN = [
    "0002_c1s1_000451_03.jpg",
    "0002_c2s1_000551_01.jpg",
    "0007_c2s3_070952_01.jpg",
    "0007_c3s3_071002_02.jpg",
    "0007_c3s3_071052_01.png",
    "0010_c6s1_012345_01.jpg",
]
MARKET_QUERY = ["0003_c1s1_000101_00.jpg", "0005_c4s2_000102_00.jpg"]
MARKET_GALLERY = [
    "0003_c2s1_000201_01.jpg",
    "0003_c1s1_000301_02.jpg",
    "0005_c5s2_000202_01.jpg",
    "0000_c3s1_000000_01.jpg",  # distractor: kept
    "0000_c1s1_000001_01.jpg",  # distractor: kept
    "-1_c1s1_000002_01.jpg",  # junk: dropped
    "-1_c2s1_000003_01.jpg",  # junk: dropped
]


def make_market(
    root: Path,
    write_images,
    folder="Market-1501-v15.09.15",
    train=MARKET_TRAIN,
    query=MARKET_QUERY,
    gallery=MARKET_GALLERY,
) -> Path:
    base = root / folder if folder else root
    write_images(base / "bounding_box_train", train)
    if query is not None:
        write_images(base / "query", query)
    if gallery is not None:
        write_images(base / "bounding_box_test", gallery)
    return base


def pids(items):
    return sorted({pid for _, pid, _ in items})


def names(items):
    return sorted(os.path.basename(p) for p, _, _ in items)


# ------------------------------------------------------------------------------------------
# Market-1501 and the Market-like layouts
# ------------------------------------------------------------------------------------------
def test_market1501_counts_relabel_junk_distractors(tmp_path, write_images, caplog):
    base = make_market(tmp_path, write_images)
    (base / "bounding_box_test" / "Thumbs.db").write_bytes(b"not an image")  # ignored: not an image
    with caplog.at_level(logging.INFO, logger="partreid.data"):
        ds = build_dataset("market1501", tmp_path)
    assert isinstance(ds, ReIDDataset) and ds.name == "market1501"
    assert ds.root == str(base)
    # train: original pids 2, 7, 10 -> labels 0, 1, 2 in pid order
    assert ds.train_pid_map == {2: 0, 7: 1, 10: 2}
    assert sorted((os.path.basename(p), pid, cam) for p, pid, cam in ds.train) == [
        ("0002_c1s1_000451_03.jpg", 0, 0),
        ("0002_c2s1_000551_01.jpg", 0, 1),
        ("0007_c2s3_070952_01.jpg", 1, 1),
        ("0007_c3s3_071002_02.jpg", 1, 2),
        ("0007_c3s3_071052_01.png", 1, 2),
        ("0010_c6s1_012345_01.jpg", 2, 5),
    ]
    assert ds.num_train_pids == 3 and ds.num_train_cams == 4
    # query / gallery keep the original pids; camids are 0-based
    assert sorted((os.path.basename(p), pid, cam) for p, pid, cam in ds.query) == [
        ("0003_c1s1_000101_00.jpg", 3, 0),
        ("0005_c4s2_000102_00.jpg", 5, 3),
    ]
    assert pids(ds.gallery) == [0, 3, 5]  # distractors kept, junk dropped
    assert len(ds.gallery) == 5 and all(pid != -1 for _, pid, _ in ds.gallery)
    assert all(os.path.isfile(p) for items in ds.subsets().values() for p, _, _ in items)
    summary = ds.summary()
    assert "dropped 2 junk" in summary and "kept 2 distractor" in summary
    table = {
        line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]]
        for line in summary.splitlines()
        if "|" in line
    }
    assert table["train"] == ["3", "6", "4"] and table["query"] == ["2", "2", "2"]
    assert table["gallery"] == ["3", "5", "4"]
    assert summary in caplog.text  # build_dataset logs the table


@pytest.mark.parametrize("folder", ["", "market1501", "Market-1501"])
def test_market1501_accepts_root_variants(tmp_path, write_images, folder):
    make_market(tmp_path, write_images, folder=folder)
    ds = build_dataset("market1501", tmp_path)
    assert len(ds.train) == 6 and len(ds.query) == 2 and len(ds.gallery) == 5


def test_wrong_root_names_expected_folder_and_contents(tmp_path, write_images):
    write_images(tmp_path / "Market-1501-v15.09.15-typo" / "bounding_box_train", MARKET_TRAIN)
    with pytest.raises(DatasetNotFoundError) as err:
        build_dataset("market1501", tmp_path)
    msg = str(err.value)
    assert "Market-1501-v15.09.15/" in msg and "bounding_box_train" in msg
    assert "Market-1501-v15.09.15-typo/" in msg  # what was found instead
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        build_dataset("dukemtmc", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="DukeMTMC-reID"):
        build_dataset("dukemtmc", tmp_path)


def test_unmatched_names_are_counted_and_logged(tmp_path, write_images, caplog):
    make_market(tmp_path, write_images, train=MARKET_TRAIN + ["foo.jpg", "person_7.jpg"])
    with caplog.at_level(logging.WARNING, logger="partreid.data"):
        ds = build_dataset("market1501", tmp_path)
    assert len(ds.train) == 6
    assert "skipped 2 image(s)" in caplog.text and "foo.jpg" in caplog.text
    assert "skipped 2 image(s)" in ds.summary()


def test_folder_without_parsable_names_is_an_error(tmp_path, write_images):
    make_market(tmp_path, write_images, query=["a.jpg", "b.jpg"])
    with pytest.raises(DatasetError, match=r"query has no image with a parsable name"):
        build_dataset("market1501", tmp_path)


def test_dukemtmc_and_occluded_duke(tmp_path, write_images):
    duke_train = ["0001_c2_f0046182.jpg", "0001_c8_f0046999.jpg", "0005_c1_f0000001.jpg"]
    duke_query = ["0009_c1_f0000100.jpg"]
    duke_gallery = ["0009_c7_f0000200.jpg", "0009_c1_f0000300.jpg"]
    for folder, name in (("DukeMTMC-reID", "dukemtmc"), ("Occluded_Duke", "occluded_duke")):
        root = tmp_path / name
        make_market(
            root,
            write_images,
            folder=folder,
            train=duke_train,
            query=duke_query,
            gallery=duke_gallery,
        )
        ds = build_dataset(name, root)
        assert ds.name == name
        assert sorted((pid, cam) for _, pid, cam in ds.train) == [(0, 1), (0, 7), (1, 0)]
        assert [(pid, cam) for _, pid, cam in ds.query] == [(9, 0)]
        assert sorted((pid, cam) for _, pid, cam in ds.gallery) == [(9, 0), (9, 6)]


def make_cuhk03_np(root: Path, write_images) -> None:
    for variant, n in (("labeled", 3), ("detected", 2)):
        base = root / "cuhk03-np" / variant
        write_images(
            base / "bounding_box_train",
            [
                f"{p:04d}_c{c}_1_{p:03d}_0{k}.png"
                for p in range(1, n + 1)
                for c in (1, 2)
                for k in (1, 2)
            ],
        )
        write_images(
            base / "query", [f"{p:04d}_c{c}_2_{p:03d}_01.png" for p in (50, 51) for c in (1, 2)]
        )
        write_images(
            base / "bounding_box_test",
            [f"{p:04d}_c{c}_2_{p:03d}_0{k}.png" for p in (50, 51) for c in (1, 2) for k in (2, 3)],
        )


def test_cuhk03_variants_and_aliases(tmp_path, write_images):
    make_cuhk03_np(tmp_path, write_images)
    labeled = build_dataset("cuhk03", tmp_path)  # default variant: labeled
    assert labeled.name == "cuhk03_labeled" and labeled.root.endswith(
        os.path.join("cuhk03-np", "labeled")
    )
    assert labeled.num_train_pids == 3 and len(labeled.train) == 12 and labeled.num_train_cams == 2
    assert len(labeled.query) == 4 and len(labeled.gallery) == 8 and pids(labeled.query) == [50, 51]
    detected = build_dataset("cuhk03", tmp_path, variant="detected")
    assert detected.num_train_pids == 2 and detected.root.endswith("detected")
    assert len(build_dataset("cuhk03_detected", tmp_path).train) == 8
    assert len(build_dataset("cuhk03_labeled", tmp_path / "cuhk03-np").train) == 12
    with pytest.raises(DatasetError, match="variant"):
        build_dataset("cuhk03_detected", tmp_path, variant="labeled")  # fixed by the alias
    with pytest.raises(DatasetError, match="variant must be one of"):
        build_dataset("cuhk03", tmp_path, variant="both")


def test_train_only_folder_requires_carve_val(tmp_path, write_images):
    # like ../shared/data/cuhk03np-detected: the root directly holds bounding_box_train only
    root = tmp_path / "cuhk03np-detected"
    train = [
        f"{p:04d}_c{c}_1_{p:03d}_{k:02d}.jpg"
        for p in range(1, 21)
        for c in (1, 2)
        for k in range(3)
    ]
    write_images(root / "bounding_box_train", train)
    with pytest.raises(DatasetError) as err:
        build_dataset("cuhk03", root, variant="detected")
    assert "carve_val" in str(err.value) and "query/" in str(err.value)

    ds = build_dataset("cuhk03", root, variant="detected", carve_val=5, seed=0)
    assert ds.num_train_pids == 15 and len(ds.train) == 15 * 6
    q, g = Counter((pid, cam) for _, pid, cam in ds.query), Counter(pid for _, pid, _ in ds.gallery)
    assert (
        len({pid for pid, _ in q}) == 5 and set(q.values()) == {1} and len(q) == 10
    )  # 1 per id per cam
    assert set(g.values()) == {4} and set(g) == {pid for pid, _ in q}
    assert set(ds.train_pid_map).isdisjoint(g)  # carved identities are out of train
    assert "carved" in ds.summary()
    again = build_dataset("cuhk03", root, variant="detected", carve_val=5, seed=0)
    assert again.query == ds.query and again.gallery == ds.gallery
    other = build_dataset("cuhk03", root, variant="detected", carve_val=5, seed=1)
    assert pids(other.query) != pids(ds.query)

    only = build_dataset("cuhk03_detected", root, train_only=True)
    assert len(only.train) == 120 and only.query == [] and only.gallery == []
    with pytest.raises(DatasetError, match="no training identity"):
        build_dataset("cuhk03", root, variant="detected", carve_val=20)


def test_cuhk03_warns_on_mismatched_variant_folder(tmp_path, write_images, caplog):
    root = tmp_path / "cuhk03np-detected"
    write_images(root / "bounding_box_train", ["0001_c1_1_001_01.jpg", "0001_c2_1_001_02.jpg"])
    with caplog.at_level(logging.WARNING, logger="partreid.data"):
        build_dataset("cuhk03", root, train_only=True)
    assert "suggests 'detected'" in caplog.text


def test_carve_validation_reference():
    """Against a direct reading of the rule: ids with >=2 cameras, one query per id and camera."""
    train = [(f"{p}_{c}_{k}", p, c) for p in range(10) for c in range(3) for k in range(p % 3 + 1)]
    train += [("single_cam", 99, 0), ("single_cam2", 99, 0)]  # never carved: one camera only
    rest, query, gallery = carve_validation(train, 4, seed=3)
    carved = {pid for _, pid, _ in query}
    assert len(carved) == 4 and 99 not in carved
    for pid in carved:
        imgs = [it for it in train if it[1] == pid]
        assert sorted(it[2] for it in query if it[1] == pid) == sorted({c for _, _, c in imgs})
        assert sorted(it for it in query + gallery if it[1] == pid) == sorted(imgs)
    assert sorted(rest + query + gallery) == sorted(train)
    with pytest.raises(DatasetError, match="at least two cameras"):
        carve_validation([("a", 0, 0), ("b", 0, 1), ("c", 1, 0), ("d", 1, 0), ("e", 2, 0)], 2)


# ------------------------------------------------------------------------------------------
# MSMT17
# ------------------------------------------------------------------------------------------
def make_msmt(root: Path, write_images, version: str) -> Path:
    base = root / ("MSMT17_V1" if version == "v1" else "MSMT17_V2")
    train_dir, test_dir = (
        ("train", "test") if version == "v1" else ("mask_train_v2", "mask_test_v2")
    )
    lines = {
        "train": [
            ("0000/0000_000_01_0303morning_0015_0.jpg", 0),
            ("0000/0000_001_15_0303noon_0020_1.jpg", 0),
            ("0003/0003_000_07_0303afternoon_0100_0.jpg", 3),
        ],
        "val": [
            ("0003/0003_001_02_0303morning_0111_0.jpg", 3),
            ("0005/0005_000_04_0303noon_0001_0.jpg", 5),
        ],
        "query": [
            ("0000/0000_000_09_0113morning_0001_0.jpg", 0),
            ("0011/0011_004_12_0113noon_0002_0.jpg", 11),
        ],
        "gallery": [
            ("0000/0000_001_10_0113morning_0003_0.jpg", 0),
            ("0011/0011_001_03_0113noon_0004_1.jpg", 11),
            ("0011/0011_002_12_0113noon_0005_0.jpg", 11),
        ],
    }
    for split, rows in lines.items():
        folder = base / (train_dir if split in ("train", "val") else test_dir)
        write_images(folder, [p for p, _ in rows])
        (base / f"list_{split}.txt").write_text("".join(f"{p} {pid}\n" for p, pid in rows))
    return base


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_msmt17_lists(tmp_path, write_images, version):
    base = make_msmt(tmp_path, write_images, version)
    ds = build_dataset("msmt17", tmp_path)
    assert ds.root == str(base) and f"MSMT17 {version}" in ds.summary()
    # val merged into train: original pids 0, 3, 5 -> 0, 1, 2; camera = third field, 0-based
    assert sorted((pid, cam) for _, pid, cam in ds.train) == [
        (0, 0),
        (0, 14),
        (1, 1),
        (1, 6),
        (2, 3),
    ]
    assert all(os.path.isfile(p) for items in ds.subsets().values() for p, _, _ in items)
    assert sorted((pid, cam) for _, pid, cam in ds.query) == [(0, 8), (11, 11)]
    assert sorted((pid, cam) for _, pid, cam in ds.gallery) == [(0, 9), (11, 2), (11, 11)]
    no_val = build_dataset("msmt17", base, combine_val=False)
    assert len(no_val.train) == 3 and no_val.num_train_pids == 2


def test_msmt17_bad_line_and_missing_folders(tmp_path, write_images):
    base = make_msmt(tmp_path, write_images, "v1")
    (base / "list_query.txt").write_text(
        "0000/0000_000_01_0303morning_0015_0.jpg 0\nbadname.jpg 4\n"
    )
    with pytest.raises(DatasetError) as err:
        build_dataset("msmt17", tmp_path)
    assert "list_query.txt" in str(err.value) and "line 2" in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError, match="list_train.txt"):
        build_dataset("msmt17", empty)


# ------------------------------------------------------------------------------------------
# Registry, options, verification
# ------------------------------------------------------------------------------------------
def test_registry_names_and_option_errors(tmp_path, write_images):
    assert {
        "market1501",
        "dukemtmc",
        "cuhk03",
        "cuhk03_labeled",
        "cuhk03_detected",
        "msmt17",
        "occluded_duke",
        "manifest",
        "synthetic",
    } <= set(list_datasets())
    with pytest.raises(DatasetError) as err:
        build_dataset("viper2", tmp_path)
    assert "market1501" in str(err.value) and "msmt17" in str(err.value)
    make_market(tmp_path, write_images)
    with pytest.raises(DatasetError) as err:
        build_dataset("market1501", tmp_path, carve_vals=3)
    assert (
        "carve_vals" in str(err.value)
        and "carve_val=None" in str(err.value)
        and "verify=False" in str(err.value)
    )
    assert set(dataset_options("msmt17")) == {"combine_val", "carve_val", "seed", "verify"}
    assert build_dataset("Market-1501", tmp_path).name == "market1501"  # case / dash tolerant


def test_verify_names_unreadable_files(tmp_path, write_images, corrupt_jpeg):
    base = make_market(tmp_path, write_images)
    build_dataset("market1501", tmp_path, verify=True)  # all fine
    bad = corrupt_jpeg(base / "query" / "0003_c1s1_000101_00.jpg")
    ds = build_dataset("market1501", tmp_path)  # verify is off by default
    with pytest.raises(UnreadableImageError) as err:
        ds.verify()
    assert str(bad) in str(err.value) and "1 of 13" in str(err.value)
    with pytest.raises(UnreadableImageError, match="0003_c1s1_000101_00.jpg"):
        build_dataset("market1501", tmp_path, verify=True)


# ------------------------------------------------------------------------------------------
# The shared development copy of CUHK03-NP (detected, train split only)
# ------------------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_shared_cuhk03np_detected_with_carved_validation(shared_data):
    root = shared_data / "cuhk03np-detected"
    if not (root / "bounding_box_train").is_dir():
        pytest.skip(f"{root}/bounding_box_train not found")
    ds = build_dataset("cuhk03", root, variant="detected", carve_val=100, seed=0)
    total = len(ds.train) + len(ds.query) + len(ds.gallery)
    assert total == 7365  # the README's count
    assert ds.num_train_pids == 767 - 100 and ds.num_train_cams == 2
    assert len({pid for _, pid, _ in ds.query}) == 100 and len(ds.query) == 200
    assert {pid for _, pid, _ in ds.query} == {pid for _, pid, _ in ds.gallery}
    assert set(ds.train_pid_map).isdisjoint(pid for _, pid, _ in ds.query)
