"""GalleryIndex and `partreid index` / `partreid search` against brute-force references."""

from __future__ import annotations

import csv
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from partreid.cli import main
from partreid.config import EvalConfig
from partreid.engine.evaluator import distances as eval_distances
from partreid.features import Features
from partreid.index import (
    GalleryIndex,
    GalleryIndexError,
    faiss_available,
    open_gallery,
)
from partreid.metrics import compute_distance, re_rank

needs_faiss = pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
BACKENDS = ["torch", pytest.param("faiss", marks=needs_faiss)]


def clustered(num_ids=60, views=12, dim=48, num_queries=30, seed=0, spread=0.35):
    """Re-ID-like features: identity centres (positive, like post-ReLU features) with noisy
    views on two cameras, and queries that are further views of the first identities."""
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(num_ids, dim))) * 2.0
    pids = np.repeat(np.arange(num_ids), views)
    g = centres[pids] + spread * rng.normal(size=(len(pids), dim)) * 2.0
    q_pids = np.arange(num_queries) % num_ids
    q = centres[q_pids] + spread * rng.normal(size=(num_queries, dim)) * 2.0
    gallery = Features.build(
        g.astype(np.float32),
        [f"g/{i:05d}.jpg" for i in range(len(pids))],
        pids=pids,
        camids=np.arange(len(pids)) % 2,
    )
    query = Features.build(
        q.astype(np.float32),
        [f"q/{i:05d}.jpg" for i in range(num_queries)],
        pids=q_pids,
        camids=np.zeros(num_queries),
    )
    return gallery, query


def _json(path):
    with open(path) as f:
        return json.load(f)


def reference(q, g, k, metric="euclidean", normalize=False):
    """Top-k by eval's own distance (engine.evaluator.distances) and a stable sort."""
    cfg = EvalConfig(distance=metric, normalize=normalize)
    d = eval_distances(torch.from_numpy(q), torch.from_numpy(g), cfg).numpy()
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), order


# ----------------------------------------------------------------------------- exact search
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "metric,normalize", [("euclidean", False), ("cosine", False), ("euclidean", True)]
)
def test_exact_equals_eval_ranking(backend, metric, normalize):
    """Default metric from the features' meta; top-10 = eval's distance matrix, stably sorted."""
    gallery, query = clustered()
    gallery.meta.update(distance=metric, normalize=normalize)
    index = GalleryIndex.build(gallery, backend=backend)
    assert (index.metric, index.normalize, index.backend) == (metric, normalize, backend)
    d, i = index.search(query.features, topk=10)
    rd, ri = reference(query.features, gallery.features, 10, metric, normalize)
    assert i.dtype == np.int64 and d.dtype == np.float32 and d.shape == (30, 10)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(d, rd, rtol=1e-5, atol=1e-5)


def test_raw_euclidean_is_what_eval_ranks_by_default():
    """No meta: euclidean on the raw features, as `partreid eval` (EvalConfig defaults)."""
    gallery, query = clustered(seed=3)
    index = GalleryIndex.build(gallery)
    assert (index.metric, index.normalize) == ("euclidean", False)
    d, i = index.search(query.features[:1], topk=10)
    full = compute_distance(query.features[:1], gallery.features)[0]
    np.testing.assert_array_equal(i[0], np.argsort(full, kind="stable")[:10])
    np.testing.assert_allclose(d[0], np.sort(full)[:10], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_smaller_row(backend):
    """40 copies of the query (more than faiss's shortlist) spread over the gallery."""
    gallery, query = clustered(seed=1)
    g = gallery.features.copy()
    rows = np.sort(np.random.default_rng(0).choice(len(g), 40, replace=False))
    g[rows] = query.features[0]
    feats = Features.build(g, gallery.paths)
    d, i = GalleryIndex.build(feats, backend=backend).search(query.features[:1], topk=25)
    np.testing.assert_array_equal(i[0], rows[:25])
    np.testing.assert_allclose(d[0], 0.0, atol=1e-3)


@needs_faiss
def test_faiss_and_torch_agree():
    gallery, query = clustered(num_ids=80, views=10, dim=32, seed=5)
    a = GalleryIndex.build(gallery, backend="torch").search(query.features, topk=50)
    b = GalleryIndex.build(gallery, backend="faiss").search(query.features, topk=50)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)


