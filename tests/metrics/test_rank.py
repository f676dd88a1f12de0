"""evaluate_rank (and its CUHK03 single-gallery-shot CMC) and rank_summary vs per-query references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import partreid.metrics.rank as rank_module
from partreid.metrics import evaluate_rank, rank_summary


# ----------------------------------------------------------------------------- reference
def reference_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Plain per-query evaluation: stable argsort, keep mask, cumulative sums."""
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        same_pid = g_pids[order] == q_pids[i]
        same_cam = (g_camids[order] == q_camids[i]) & (q_camids[i] != -1)
        keep = ~(same_pid & same_cam)
        hits = same_pid[keep].astype(np.float64)
        if not hits.any():
            continue
        cum = np.cumsum(hits)
        precision = cum / np.arange(1, len(hits) + 1)
        aps.append((precision * hits).sum() / hits.sum())
        last = np.flatnonzero(hits)[-1]
        inps.append(hits.sum() / (last + 1))
        cmc = (cum >= 1).astype(np.float64)
        if len(cmc) < max_rank:  # pad with the last value
            cmc = np.concatenate([cmc, np.full(max_rank - len(cmc), cmc[-1])])
        cmcs.append(cmc[:max_rank])
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def reference_ap(distmat, q_pids, g_pids, q_camids, g_camids):
    """Each query's average precision in its own loop (NaN without a valid match)."""
    out = np.full(distmat.shape[0], np.nan)
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        same_pid = g_pids[order] == q_pids[i]
        keep = ~(same_pid & (g_camids[order] == q_camids[i]) & (q_camids[i] != -1))
        hits = same_pid[keep]
        if hits.any():
            ranks = np.flatnonzero(hits) + 1  # 1-based positions of the true matches
            out[i] = np.mean(np.arange(1, len(ranks) + 1) / ranks)
    return out


def random_problem(
    rng, num_q, num_g, num_ids, num_cams, integer=False, unknown_cam=0.0, distractors=0
):
    q_pids = rng.integers(1, num_ids + 1, num_q)
    g_pids = rng.integers(1, num_ids + 1, num_g)
    g_pids[:distractors] = 0  # distractors: gallery-only identity 0
    q_camids = rng.integers(0, num_cams, num_q)
    g_camids = rng.integers(0, num_cams, num_g)
    if unknown_cam:
        q_camids[rng.random(num_q) < unknown_cam] = -1
        g_camids[rng.random(num_g) < unknown_cam] = -1
    if integer:
        dist = rng.integers(0, 6, (num_q, num_g)).astype(np.float32)
    else:
        dist = rng.random((num_q, num_g)).astype(np.float32)
        # make true matches a bit closer so the metrics are not all tiny
        dist -= 0.3 * (q_pids[:, None] == g_pids[None, :])
    return dist, q_pids, g_pids, q_camids, g_camids


def check(out, ref, max_rank):
    cmc, mAP, mINP, n_valid = ref
    assert out["cmc"].dtype == np.float64 and out["cmc"].shape == (max_rank,)
    np.testing.assert_allclose(out["cmc"], cmc, atol=1e-6)
    assert out["mAP"] == pytest.approx(mAP, abs=1e-6)
    assert out["mINP"] == pytest.approx(mINP, abs=1e-6)
    assert out["num_valid_queries"] == n_valid


CASES = {
    "plain": dict(num_q=40, num_g=300, num_ids=25, num_cams=4),
    "ties": dict(num_q=40, num_g=300, num_ids=25, num_cams=4, integer=True),
    "unknown_cameras": dict(
        num_q=40, num_g=200, num_ids=20, num_cams=3, unknown_cam=0.3, integer=True
    ),
    "distractors_and_skipped": dict(num_q=50, num_g=200, num_ids=60, num_cams=2, distractors=40),
    "gallery_smaller_than_max_rank": dict(num_q=30, num_g=20, num_ids=6, num_cams=3, integer=True),
}


