from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from partreid.data.sampler import PKSampler


def make_pids(counts, seed=0):
    """A shuffled pid list where identity i (labelled 100+i) has counts[i] images."""
    pids = np.repeat(100 + np.arange(len(counts)), counts)
    return np.random.default_rng(seed).permutation(pids).tolist()


COUNTS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 3]  # 11 identities, several with fewer than K images


def batches_of(sampler):
    idx = list(sampler)
    bs = sampler.p * sampler.k
    assert len(idx) == len(sampler) and len(idx) % bs == 0
    return [idx[i : i + bs] for i in range(0, len(idx), bs)]


def test_each_batch_is_p_identities_times_k():
    pids = make_pids(COUNTS)
    p, k = 3, 4
    s = PKSampler(pids, p, k, seed=1)
    for epoch in range(5):
        s.set_epoch(epoch)
        batches = batches_of(s)
        assert len(batches) == len(COUNTS) // p
        for b in batches:
            ids = [pids[i] for i in b]
            # in batch order: P consecutive groups of K images of one identity each
            groups = [ids[j * k : (j + 1) * k] for j in range(p)]
            assert all(len(set(g)) == 1 for g in groups)
            assert len({g[0] for g in groups}) == p
            assert Counter(ids) == {g[0]: k for g in groups}


def test_identity_groups_distinct_or_complete():
    pids = make_pids(COUNTS)
    by_id = {}
    for i, pid in enumerate(pids):
        by_id.setdefault(pid, set()).add(i)
    k = 4
    s = PKSampler(pids, 2, k, seed=0)
    for epoch in range(5):
        s.set_epoch(epoch)
        for b in batches_of(s):
            for j in range(0, len(b), k):
                group = b[j : j + k]
                images = by_id[pids[group[0]]]
                assert set(group) <= images
                if len(images) >= k:
                    assert len(set(group)) == k  # without replacement
                else:
                    assert set(group) == images  # every image used, topped up with repeats


def test_small_identities_get_sampled():
    pids = make_pids(COUNTS)
    s = PKSampler(pids, 4, 4, seed=0)
    seen = set()
    for epoch in range(30):
        s.set_epoch(epoch)
        seen |= {pids[i] for i in s}
    assert seen == set(pids)


def test_reproducible_by_seed_and_epoch():
    pids = make_pids(COUNTS)
    a, b = PKSampler(pids, 3, 4, seed=5), PKSampler(pids, 3, 4, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating twice gives the same epoch
    b.set_epoch(3)
    assert list(a) != list(b)
    c = PKSampler(pids, 3, 4, seed=6)
    c.set_epoch(2)
    assert list(a) != list(c)


def test_ddp_shares_disjoint_equal_and_from_the_same_epoch():
    pids = make_pids([3] * 23)
    p, k, world = 2, 3, 3
    shares = []
    for rank in range(world):
        s = PKSampler(pids, p, k, seed=9, num_replicas=world, rank=rank)
        s.set_epoch(4)
        shares.append(batches_of(s))
    # 23 ids // P=2 -> 11 batches, cut to 9 -> 3 per rank
    assert [len(sh) for sh in shares] == [3, 3, 3]
    assert len({len(PKSampler(pids, p, k, num_replicas=world, rank=r)) for r in range(world)}) == 1
    ids_per_rank = [{pids[i] for b in sh for i in b} for sh in shares]
    idx_per_rank = [{i for b in sh for i in b} for sh in shares]
    for r in range(world):
        for q in range(r + 1, world):
            assert not ids_per_rank[r] & ids_per_rank[q]
            assert not idx_per_rank[r] & idx_per_rank[q]
    # the shares interleave the single global batch list of that epoch
    g = PKSampler(pids, p, k, seed=9, num_replicas=world, rank=0)
    g.set_epoch(4)
    glob = g.global_batches().tolist()
    assert [glob[i] for i in range(0, 9, 3)] == shares[0]
    assert [glob[i] for i in range(2, 9, 3)] == shares[2]


def test_errors_are_clear():
    with pytest.raises(ValueError, match="identities"):
        PKSampler([1, 1, 2, 2], p=3, k=2)
    with pytest.raises(ValueError, match="rank"):
        PKSampler([1, 2, 3, 4], p=1, k=2, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="positive"):
        PKSampler([1, 2], p=0, k=2)
