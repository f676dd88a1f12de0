"""The synthetic pedestrian generator: layout, protocol, determinism, reuse, and that identities
carry a learnable signal (nearest-neighbour retrieval on simple features beats chance)."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from partreid.data.datasets import DatasetError, build_dataset, generate_synthetic
from partreid.data.datasets.synthetic import (
    MARKER,
    SyntheticParams,
    load_synthetic,
    main,
    read_marker,
)
from partreid.data.io import UnreadableImageError

TINY = dict(
    num_ids=8,
    test_fraction=0.5,
    num_cams=3,
    images_per_id_per_cam=2,
    height=64,
    width=32,
    num_distractors=3,
    num_junk=2,
)


def file_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


def pid_set(items):
    return {pid for _, pid, _ in items}


def test_layout_counts_and_protocol(tmp_path):
    start = time.perf_counter()
    info = generate_synthetic(tmp_path / "s", seed=0, **TINY)
    seconds = time.perf_counter() - start
    n = sum(info["counts"].values())
    print(f"\nsynthetic: {n} images at 64x32 in {seconds:.2f} s ({n / seconds:.0f} images/s)")
    root = tmp_path / "s"
    assert sorted(os.listdir(root)) == sorted(
        ["bounding_box_train", "query", "bounding_box_test", MARKER]
    )
    with Image.open(next((root / "query").iterdir())) as img:
        assert img.size == (32, 64) and img.mode == "RGB"

    ds = build_dataset("synthetic", root, seed=0, **TINY)
    assert "reused" in ds.summary()  # the folder matches: not generated again
    # 4 train ids x 3 cams x 2 images; test: one query per id and camera, the rest gallery
    assert ds.num_train_pids == 4 and len(ds.train) == 24 and ds.num_train_cams == 3
    assert set(ds.train_pid_map) == {1, 2, 3, 4} and pid_set(ds.query) == {5, 6, 7, 8}
    assert Counter((pid, cam) for _, pid, cam in ds.query) == {
        (p, c): 1 for p in range(5, 9) for c in range(3)
    }
    gallery = Counter(pid for _, pid, _ in ds.gallery)
    assert gallery == {**{p: 3 for p in range(5, 9)}, 0: 3}  # + 3 distractors (pid 0)
    junk = [n for n in os.listdir(root / "bounding_box_test") if n.startswith("-1_")]
    assert len(junk) == 2 and "dropped 2 junk" in ds.summary()  # junk files exist and are dropped
    assert info["counts"] == {"bounding_box_train": 24, "query": 12, "bounding_box_test": 17}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    generate_synthetic(tmp_path / "a", seed=3, **TINY)
    generate_synthetic(tmp_path / "b", seed=3, **TINY)
    generate_synthetic(tmp_path / "c", seed=4, **TINY)
    a, b, c = (file_bytes(tmp_path / k) for k in "abc")
    assert a == b and len(a) == 53
    assert read_marker(str(tmp_path / "a"))["params"] == read_marker(str(tmp_path / "b"))["params"]
    same_names = set(a) & set(c)
    assert sum(a[k] == c[k] for k in same_names) == 0


def test_params_object_and_keywords_make_the_same_set(tmp_path):
    """``generate_synthetic(root, SyntheticParams(...))`` and keyword options are one call."""
    generate_synthetic(tmp_path / "kw", seed=2, **TINY)
    generate_synthetic(tmp_path / "obj", SyntheticParams(seed=2, **TINY))
    generate_synthetic(tmp_path / "mix", SyntheticParams(seed=2, **TINY), num_junk=0)
    assert file_bytes(tmp_path / "kw") == file_bytes(tmp_path / "obj")
    assert (tmp_path / "kw" / MARKER).read_bytes() == (tmp_path / "obj" / MARKER).read_bytes()
    assert read_marker(str(tmp_path / "mix"))["params"]["num_junk"] == 0
    with pytest.raises(TypeError):
        generate_synthetic(tmp_path / "bad", num_identities=5)


def test_loader_options_are_the_params_fields():
    """The data set's options (``build_dataset("synthetic", ...)``) have the generator's defaults."""
    kw = load_synthetic.__kwdefaults__
    assert {k: kw[k] for k in vars(SyntheticParams())} == vars(SyntheticParams())


def test_identity_is_constant_across_images():
    """The same identity under the same camera changes less than two identities do (pixels)."""
    from partreid.data.datasets.synthetic import _rng, render_image, sample_camera, sample_identity

    cam = sample_camera(_rng(0, 1, 0), 0)
    idents = [sample_identity(_rng(0, 3, p)) for p in range(12)]
    imgs = np.stack(
        [
            [
                np.asarray(
                    render_image(idents[p], cam, _rng(0, 9, p, k), 64, 32, 0.0, 0.0), np.float32
                )
                for k in range(4)
            ]
            for p in range(12)
        ]
    )  # (id, k, h, w, 3)
    means = imgs.reshape(12, 4, 8, 8, 4, 8, 3).mean(axis=(3, 5))  # 8x4 block means
    feats = means.reshape(12, 4, -1)
    within = np.mean(
        [
            np.abs(feats[p, i] - feats[p, j]).mean()
            for p in range(12)
            for i in range(4)
            for j in range(i)
        ]
    )
    between = np.mean(
        [np.abs(feats[p, 0] - feats[q, 0]).mean() for p in range(12) for q in range(p)]
    )
    assert within < 0.8 * between


def test_retrieval_on_simple_features_beats_chance(tmp_path):
    """Cross-camera nearest neighbours on camera-normalised centre pixels beat random ranking."""
    root = tmp_path / "r"
    ds = build_dataset(
        "synthetic",
        root,
        num_ids=40,
        test_fraction=0.5,
        num_cams=2,
        images_per_id_per_cam=3,
        height=64,
        width=32,
        occlusion=0.0,
        cutoff=0.0,
        num_distractors=0,
        num_junk=0,
    )

    def feats(items):
        out = []
        for p, _, _ in items:
            a = np.asarray(Image.open(p), np.float32)
            a = a / (a.reshape(-1, 3).mean(0) + 1.0)  # grey-world: undo the camera's colour cast
            a = a[:, 8:24].reshape(8, 8, 4, 4, 3).mean(axis=(1, 3)).ravel()
            a -= a.mean()
            out.append(a / np.linalg.norm(a))
        return np.stack(out)

    def mean_ap(dist):
        qp = np.array([p for _, p, _ in ds.query])
        qc = np.array([c for _, _, c in ds.query])
        gp = np.array([p for _, p, _ in ds.gallery])
        gc = np.array([c for _, _, c in ds.gallery])
        aps = []
        for i in range(len(qp)):
            keep = ~((gp == qp[i]) & (gc == qc[i]))
            match = gp[keep][np.argsort(dist[i][keep], kind="stable")] == qp[i]
            ranks = np.flatnonzero(match)
            aps.append(np.mean(np.arange(1, len(ranks) + 1) / (ranks + 1)))
        return float(np.mean(aps))

    q, g = feats(ds.query), feats(ds.gallery)
    learned = mean_ap(-q @ g.T)
    rng = np.random.default_rng(0)
    chance = np.mean([mean_ap(rng.random((len(q), len(g)))) for _ in range(5)])
    print(f"\nsimple-feature mAP {learned:.3f} vs random ranking {chance:.3f}")
    assert learned > 2 * chance


def test_reuse_and_regenerate(tmp_path):
    root = tmp_path / "s"
    first = build_dataset("synthetic", root, seed=1, **TINY)
    assert "generated" in first.summary()
    stamp = (root / MARKER).stat().st_mtime_ns
    again = build_dataset("synthetic", root, seed=1, **TINY)
    assert "reused" in again.summary() and (root / MARKER).stat().st_mtime_ns == stamp
    assert again.train == first.train and again.gallery == first.gallery
    bigger = build_dataset("synthetic", root, seed=1, **{**TINY, "num_ids": 10})
    assert "generated" in bigger.summary() and len(pid_set(bigger.query)) == 5
    assert read_marker(str(root))["params"]["num_ids"] == 10
    carved = build_dataset("synthetic", root, seed=1, carve_val=2, **{**TINY, "num_ids": 10})
    assert carved.num_train_pids == 3 and len(pid_set(carved.query)) == 2


def test_refuses_foreign_folder_and_bad_params(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep me")
    with pytest.raises(DatasetError, match="not empty and holds no synthetic.json"):
        generate_synthetic(foreign, **TINY)
    assert (foreign / "thesis.txt").read_text() == "keep me"
    with pytest.raises(DatasetError, match="num_cams must be in 2..9"):
        generate_synthetic(tmp_path / "x", **{**TINY, "num_cams": 12})
    with pytest.raises(DatasetError, match="at least one train"):
        generate_synthetic(tmp_path / "x", **{**TINY, "test_fraction": 1.0})
    with pytest.raises(DatasetError, match="unknown option"):
        build_dataset("synthetic", tmp_path / "x", num_identities=5)


def test_corrupt_jpeg_is_named(tmp_path, corrupt_jpeg):
    root = tmp_path / "s"
    generate_synthetic(root, **TINY)
    bad = corrupt_jpeg(sorted((root / "bounding_box_train").iterdir())[5])
    with pytest.raises(UnreadableImageError) as err:
        build_dataset("synthetic", root, verify=True, **TINY)
    assert str(bad) in str(err.value) and "1 of" in str(err.value)


def test_command_line(tmp_path, capsys):
    main(
        [
            str(tmp_path / "cli"),
            "--num-ids",
            "4",
            "--num-cams",
            "2",
            "--images-per-id-per-cam",
            "2",
            "--height",
            "32",
            "--width",
            "16",
            "--num-distractors",
            "1",
            "--num-junk",
            "1",
            "--seed",
            "7",
        ]
    )
    assert "wrote 18 images" in capsys.readouterr().out
    meta = read_marker(str(tmp_path / "cli"))
    assert meta["params"]["seed"] == 7 and meta["params"]["height"] == 32


@pytest.mark.slow
def test_default_size_speed(tmp_path):
    """The default set (~1,200 images at 128x64); prints the time it takes."""
    info = generate_synthetic(tmp_path / "d")
    n = sum(info["counts"].values())
    print(f"\nsynthetic default: {n} images in {info['seconds']:.2f} s")
    assert 1000 <= n <= 1500
