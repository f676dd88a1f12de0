"""Site identities (partreid.store.link): the rules hold on random tracklet sets (property
tests), linking twice changes nothing, an incremental run equals one run where no merge is
needed, existing identities stay, the kNN graph equals brute force, and the threshold chosen
from the tracklets' own distances separates people on data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from partreid.errors import InvalidValueError, NotFoundError
from partreid.store import link as link_mod
from partreid.store.link import (
    Tracklets,
    Transitions,
    impostor_pairs,
    knn_graph,
    link,
    read_transitions,
    violations,
)

PROPS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_site(
    seed: int, people: int, cameras: int, spread: float, dim: int = 16, overlap: bool = True
):
    """Tracklets of ``people`` walking through ``cameras`` (1-5 tracklets each; with ``overlap``
    some of a person's are in one camera at once): features are the person's direction plus
    noise of size ``spread``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(people, dim))
    rows = []
    for p in range(people):
        t = float(rng.integers(0, 60))
        for _ in range(int(rng.integers(1, 6))):
            length = float(rng.integers(0, 8))
            rows.append((p, int(rng.integers(1, cameras + 1)), t, t + length))
            t += length + float(rng.integers(-3 if overlap else 1, 25))  # < 0: at once
    pid = np.array([r[0] for r in rows])
    feats = centres[pid] + spread * rng.normal(size=(len(rows), dim))
    t = Tracklets(
        keys=[f"{r[1]}:{i}" for i, r in enumerate(rows)],
        camera=np.array([r[1] for r in rows]),
        start=np.array([r[2] for r in rows]),
        end=np.array([r[3] for r in rows]),
        features=feats,
    )
    return t, pid


def true_transitions(t: Tracklets, pid: np.ndarray) -> Transitions:
    """The narrowest windows that allow every person's true moves."""
    windows = {}
    for p in np.unique(pid).tolist():
        route = link_mod.time_order(np.nonzero(pid == p)[0].tolist(), t)
        for a, b in zip(route, route[1:]):  # every step, in one camera too
            gap = float(t.start[b] - t.end[a])
            lo, hi = windows.get((int(t.camera[a]), int(t.camera[b])), (gap, gap))
            windows[(int(t.camera[a]), int(t.camera[b]))] = (min(lo, gap), max(hi, gap))
    return Transitions(windows)


def random_transitions(seed: int, cameras: int) -> Transitions:
    rng = np.random.default_rng(seed + 1)
    windows = {}
    for a in range(1, cameras + 1):
        for b in range(1, cameras + 1):
            if a != b and rng.random() < 0.7:
                lo = float(rng.integers(-5, 10))
                windows[(a, b)] = (lo, lo + float(rng.integers(0, 20)))
    return Transitions(windows)


