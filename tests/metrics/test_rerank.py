"""re_rank / re_rank_features against a plain numpy implementation of the classic algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from partreid.metrics import compute_distance, re_rank, re_rank_features


def reference_re_rank(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6, lambda_value=0.3):
    """The classic dense k-reciprocal re-ranking (Zhong et al. 2017), written plainly.

    Squared distances over all N = Q + G items, each column divided by its maximum and the
    matrix transposed; stable argsort of every row; k-reciprocal sets expanded by the 2/3 rule;
    Gaussian weights; local query expansion over the k2 nearest; Jaccard distance.
    """
    dist = np.block([[q_q_dist, q_g_dist], [q_g_dist.T, g_g_dist]])
    dist = np.power(dist, 2).astype(np.float32)
    dist = np.transpose(dist / np.max(dist, axis=0))
    n, n_q = dist.shape[0], q_g_dist.shape[0]
    rank = np.argsort(dist, axis=1, kind="stable")
    half = int(np.around(k1 / 2.0))

    def reciprocal(i, k):
        forward = rank[i, : k + 1]
        return forward[np.any(rank[forward, : k + 1] == i, axis=1)]

    V = np.zeros_like(dist)
    for i in range(n):
        kr = reciprocal(i, k1)
        expanded = list(kr)
        for cand in kr:
            cand_kr = reciprocal(cand, half)
            if len(np.intersect1d(cand_kr, kr)) > 2.0 / 3 * len(cand_kr):
                expanded.extend(cand_kr)
        expanded = np.unique(np.asarray(expanded, dtype=np.int64))
        weight = np.exp(-dist[i, expanded])
        V[i, expanded] = weight / weight.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(n)])
    jaccard = np.zeros((n_q, n), dtype=np.float32)
    for i in range(n_q):
        common = np.minimum(V[i][None, :], V).sum(axis=1)
        jaccard[i] = 1 - common / (2 - common)
    final = jaccard * (1 - lambda_value) + dist[:n_q] * lambda_value
    return final[:, n_q:]


def features(rng, num_q, num_g, dim, integer=False):
    if integer:  # exact small-integer features: many exactly tied distances
        return (
            rng.integers(0, 3, (num_q, dim)).astype(np.float32),
            rng.integers(0, 3, (num_g, dim)).astype(np.float32),
        )
    centres = rng.normal(size=(6, dim))
    q = centres[rng.integers(0, 6, num_q)] + 0.7 * rng.normal(size=(num_q, dim))
    g = centres[rng.integers(0, 6, num_g)] + 0.7 * rng.normal(size=(num_g, dim))
    return q.astype(np.float32), g.astype(np.float32)


def distances(qf, gf, metric):
    return (
        compute_distance(qf, gf, metric),
        compute_distance(qf, qf, metric),
        compute_distance(gf, gf, metric),
    )


CASES = [
    # num_q, num_g, dim, k1, k2, lambda, integer features
    (25, 70, 8, 20, 6, 0.3, False),
    (30, 60, 3, 20, 6, 0.3, True),  # ties
    (20, 50, 8, 7, 1, 0.5, False),  # k2 = 1: no query expansion
    (6, 8, 4, 20, 6, 0.3, False),  # gallery (and N) smaller than k1
    (35, 90, 2, 5, 3, 0.0, True),  # odd k1 (np.around(2.5) == 2), lambda 0
]


@pytest.fixture(params=[False, True], ids=["float32", "bf16"])
def gallery_blocks(request, monkeypatch):
    """Run re_rank_features with float32 products only, or with bfloat16 estimates for the
    same-side blocks (the default on CPUs with native bfloat16), whatever this machine has."""
    import partreid.metrics.rerank as rerank_module

    monkeypatch.setattr(rerank_module, "_BF16", request.param)
    return request.param


@pytest.mark.parametrize(
    "case", CASES, ids=[f"q{c[0]}g{c[1]}k{c[3]}-{c[4]}{'-ties' if c[6] else ''}" for c in CASES]
)
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_both_entry_points_match_reference(case, metric, gallery_blocks):
    num_q, num_g, dim, k1, k2, lam, integer = case
    if integer and metric == "cosine":
        pytest.skip(
            "exact ties are only guaranteed for integer features under the Euclidean metric"
        )
    rng = np.random.default_rng(num_q + num_g)
    qf, gf = features(rng, num_q, num_g, dim, integer)
    qg, qq, gg = distances(qf, gf, metric)
    expected = reference_re_rank(qg, qq, gg, k1, k2, lam)

    from_dist = re_rank(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    assert isinstance(from_dist, np.ndarray) and from_dist.shape == (num_q, num_g)
    np.testing.assert_allclose(from_dist, expected, atol=1e-4)

    # small blocks exercise the blocked, symmetric pass and the merging of neighbour lists
    from_feat = re_rank_features(
        qf, gf, k1=k1, k2=k2, lambda_value=lam, metric=metric, chunk_size=16
    )
    assert isinstance(from_feat, np.ndarray)
    np.testing.assert_allclose(from_feat, expected, atol=1e-4)
    np.testing.assert_allclose(from_feat, from_dist, atol=1e-4)


def test_torch_inputs_and_outputs():
    rng = np.random.default_rng(11)
    qf, gf = features(rng, 15, 40, 6)
    qg, qq, gg = distances(qf, gf, "euclidean")
    expected = reference_re_rank(qg, qq, gg)
    out = re_rank_features(torch.from_numpy(qf), torch.from_numpy(gf).double(), chunk_size=9)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device.type == "cpu"
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4)
    out = re_rank(torch.from_numpy(qg), torch.from_numpy(qq), torch.from_numpy(gg))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_asymmetric_blocks_follow_the_reference_transpose():
    # the reference normalises columns and then transposes; with a non-symmetric gallery block
    # that reads the gallery distances column-wise, and so must re_rank
    rng = np.random.default_rng(2)
    qg = rng.random((10, 30)).astype(np.float32)
    qq = rng.random((10, 10)).astype(np.float32)
    gg = rng.random((30, 30)).astype(np.float32)
    np.fill_diagonal(qq, 0)
    np.fill_diagonal(gg, 0)
    np.testing.assert_allclose(
        re_rank(qg, qq, gg, k1=6, k2=3), reference_re_rank(qg, qq, gg, 6, 3), atol=1e-4
    )


def test_reranking_helps_on_clustered_data():
    # a property check independent of the reference: re-ranking keeps the distances in [0, 1]
    rng = np.random.default_rng(4)
    qf, gf = features(rng, 20, 60, 8)
    out = re_rank_features(qf, gf)
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1 + 1e-6


def test_faiss_neighbours_when_installed():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(5)
    qf, gf = features(rng, 20, 50, 8)
    expected = reference_re_rank(*distances(qf, gf, "euclidean"))
    np.testing.assert_allclose(re_rank_features(qf, gf, use_faiss=True), expected, atol=1e-4)


def test_bad_arguments_are_reported():
    qf = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="metric"):
        re_rank_features(qf, qf, metric="manhattan")
    with pytest.raises(ValueError, match="g_g_dist"):
        re_rank(np.zeros((3, 5)), np.zeros((3, 3)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="k1"):
        re_rank_features(qf, qf, k1=0)


@pytest.mark.parametrize("integer", [False, True])
def test_narrow_column_blocks_filter_neighbours_exactly(integer, monkeypatch, gallery_blocks):
    # narrow column blocks make most updates take the "below the current k-th" filter path
    import partreid.metrics.rerank as rerank_module

    monkeypatch.setattr(rerank_module, "_SUB_BLOCK", 7)
    rng = np.random.default_rng(8)
    qf, gf = features(rng, 20, 50, 3 if integer else 8, integer)
    qg, qq, gg = distances(qf, gf, "euclidean")
    expected = reference_re_rank(qg, qq, gg)
    np.testing.assert_allclose(re_rank(qg, qq, gg), expected, atol=1e-4)
    np.testing.assert_allclose(re_rank_features(qf, gf, chunk_size=30), expected, atol=1e-4)


def test_many_small_chunks_give_the_same_result(monkeypatch, gallery_blocks):
    # shrink every memory budget so that all chunked loops run over many chunks
    import partreid.metrics.rerank as rerank_module

    monkeypatch.setattr(rerank_module, "_BLOCK_ELEMENTS", 500)
    monkeypatch.setattr(rerank_module, "_PAIR_BUDGET", 200)
    monkeypatch.setattr(rerank_module, "_SUB_BLOCK", 13)
    rng = np.random.default_rng(9)
    qf, gf = features(rng, 24, 60, 8)
    qg, qq, gg = distances(qf, gf, "euclidean")
    expected = reference_re_rank(qg, qq, gg)
    np.testing.assert_allclose(re_rank(qg, qq, gg), expected, atol=1e-4)
    np.testing.assert_allclose(re_rank_features(qf, gf, chunk_size=11), expected, atol=1e-4)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize(
    "slack, far_slots, widen",
    [(0, 1, 4), (0, 1, 1), (2, 2, 2)],
    ids=["second-look", "float32-rows", "mixed"],
)
def test_short_candidate_lists_are_completed_exactly(metric, slack, far_slots, widen, monkeypatch):
    # tiny bfloat16 candidate lists cannot be proven complete: those rows get a wider
    # bfloat16 list, and float32 rows when that is still not enough
    import partreid.metrics.rerank as rerank_module

    monkeypatch.setattr(rerank_module, "_BF16", True)
    monkeypatch.setattr(rerank_module, "_KNN_SLACK", slack)
    monkeypatch.setattr(rerank_module, "_FAR_SLOTS", far_slots)
    monkeypatch.setattr(rerank_module, "_REDO_WIDEN", widen)
    redone, exact_rows = [], []
    redo, exact = rerank_module._redo_rows, rerank_module._FeatureSource.exact_rows
    monkeypatch.setattr(
        rerank_module,
        "_redo_rows",
        lambda src, rows, *a: (redone.append(rows.numel()), redo(src, rows, *a)),
    )
    monkeypatch.setattr(
        rerank_module._FeatureSource,
        "exact_rows",
        lambda self, rows: (exact_rows.append(rows.numel()), exact(self, rows))[1],
    )
    rng = np.random.default_rng(12)
    qf, gf = features(rng, 20, 90, 8)
    expected = reference_re_rank(*distances(qf, gf, metric), k1=6, k2=3)
    out = re_rank_features(qf, gf, k1=6, k2=3, metric=metric, chunk_size=32)
    assert sum(redone) > 0
    if widen == 1:
        assert sum(exact_rows) > 0
    np.testing.assert_allclose(out, expected, atol=1e-4)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_bf16_estimates_stay_within_their_bounds(metric):
    # the candidate selection is only exact if every estimate z is within its stated bound of
    # the float32 value: check all pairs on features with a large mean and uneven norms
    import partreid.metrics.rerank as rerank_module

    rng = np.random.default_rng(3)
    f = (rng.normal(size=(70, 48)) * rng.uniform(0.2, 5.0, size=(70, 1)) + 4.0).astype(np.float32)
    f[5] = f[6]  # a duplicate: distance 0
    src = rerank_module._FeatureSource(
        torch.from_numpy(f[:20]), torch.from_numpy(f[20:]), metric, bf16=True
    )
    n = f.shape[0]
    rows = torch.arange(n)
    z = src.approx_rows(rows)
    i, j = torch.meshgrid(rows, rows, indexing="ij")
    e = src.exact_pairs(i.reshape(-1), j.reshape(-1)).view(n, n)
    slack = (
        src.bound.unsqueeze(1) + src.rho * (src.sqc.unsqueeze(1) + src.sqc.unsqueeze(0) - z).abs()
    )
    assert ((z - e).abs() <= slack).all()
    assert ((z - e).abs() <= src.hmax.unsqueeze(1)).all()
    assert (slack < 0.2 * e.max()).all()  # the bounds are not vacuous on this data


@pytest.mark.parametrize(
    "shape, density",
    [((37, 53), 0.0), ((37, 53), 0.002), ((64, 64), 0.05), ((3, 5), 0.5), ((128, 40), 0.9)],
)
def test_sparse_positions_equal_nonzero(shape, density):
    import partreid.metrics.rerank as rerank_module

    mask = torch.from_numpy(np.random.default_rng(1).random(shape) < density)
    for got, want in zip(rerank_module._positions(mask), torch.nonzero(mask, as_tuple=True)):
        assert torch.equal(got, want)