def test_torch_blocks_equal_one_block(monkeypatch):
    """Small blocks (many gallery chunks, several query batches) change nothing."""
    import partreid.index as ix

    gallery, query = clustered(seed=2)
    # 2,720 rows with exact duplicates in other blocks: ties across blocks go to the smaller row
    g = Features.concat([gallery, gallery.subset(np.arange(2000) % len(gallery))])
    monkeypatch.setattr(ix, "_BLOCK_BYTES", 4 * 1024 * 40)  # 1024-row blocks, 10-query batches
    d, i = GalleryIndex.build(g, backend="torch").search(query.features, topk=15)
    rd, ri = reference(query.features, g.features, 15)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(d, rd, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- approximate
APPROX = {
    "ivfpq": {"nlist": 16, "nprobe": 4, "m": 8, "nbits": 4},
    "ivfflat": {"nlist": 16, "nprobe": 4},
    "hnsw": {"hnsw_m": 16, "ef_search": 64},
}


@needs_faiss
@pytest.mark.parametrize("kind", sorted(APPROX))
def test_approximate_recall_against_exact(kind):
    gallery, query = clustered(num_ids=200, views=12, dim=64, num_queries=100, seed=4)
    index = GalleryIndex.build(gallery, kind=kind, **APPROX[kind])
    d, i = index.search(query.features, topk=10)
    rd, ri = reference(query.features, gallery.features, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(i, ri)])
    assert recall >= 0.9, f"{kind}: recall@10 {recall:.3f}"
    # refined: the distances are the exact ones of the rows returned, ascending
    full = compute_distance(query.features, gallery.features)
    np.testing.assert_allclose(d, np.take_along_axis(full, i, 1), rtol=1e-5, atol=1e-5)
    assert (np.diff(d, axis=1) >= 0).all()


# ----------------------------------------------------------------------------- persistence
@pytest.mark.parametrize("kind", ["exact", pytest.param("hnsw", marks=needs_faiss)])
def test_save_load_round_trip(tmp_path, kind):
    gallery, query = clustered(seed=6)
    gallery.meta.update(distance="cosine", checkpoint="/x/model.pth")
    index = GalleryIndex.build(gallery, kind=kind)
    before = index.search(query.features, topk=10)
    path = index.save(str(tmp_path / "g.index"))
    info = _json(os.path.join(path, "index.json"))
    assert (info["kind"], info["metric"], info["count"], info["dim"]) == (kind, "cosine", 720, 48)
    loaded = GalleryIndex.load(path)
    assert (loaded.kind, loaded.metric, loaded.normalize) == (kind, "cosine", False)
    np.testing.assert_array_equal(loaded.features.paths, gallery.paths)
    np.testing.assert_array_equal(loaded.features.pids, gallery.pids)
    assert loaded.features.meta["checkpoint"] == "/x/model.pth"
    after = loaded.search(query.features, topk=10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], rtol=1e-6)
    # open_gallery reads the folder, and a features file as an exact index
    assert open_gallery(path).kind == kind
    feats = gallery.save(str(tmp_path / "g.npz"))
    np.testing.assert_array_equal(open_gallery(feats).search(query.features, 10)[1], before[1])