def pairwise(labels, truth):
    """Pairwise precision and recall of ``labels`` against ``truth``."""
    both = Counter(zip(labels, truth))
    same = sum(v * (v - 1) // 2 for v in both.values())
    a = sum(v * (v - 1) // 2 for v in Counter(labels).values())
    b = sum(v * (v - 1) // 2 for v in Counter(truth).values())
    return (same / a if a else 1.0), (same / b if b else 1.0)


# --------------------------------------------------------------------------------------------
# Properties on random sets
# --------------------------------------------------------------------------------------------
@PROPS
@given(
    seed=st.integers(0, 10_000),
    people=st.integers(1, 25),
    cameras=st.integers(1, 4),
    spread=st.floats(0.0, 2.0),
    threshold=st.floats(0.0, 4.0),
    with_transitions=st.booleans(),
)
def test_rules_hold_and_linking_twice_changes_nothing(
    seed, people, cameras, spread, threshold, with_transitions
):
    t, _ = random_site(seed, people, cameras, spread)
    tr = random_transitions(seed, cameras) if with_transitions else None
    first = link(t, threshold=threshold, transitions=tr, k=4)
    assert violations(t, first.identity, tr) == []
    assert first.merges == []  # nothing existed
    assert sorted(set(first.identity.tolist())) == list(range(1, first.identities + 1))
    again = link(t, existing=first.identity, threshold=threshold, transitions=tr, k=4)
    np.testing.assert_array_equal(again.identity, first.identity)
    assert again.merges == []


@PROPS
@given(
    seed=st.integers(0, 10_000),
    people=st.integers(2, 25),
    cameras=st.integers(1, 4),
    cut=st.floats(0.1, 0.9),
)
def test_incremental_equals_one_run_when_no_merge_is_needed(seed, people, cameras, cut):
    """Well-separated people: linking the tracklets that started before a moment, then all of
    them, gives exactly the identities (ids included) of one run over all of them."""
    t, pid = random_site(seed, people, cameras, spread=0.02, dim=64, overlap=False)
    tr = true_transitions(t, pid)
    one = link(t, threshold=0.5, transitions=tr, k=6)
    moment = np.quantile(t.start, cut)
    old = np.nonzero(t.start < moment)[0]
    part = Tracklets(
        [t.keys[i] for i in old], t.camera[old], t.start[old], t.end[old], t.features[old]
    )
    first = link(part, threshold=0.5, transitions=tr, k=6)
    existing = np.full(len(t), -1)
    existing[old] = first.identity
    later = link(t, existing=existing, threshold=0.5, transitions=tr, k=6)
    assert later.merges == []
    np.testing.assert_array_equal(later.identity[old], first.identity)  # kept
    np.testing.assert_array_equal(later.identity, one.identity)
    assert pairwise(one.identity.tolist(), pid.tolist()) == (1.0, 1.0)  # and it is right


@PROPS
@given(seed=st.integers(0, 10_000), people=st.integers(2, 20), cameras=st.integers(1, 4))
def test_existing_identities_stay_and_merges_are_recorded(seed, people, cameras):
    """Each person split over two existing ids (plus a stranger on another id): linking keeps
    every id that is not merged, and merges each pair into its smaller id, reported."""
    t, pid = random_site(seed, people, cameras, spread=0.02, dim=64)
    rng = np.random.default_rng(seed)
    existing = np.where(rng.random(len(t)) < 0.5, 2 * pid + 10, 2 * pid + 11)
    existing[rng.random(len(t)) < 0.3] = -1
    r = link(t, existing=existing, threshold=0.5, k=8)
    assert violations(t, r.identity) == [] or violations(t, existing) != []
    renamed = dict(r.merges)
    for into in renamed.values():
        assert into not in renamed  # the list is resolved in order: follow the chain
    final = {}
    for a, b in r.merges:
        final[a] = b
    for i, e in enumerate(existing.tolist()):
        if e >= 0:
            want = e
            while want in final:
                want = final[want]
            assert r.identity[i] == want
    assert all(a > b for a, b in r.merges)
    assert (r.identity[existing < 0] >= 0).all()
    new = set(r.identity[existing < 0].tolist()) - set(existing.tolist())
    assert all(i > existing.max() for i in new)


# --------------------------------------------------------------------------------------------
# The rules, by hand
# --------------------------------------------------------------------------------------------
def _three(cams, spans):
    f = np.ones((len(cams), 4))
    return Tracklets([f"{c}:{i}" for i, c in enumerate(cams)], cams, *zip(*spans), f)


def test_one_camera_at_one_instant_is_two_people():
    t = _three([1, 1, 2], [(0, 10), (10, 20), (30, 40)])  # 0 and 1 share the instant 10
    r = link(t, threshold=4.0, k=2)
    assert r.identity[0] != r.identity[1] and r.refused >= 1
    assert violations(t, np.array([1, 1, 2])) == ["identity 1: 1:0 and 1:1 overlap"]
    t = _three([1, 1, 2], [(0, 10), (11, 20), (30, 40)])
    assert link(t, threshold=4.0, k=2).identities == 1


def test_transitions_allow_moves_within_their_window_only():
    t = _three([1, 2, 3], [(0, 10), (20, 30), (100, 110)])
    tr = Transitions({(1, 2): (5.0, 15.0), (2, 3): (60.0, 80.0)})
    assert link(t, threshold=4.0, transitions=tr, k=2).identities == 1  # gaps 10 and 70
    tr = Transitions({(1, 2): (5.0, 15.0), (2, 3): (0.0, 60.0)})
    r = link(t, threshold=4.0, transitions=tr, k=2)
    assert r.identity[0] == r.identity[1] != r.identity[2]
    tr = Transitions({(2, 1): (5.0, 15.0)})  # one way only
    assert link(t, threshold=4.0, transitions=tr, k=2).identities == 3
    assert violations(t, np.array([1, 1, 1]), tr) == ["identity 1: a move outside the transitions"]


def test_read_transitions(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("from_camera,to_camera,min_s,max_s\n1,2,5,15\n2,1,0.5,30\n")
    tr = read_transitions(str(p))
    assert tr.windows == {(1, 2): (5.0, 15.0), (2, 1): (0.5, 30.0)}
    assert tr.allows(1, 2, 5.0) and tr.allows(1, 2, 15.0) and not tr.allows(1, 2, 15.1)
    assert not tr.allows(1, 3, 10.0)
    p.write_text("a,b,c,d\n")
    with pytest.raises(InvalidValueError, match="from_camera,to_camera,min_s,max_s"):
        read_transitions(str(p))
    p.write_text("from_camera,to_camera,min_s,max_s\n1,2,5,x\n")
    with pytest.raises(InvalidValueError, match="line 2"):
        read_transitions(str(p))
    p.write_text("from_camera,to_camera,min_s,max_s\n1,2,9,5\n")
    with pytest.raises(InvalidValueError, match="min_s 9.0 > max_s 5.0"):
        read_transitions(str(p))
    with pytest.raises(NotFoundError):
        read_transitions(str(tmp_path / "none.csv"))


def test_bad_arguments():
    t, _ = random_site(0, 3, 2, 0.1)
    with pytest.raises(InvalidValueError, match="threshold"):
        link(t, threshold=5.0)
    with pytest.raises(InvalidValueError, match="existing"):
        link(t, existing=np.zeros(2))
    with pytest.raises(InvalidValueError, match="features"):
        Tracklets(["1:1"], [1], [0.0], [1.0], np.zeros((2, 3)))


# --------------------------------------------------------------------------------------------
# The graph and the known impostors
# --------------------------------------------------------------------------------------------
def _brute_knn(x, k):
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), s.shape), -s), axis=1)[:, :k]
    return order, np.maximum(2 - 2 * np.take_along_axis(s, order, 1), 0)


