"""Camera ranges reach both backends' filters as ranges: the answers equal those of the same
cameras listed one by one (checked against numpy in test_store), a range as wide as the id space
costs nothing, and a filter the backend cannot take is a StoreError."""

from __future__ import annotations

import numpy as np
import pytest

from partreid.store import StoreError, open_store
from partreid.store.base import MAX_CAMERA_RANGES, MAX_ID

from .conftest import make_gallery

INFO = {"dim": 32, "model": {"name": "bot"}}


def _keys(hits):
    return [[(getattr(h, "tracklet", None), getattr(h, "id", None)) for h in row] for row in hits]


@pytest.fixture
def filled(store_uri):
    with open_store(store_uri(), create=True, info=INFO) as st:
        st.add(make_gallery(300))
        yield st


RANGES = [
    ([(1, 3)], [1, 2, 3]),
    ([(0, 0), (2, 4)], [0, 2, 3, 4]),
    ([1, (4, 5)], [1, 4, 5]),
    ([(3, 300_000_000)], [3, 4, 5]),  # the reported filter: one range, nothing expanded
    ([(0, MAX_ID)], None),
    ([(6, MAX_ID)], []),  # no such cameras
]


@pytest.mark.parametrize("by", ["crop", "tracklet"])
def test_ranges_filter_as_the_cameras_they_hold(filled, by):
    q = np.random.default_rng(5).normal(size=(3, 32)).astype(np.float32)
    for ranges, cams in RANGES:
        got = filled.search(q, 8, by=by, cameras=ranges, after=100.0, before=900.0)
        if cams == []:
            assert got == [[]] * len(q)
            continue
        want = filled.search(q, 8, by=by, cameras=cams, after=100.0, before=900.0)
        assert _keys(got) == _keys(want) and all(got), ranges
        for row in got:
            for h in row:
                assert cams is None or h.camera in cams


def test_filters_the_backend_cannot_take(filled):
    q = np.ones((1, 32), np.float32)
    for bad in [[(-1, 3)], [(0, MAX_ID + 1)], list(range(0, 2 * MAX_CAMERA_RANGES + 2, 2))]:
        with pytest.raises(StoreError):
            filled.search(q, 3, cameras=bad)