@pytest.fixture(params=["auto", "sorting", "binned", "searchsorted"])
def strategy(request, monkeypatch):
    """Run with the automatic choice and with each of the three rank strategies forced."""
    if request.param != "auto":
        monkeypatch.setattr(
            rank_module, "_DENSE_FRACTION", 2.0 if request.param == "sorting" else -1.0
        )
    if request.param == "searchsorted":  # the binned strategy's fallback for crowded bins
        monkeypatch.setattr(rank_module, "_MAX_TIE_WORK", -1.0)
    return request.param


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_rank_matches_reference(case, seed, strategy):
    rng = np.random.default_rng(seed)
    dist, qp, gp, qc, gc = random_problem(rng, **CASES[case])
    max_rank = 50
    ref = reference_rank(dist, qp, gp, qc, gc, max_rank)
    out = evaluate_rank(dist, qp, gp, qc, gc, max_rank=max_rank)
    check(out, ref, max_rank)
    assert out["num_valid_queries"] + out["num_skipped_queries"] == len(qp)
    # chunking (one query per chunk, odd chunk) and torch input give the same numbers
    for chunk in (1, 7):
        check(
            evaluate_rank(dist, qp, gp, qc, gc, max_rank=max_rank, chunk_size=chunk), ref, max_rank
        )
    tout = evaluate_rank(
        torch.from_numpy(dist).double(),
        torch.from_numpy(qp),
        torch.from_numpy(gp),
        torch.from_numpy(qc),
        torch.from_numpy(gc),
        max_rank=max_rank,
    )
    check(tout, ref, max_rank)


@pytest.mark.parametrize("case", sorted(CASES))
def test_per_query_ap_matches_reference(case, strategy):
    rng = np.random.default_rng(3)
    dist, qp, gp, qc, gc = random_problem(rng, **CASES[case])
    ref = reference_ap(dist, qp, gp, qc, gc)
    for chunk in (None, 7):
        out = evaluate_rank(dist, qp, gp, qc, gc, chunk_size=chunk, per_query=True)
        np.testing.assert_allclose(out["ap"], ref, atol=1e-9)  # NaN where NaN
        assert np.nanmean(out["ap"]) == pytest.approx(out["mAP"], abs=1e-12)
    assert "ap" not in evaluate_rank(dist, qp, gp, qc, gc)


def hard_problem(rng, kind, num_q=60, num_g=400):
    """Weak-model problems: most of the gallery lies before each query's hardest match."""
    q_pids = rng.integers(1, 6, num_q)  # 5 identities: ~80 true matches per query
    g_pids = rng.integers(1, 6, num_g)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    if kind == "random":  # features without identity information
        dist = rng.random((num_q, num_g)).astype(np.float32)
    elif kind == "half":  # matches only slightly closer, on a wide spread of scales per row
        dist = rng.random((num_q, num_g)) * rng.uniform(0.01, 100, (num_q, 1))
        dist -= 0.05 * dist.mean(1, keepdims=True) * (q_pids[:, None] == g_pids[None, :])
    elif kind == "crowded":  # a few distinct values: most items tie with a match distance
        dist = rng.integers(0, 3, (num_q, num_g)).astype(np.float64)
    elif kind == "clustered":  # a tight cluster plus far outliers: crowded histogram bins
        dist = 1.0 + 1e-6 * rng.random((num_q, num_g))
        dist[rng.random((num_q, num_g)) < 0.05] = 1e6
        dist[:, :3] = -np.inf
    elif kind == "infinite":  # some true matches at infinite distance
        dist = rng.random((num_q, num_g))
        dist[rng.random((num_q, num_g)) < 0.1] = np.inf
    else:
        raise AssertionError(kind)
    return dist, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("kind", ["random", "half", "crowded", "clustered", "infinite"])
def test_hard_problems_match_reference(kind, strategy):
    rng = np.random.default_rng(7)
    dist, qp, gp, qc, gc = hard_problem(rng, kind)
    ref = reference_rank(dist, qp, gp, qc, gc, 50)
    check(evaluate_rank(dist, qp, gp, qc, gc), ref, 50)
    check(evaluate_rank(dist, qp, gp, qc, gc, chunk_size=7), ref, 50)