@pytest.mark.parametrize("exact_max", [10_000, 50])  # numpy blocks; faiss flat
def test_knn_graph_is_exact(monkeypatch, exact_max):
    if exact_max == 50:
        pytest.importorskip("faiss")
    monkeypatch.setattr(link_mod, "EXACT_MAX", exact_max)
    monkeypatch.setattr(link_mod, "_BLOCK", 64)
    x = np.random.default_rng(3).normal(size=(300, 8)).astype(np.float32)
    x[5] = x[6] = x[7]  # ties
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    idx, dist = knn_graph(x, 5)
    _, want_d = _brute_knn(x, 5)
    np.testing.assert_allclose(dist, want_d, atol=1e-5)  # the k smallest distances
    got_d = 2 - 2 * np.einsum("id,ikd->ik", x, x[idx])  # and the rows they belong to
    np.testing.assert_allclose(dist, got_d, atol=1e-5)
    assert (idx != np.arange(300)[:, None]).all()
    assert 6 in idx[5] and 7 in idx[5] and 5 in idx[6]
    idx, dist = knn_graph(x[:3], 5)  # fewer rows than k
    assert (idx[:, 2:] == -1).all() and np.isinf(dist[:, 2:]).all()


def test_knn_graph_inverted_file_finds_the_neighbours(monkeypatch):
    pytest.importorskip("faiss")
    monkeypatch.setattr(link_mod, "EXACT_MAX", 10)
    monkeypatch.setattr(link_mod, "FLAT_MAX", 100)
    t, pid = random_site(1, 400, 3, 0.3, dim=32)
    idx, _ = knn_graph(t.features, 3)
    want, _ = _brute_knn(t.features, 3)
    recall = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(idx.tolist(), want.tolist())])
    assert recall > 0.9  # approximate: a neighbour in a list not searched is missed