# ----------------------------------------------------------------------------- bad inputs
def test_bad_inputs_give_clear_messages(tmp_path):
    gallery, query = clustered()
    index = GalleryIndex.build(gallery)
    with pytest.raises(GalleryIndexError, match="16-d features but the gallery index holds 48-d"):
        index.search(query.features[:, :16])
    for k in (0, -3, 2.5):
        with pytest.raises(GalleryIndexError, match="topk must be a positive integer"):
            index.search(query.features, topk=k)
    assert index.search(query.features, topk=5000)[1].shape == (30, len(gallery))  # cut to N
    with pytest.raises(FileNotFoundError, match="gallery not found"):
        open_gallery(str(tmp_path / "missing.npz"))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(GalleryIndexError, match="not a partreid features file"):
        open_gallery(str(tmp_path / "other.npz"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(GalleryIndexError, match="no index.json"):
        open_gallery(str(tmp_path / "folder"))
    with pytest.raises(GalleryIndexError, match="index kind"):
        GalleryIndex.build(gallery, kind="lsh")
    with pytest.raises(GalleryIndexError, match="unknown parameter"):
        GalleryIndex.build(gallery, kind="exact", nprobe=3)
    with pytest.raises(GalleryIndexError, match="only does exact"):
        GalleryIndex.build(gallery, kind="hnsw", backend="torch")
    with pytest.raises(GalleryIndexError, match="metric"):
        GalleryIndex.build(gallery, metric="manhattan")
    with pytest.raises(GalleryIndexError, match="empty"):
        GalleryIndex.build(gallery.subset(np.zeros(len(gallery), bool)))


def test_without_faiss_the_torch_fallback_is_used(monkeypatch, tmp_path):
    gallery, query = clustered(seed=7)
    saved = GalleryIndex.build(gallery).save(str(tmp_path / "g.index"))
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now fails
    assert not faiss_available()
    index = GalleryIndex.build(gallery)
    assert index.backend == "torch"
    d, i = index.search(query.features, topk=10)
    rd, ri = reference(query.features, gallery.features, 10)
    np.testing.assert_array_equal(i, ri)
    np.testing.assert_allclose(d, rd, rtol=1e-5, atol=1e-5)
    assert GalleryIndex.load(saved).backend == "torch"
    with pytest.raises(GalleryIndexError, match=r"partreid\[deploy\]"):
        GalleryIndex.build(gallery, kind="ivfpq")


# ----------------------------------------------------------------------------- re-ranking
def test_rerank_reorders_the_shortlist_like_re_rank_on_it():
    """Each query's shortlist re-ranked = the matrix re_rank on {query} + shortlist alone."""
    gallery, query = clustered(seed=8)
    index = GalleryIndex.build(gallery)
    s = 40
    _, short = index.search(query.features, topk=s)
    d, i = index.search(query.features, topk=10, rerank=True, shortlist=s)
    for r in range(len(query)):
        q, g = query.features[r : r + 1], gallery.features[short[r]]
        rr = re_rank(compute_distance(q, g), compute_distance(q, q), compute_distance(g, g))[0]
        order = np.argsort(rr, kind="stable")[:10]
        assert set(i[r]) <= set(short[r])
        np.testing.assert_array_equal(i[r], short[r][order])
        np.testing.assert_allclose(d[r], rr[order], rtol=1e-4, atol=1e-5)
    # queries are re-ranked independently: a batch equals single queries
    one = index.search(query.features[3:4], topk=10, rerank=True, shortlist=s)
    np.testing.assert_array_equal(one[1][0], i[3])


# ----------------------------------------------------------------------------- commands
def test_index_and_search_commands(tmp_path, capsys):
    gallery, query = clustered(seed=9)
    gpath = gallery.save(str(tmp_path / "gallery.npz"))
    qpath = query.save(str(tmp_path / "query.npz"))
    out = str(tmp_path / "g.index")
    assert main(["index", gpath, "--out", out, "--backend", "torch"]) == 0
    assert _json(os.path.join(out, "index.json"))["backend"] == "torch"
    rd, ri = reference(query.features, gallery.features, 5)

    assert main(["search", out, qpath, "--topk", "5", "--out", str(tmp_path / "r.json")]) == 0
    res = _json(tmp_path / "r.json")
    assert res["topk"] == 5 and len(res["results"]) == 30
    for r, rec in enumerate(res["results"]):
        assert rec["query"] == query.paths[r] and rec["query_pid"] == query.pids[r]
        assert [m["gallery_row"] for m in rec["matches"]] == ri[r].tolist()
        assert [m["rank"] for m in rec["matches"]] == [1, 2, 3, 4, 5]
        m = rec["matches"][0]
        assert m["path"] == gallery.paths[ri[r, 0]] and m["pid"] == gallery.pids[ri[r, 0]]
        assert m["distance"] == pytest.approx(float(rd[r, 0]), rel=1e-5)

    assert main(["search", gpath, qpath, "--topk", "3", "--out", str(tmp_path / "r.csv")]) == 0
    with open(tmp_path / "r.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 90 and rows[0]["rank"] == "1"
    assert int(rows[4]["gallery_row"]) == ri[1, 1]

    # --skip-same-camera: eval's ranked list (same identity and camera left out)
    assert (
        main(["search", out, qpath, "--skip-same-camera", "--out", str(tmp_path / "s.json")]) == 0
    )
    res = _json(tmp_path / "s.json")
    full = compute_distance(query.features, gallery.features)
    for r, rec in enumerate(res["results"]):
        keep = ~((gallery.pids == query.pids[r]) & (gallery.camids == query.camids[r]))
        order = np.argsort(full[r], kind="stable")
        assert [m["gallery_row"] for m in rec["matches"]] == order[keep[order]][:10].tolist()

    capsys.readouterr()
    Features.build(query.features[:, :10], query.paths).save(str(tmp_path / "q10.npz"))
    for argv, msg in [
        (["search", out, str(tmp_path / "q10.npz")], "(10-d features). The feature dim"),
        (["search", out, str(tmp_path / "none.npz")], "query not found"),
        (["search", str(tmp_path / "nothing"), qpath], "gallery not found"),
        (["search", out, qpath, "--topk", "0"], "--topk must be a positive integer"),
        (["search", out, qpath, "--out", str(tmp_path / "r.txt")], "expected a .json or .csv"),
        (["search", out, os.path.join(out, "index.json")], "expected a features .npz"),
    ]:
        assert main(argv) == 2, argv
        assert msg in capsys.readouterr().err


def test_search_with_images_uses_the_gallerys_checkpoint(tmp_path, ckpt, capsys):
    from partreid.inference import Extractor

    rng = np.random.default_rng(0)
    folder = tmp_path / "crops"
    folder.mkdir()
    names = [f"{p:04d}_c{c}s1_000{i}01_01.jpg" for p in (1, 2, 3) for c in (1, 2) for i in (1, 2)]
    for n in names:
        Image.fromarray(rng.integers(0, 256, (70, 30, 3), dtype=np.uint8)).save(folder / n)
    ext = Extractor(ckpt, device="cpu", batch_size=4, num_workers=0, progress=False)
    gpath = str(tmp_path / "g.npz")
    ext.extract(str(folder), out=gpath)
    out = str(tmp_path / "g.index")
    assert main(["index", gpath, "--out", out]) == 0
    assert _json(os.path.join(out, "index.json"))["metric"] == "cosine"
    one = str(folder / names[5])
    assert main(["search", out, one, "--topk", "3", "--out", str(tmp_path / "r.json")]) == 0
    res = _json(tmp_path / "r.json")["results"]
    assert len(res) == 1 and res[0]["matches"][0]["path"].endswith(names[5])
    assert res[0]["matches"][0]["distance"] == pytest.approx(0.0, abs=1e-5)
    # a folder of query images = its features file
    assert main(["search", out, str(folder), "--out", str(tmp_path / "f.json")]) == 0
    assert main(["search", out, gpath, "--out", str(tmp_path / "n.json")]) == 0
    a = _json(tmp_path / "f.json")["results"]
    b = _json(tmp_path / "n.json")["results"]
    assert [[m["gallery_row"] for m in r["matches"]] for r in a] == [
        [m["gallery_row"] for m in r["matches"]] for r in b
    ]
    capsys.readouterr()
    assert main(["search", out, one, "--checkpoint", str(tmp_path / "no.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