def test_skipped_queries_are_counted():
    rng = np.random.default_rng(3)
    dist, qp, gp, qc, gc = random_problem(rng, **CASES["distractors_and_skipped"])
    out = evaluate_rank(dist, qp, gp, qc, gc)
    expected_skipped = sum(
        not np.any((gp == qp[i]) & ~((gc == qc[i]) & (qc[i] != -1))) for i in range(len(qp))
    )
    assert expected_skipped > 0
    assert out["num_skipped_queries"] == expected_skipped


def test_hand_computed_example(strategy):
    # one query (pid 1, cam 0); gallery ordered by distance: [junk(1,cam0), 2, 1, 3, 1]
    dist = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    g_pids = np.array([1, 2, 1, 3, 1])
    g_cams = np.array([0, 1, 1, 1, 2])
    out = evaluate_rank(dist, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=4)
    # valid ordering: [2, 1, 3, 1] -> matches at ranks 1 and 3 (0-based)
    np.testing.assert_allclose(out["cmc"], [0, 1, 1, 1])
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert out["mINP"] == pytest.approx(2 / 4)
    # unknown query camera: nothing is junk, the first item is a match at rank 0
    out = evaluate_rank(dist, np.array([1]), g_pids, np.array([-1]), g_cams, max_rank=2)
    np.testing.assert_allclose(out["cmc"], [1, 1])
    assert out["mAP"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)


def test_ties_broken_by_gallery_index(strategy):
    dist = np.zeros((1, 4))
    out = evaluate_rank(
        dist, np.array([1]), np.array([2, 1, 3, 1]), np.array([0]), np.array([1, 1, 1, 1])
    )
    assert out["cmc"][0] == 0 and out["cmc"][1] == 1
    assert out["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_rank_summary_packs_the_result_as_reported(strategy):
    dist = np.array([[0.0, 0.1, 0.2, 0.3, 0.4]])
    g_pids, g_cams = np.array([1, 2, 1, 3, 1]), np.array([0, 1, 1, 1, 2])
    r = evaluate_rank(dist, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=10)
    m = rank_summary(r)
    # 4 valid gallery images: the curve is 1 from rank 2 on; no "ap" unless asked per query
    assert m == {
        "rank1": 0.0,
        "rank5": 1.0,
        "rank10": 1.0,
        "mAP": pytest.approx((1 / 2 + 2 / 4) / 2),
        "mINP": pytest.approx(2 / 4),
        "num_valid_queries": 1,
        "num_skipped_queries": 0,
    }
    assert all(type(m[k]) is float for k in ("rank1", "rank5", "rank10", "mAP", "mINP"))
    r = evaluate_rank(dist, np.array([1]), g_pids, np.array([0]), g_cams, per_query=True)
    np.testing.assert_allclose(rank_summary(r)["ap"], [(1 / 2 + 2 / 4) / 2])
    with pytest.raises(ValueError, match="^held-out: no query has a valid match in the gallery"):
        rank_summary(dict(r, num_valid_queries=0), name="held-out")
    # a curve shorter than 10 ranks cannot give rank-10 (it once reported rank-4 under that name)
    short = evaluate_rank(dist, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=4)
    with pytest.raises(ValueError, match="^held-out: rank_summary reports .* the CMC has 4 ranks"):
        rank_summary(short, name="held-out")


def test_errors_are_clear():
    dist = np.zeros((2, 3))
    with pytest.raises(ValueError, match="g_pids"):
        evaluate_rank(
            dist, np.array([1, 2]), np.array([1, 2]), np.array([0, 0]), np.array([1, 1, 1])
        )
    with pytest.raises(ValueError, match="no query has a valid"):
        evaluate_rank(
            dist, np.array([1, 2]), np.array([3, 4, 5]), np.array([0, 0]), np.array([1, 1, 1])
        )
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(
            np.full((2, 3), np.nan),
            np.array([1, 2]),
            np.array([1, 2, 1]),
            np.array([0, 0]),
            np.array([1, 1, 1]),
        )


# ------------------------------------------------------------------ CUHK03 single-gallery-shot
def test_sgs_equals_standard_cmc_with_one_image_per_identity():
    rng = np.random.default_rng(5)
    num_ids = 30
    g_pids = rng.permutation(num_ids) + 1  # every identity once in the gallery
    g_cams = np.ones(num_ids, dtype=np.int64)
    q_pids = rng.integers(1, num_ids + 1, 25)
    q_cams = np.zeros(25, dtype=np.int64)
    dist = rng.random((25, num_ids))
    sgs = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10, single_gallery_shot=10)
    std = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    np.testing.assert_allclose(sgs["cmc_sgs"], std["cmc"], atol=1e-12)
    assert sgs["repeats"] == 10 and "cmc_sgs" not in std and "repeats" not in std
    # the rest of the result is the standard evaluation's, unchanged
    assert sgs.keys() - {"cmc_sgs", "repeats"} == std.keys()
    np.testing.assert_array_equal(sgs["cmc"], std["cmc"])
    assert all(sgs[k] == std[k] for k in std if k != "cmc")