def test_impostor_pairs_are_the_overlaps_of_one_camera():
    t, _ = random_site(4, 30, 2, 0.1)
    got = {tuple(sorted(p)) for p in impostor_pairs(t).tolist()}
    want = {
        (i, j)
        for i in range(len(t))
        for j in range(i + 1, len(t))
        if t.camera[i] == t.camera[j] and t.start[i] <= t.end[j] and t.start[j] <= t.end[i]
    }
    assert got == want and want
    assert len(impostor_pairs(t, limit=3)) == 3


def test_center_cameras_takes_out_each_cameras_push():
    """Two cameras that push every feature their own way: the same person is far apart in
    them; with each camera's mean taken out, close again and linked. A camera with fewer
    than CENTER_MIN tracklets is left as it is."""
    rng = np.random.default_rng(5)
    people, dim = 40, 32
    centres = rng.normal(size=(people, dim))
    push = {1: 3.0 * rng.normal(size=dim), 2: 3.0 * rng.normal(size=dim), 3: rng.normal(size=dim)}
    rows = [(p, c) for p in range(people) for c in (1, 2)] + [(0, 3)]
    feats = np.stack([centres[p] + push[c] + 0.05 * rng.normal(size=dim) for p, c in rows])
    t = Tracklets(
        [f"{c}:{i}" for i, (_, c) in enumerate(rows)],
        [c for _, c in rows],
        np.arange(len(rows)) * 100.0,
        np.arange(len(rows)) * 100.0 + 5,
        feats,
    )
    centred = link_mod.center_cameras(t)
    np.testing.assert_allclose(centred.features[-1], t.features[-1], atol=1e-6)  # camera 3: 1
    for cam in (1, 2):
        m = t.camera == cam
        unit = t.features[m].astype(np.float64)  # the tracklets' unit features
        raw = unit - unit.mean(0)
        want = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        np.testing.assert_allclose(centred.features[m], want, atol=1e-5)
    pid = np.array([p for p, _ in rows])
    plain = link(t, threshold=0.3, k=4)
    assert pairwise(plain.identity.tolist(), pid.tolist())[1] < 0.5  # cameras kept apart
    both = link(t, threshold=0.3, k=4, center=True)
    assert pairwise(both.identity[:-1].tolist(), pid[:-1].tolist()) == (1.0, 1.0)


@pytest.mark.parametrize("k", [2, 50])
def test_adjacent_pairs_are_the_possible_next_steps(k):
    t, _ = random_site(9, 30, 3, 0.5)
    tr = Transitions({(1, 2): (0.0, 15.0), (2, 3): (-2.0, 5.0), (3, 3): (0.0, 30.0)})
    src, dst, d = link_mod.adjacent_pairs(t, tr, k=k, chunk=7)
    got = {}
    for i, j, dist in zip(src.tolist(), dst.tolist(), d.tolist()):
        got.setdefault(i, []).append((dist, j))
    windows = {(1, 1): (0.0, 10.0), (2, 2): (0.0, 10.0), (3, 3): (0.0, 30.0), **tr.windows}
    for i in range(len(t)):
        steps = []
        for j in range(len(t)):
            w = windows.get((int(t.camera[i]), int(t.camera[j])))
            gap = t.start[j] - t.end[i]
            same = t.camera[i] == t.camera[j]
            if i != j and w and w[0] <= gap <= w[1] and (not same or gap > 0):
                steps.append((2 - 2 * float(t.features[i] @ t.features[j]), j))
        want = sorted(steps)[:k]
        assert [j for _, j in sorted(got.get(i, []))] == [j for _, j in want]
        np.testing.assert_allclose(
            sorted(x for x, _ in got.get(i, [])), [x for x, _ in want], atol=1e-5
        )


def test_otsu_cuts_two_modes_half_way():
    values = np.r_[np.zeros(50), np.full(50, 2.0)]
    assert link_mod.otsu(values) == pytest.approx(1.0, abs=0.02)
    rng = np.random.default_rng(0)
    mixed = np.r_[rng.normal(0.4, 0.1, 500), rng.normal(1.6, 0.1, 500)]
    assert 0.6 < link_mod.otsu(mixed) < 1.4
