"""The store's shared pieces: the batch's tracklet grouping (bit-equal to ``np.add.at``) and
the stats record."""

from __future__ import annotations

import numpy as np
import pytest

from partreid.store import StoreStats, open_store
from partreid.store.base import NewCrops, normalize, sum_by_group, tracklet_key


@pytest.mark.parametrize("n,groups", [(0, 0), (1, 1), (50, 50), (300, 7), (300, 400)])
def test_sum_by_group_is_np_add_at_to_the_bit(n, groups):
    rng = np.random.default_rng(n + groups)
    values = rng.normal(size=(n, 5)).astype(np.float32) * 1e3
    group = rng.integers(0, max(groups, 1), n)  # with 400 groups some are empty
    ref = np.zeros((groups, 5), np.float64)
    np.add.at(ref, group, values.astype(np.float64))
    got = sum_by_group(values, group, groups)
    assert got.dtype == np.float64 and got.tobytes() == ref.tobytes()


def test_new_crops_groups_like_a_loop_over_the_crops(gallery):
    b = gallery.select(np.arange(200))
    first_single = int(np.nonzero(b.track_id < 0)[0][0])
    b.features[first_single, 1] = -0.0  # a one-crop sum is 0.0 + feature: +0.0 here
    new = NewCrops.group(b)
    feats = normalize(b.features)
    assert new.features.tobytes() == feats.tobytes()
    keys = [tracklet_key(c, t, i) for c, t, i in zip(b.camera, b.track_id, b.ids)]
    assert new.keys == sorted(set(keys))
    assert [new.keys[j] for j in new.of_crop] == keys
    tracked = [k for k in new.keys if not k.startswith("crop:")]
    assert new.keys[: len(tracked)] == tracked  # every "camera:track" id first
    for j, key in enumerate(new.keys):
        members = [i for i, k in enumerate(keys) if k == key]
        s = np.zeros(feats.shape[1])
        for i in members:
            s = s + feats[i].astype(np.float64)
        assert new.sum(j).tobytes() == s.tobytes(), key
        assert new.first[j] == members[0] and new.counts[j] == len(members)
        assert (
            new.start[j] == b.timestamp[members].min() and new.end[j] == b.timestamp[members].max()
        )
    j = new.keys.index(f"crop:{int(b.ids[first_single])}")
    assert not np.signbit(new.sum(j)[1])


def test_stats_record_keeps_the_json_layout(tmp_path, gallery):
    """``to_dict`` is what ``partreid store stats --json`` prints: keys in this order."""
    with open_store(
        str(tmp_path / "s"), create=True, info={"dim": 32, "model": {"name": "m"}}
    ) as st:
        st.add(gallery)
        st.delete(ids=gallery.ids[:10])
        s = st.stats()
    assert isinstance(s, StoreStats)
    d = s.to_dict()
    assert list(d) == [
        "backend", "uri", "crops", "tracklets", "cameras", "first", "last", "dim", "model",
        "info", "vector_rows", "disk_bytes",
    ]  # fmt: skip
    kept = gallery.select(np.arange(10, len(gallery)))
    assert d["crops"] == len(kept) and d["vector_rows"] == len(gallery)
    assert d["cameras"] == {int(c): int((kept.camera == c).sum()) for c in np.unique(kept.camera)}
    assert list(d["cameras"]) == sorted(d["cameras"])
    assert (d["first"], d["last"]) == (kept.timestamp.min(), kept.timestamp.max())
    assert d["model"] == {"name": "m"} and d["backend"] == "embedded"