def expected_sgs_cmc(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Exact expectation of the single-gallery-shot CMC (Poisson-binomial over identities)."""
    ids = np.unique(g_pids)
    total, n_valid = np.zeros(max_rank), 0
    for i in range(dist.shape[0]):
        junk = (g_pids == q_pids[i]) & (g_cams == q_cams[i]) & (q_cams[i] != -1)
        matches = np.flatnonzero((g_pids == q_pids[i]) & ~junk)
        if len(matches) == 0:
            continue
        n_valid += 1
        for m in matches:  # each true match is drawn with probability 1/len(matches)
            before = (dist[i] < dist[i, m]) | (
                (dist[i] == dist[i, m]) & (np.arange(len(g_pids)) < m)
            )
            probs = [before[g_pids == pid].mean() for pid in ids if pid != q_pids[i]]
            dp = np.zeros(len(probs) + 1)  # distribution of the number of closer identities
            dp[0] = 1.0
            for pr in probs:
                dp[1:] = dp[1:] * (1 - pr) + dp[:-1] * pr
                dp[0] *= 1 - pr
            cdf = np.cumsum(dp)
            cdf = np.concatenate([cdf, np.ones(max(0, max_rank - len(cdf)))])[:max_rank]
            total += cdf / len(matches)
    return total / n_valid


def test_sgs_converges_to_its_expectation():
    rng = np.random.default_rng(7)
    num_q, num_g, num_ids = 12, 60, 10
    q_pids = rng.integers(1, num_ids + 1, num_q)
    g_pids = rng.integers(1, num_ids + 1, num_g)
    q_cams, g_cams = rng.integers(0, 2, num_q), rng.integers(0, 2, num_g)
    dist = rng.integers(0, 10, (num_q, num_g)).astype(np.float64)  # with ties
    out = evaluate_rank(
        dist, q_pids, g_pids, q_cams, g_cams, max_rank=5, single_gallery_shot=3000, seed=1
    )
    expected = expected_sgs_cmc(dist, q_pids, g_pids, q_cams, g_cams, 5)
    np.testing.assert_allclose(out["cmc_sgs"], expected, atol=0.02)
    # reproducible from the seed
    again = evaluate_rank(
        dist, q_pids, g_pids, q_cams, g_cams, max_rank=5, single_gallery_shot=3000, seed=1
    )
    np.testing.assert_array_equal(out["cmc_sgs"], again["cmc_sgs"])


def test_sgs_rounds_validated_and_zero_means_off():
    dist = np.array([[0.1, 0.2], [0.3, 0.4]])
    ids, q_cams, g_cams = np.array([1, 2]), np.array([0, 0]), np.array([1, 1])
    with pytest.raises(ValueError, match="single_gallery_shot.*0 for none, got -1"):
        evaluate_rank(dist, ids, ids, q_cams, g_cams, single_gallery_shot=-1)
    off = evaluate_rank(dist, ids, ids, q_cams, g_cams, max_rank=2, single_gallery_shot=0)
    assert "cmc_sgs" not in off and "repeats" not in off
