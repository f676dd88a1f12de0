"""Property tests of the parsers every user value goes through (CLI options and server query
parameters): camera filters, camera and tracklet ids, top-K, times. Whatever the text, they
answer a bounded value or an InvalidValueError naming the option -- never another exception --
and they accept exactly what the OpenAPI patterns they publish describe."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from partreid.errors import InvalidValueError  # noqa: E402
from partreid.store.base import MAX_CAMERA_RANGES, MAX_ID, StoreError, camera_ranges  # noqa: E402
from partreid.store.query import (  # noqa: E402
    CAMERAS_PATTERN,
    MAX_CAMERA_TERMS,
    MAX_TOPK,
    TRACKLET_PATTERN,
    camera_id,
    check_topk,
    parse_cameras,
    track_ref,
    tracklet_id,
)
from partreid.utils.times import (  # noqa: E402
    MAX_TIME,
    MIN_TIME,
    TIME_PATTERN,
    format_time,
    parse_time,
)

PROPS = settings(max_examples=150, deadline=None)
ids = st.integers(0, MAX_ID)
small_ids = st.integers(0, 40)
spaces = st.text(" ", max_size=2)


def covered(ranges, c):
    return any(a <= c <= b for a, b in ranges)


def well_formed(ranges):
    """Sorted, within bounds, disjoint and not adjacent (adjacent ranges are merged)."""
    assert all(0 <= a <= b <= MAX_ID for a, b in ranges)
    assert all(b1 + 1 < a2 for (_, b1), (a2, _) in zip(ranges, ranges[1:]))


@st.composite
def camera_text(draw, id_strategy=ids):
    """A camera filter as a person types it, and its terms as (low, high)."""
    terms = draw(st.lists(st.tuples(id_strategy, st.none() | id_strategy), min_size=1, max_size=8))
    parts = []
    for a, b in terms:
        s = draw(spaces) + str(a) + draw(spaces)
        if b is not None:
            s += "-" + draw(spaces) + str(b) + draw(spaces)
        parts.append(s)
    return ",".join(parts), [(min(a, b), max(a, b)) if b is not None else (a, a) for a, b in terms]


@PROPS
@given(camera_text())
def test_camera_filters_are_the_union_of_their_terms_as_few_ranges(case):
    text, terms = case
    got = parse_cameras(text)
    well_formed(got)
    assert len(got) <= len(terms)
    probes = {v + d for a, b in terms for v in (a, b) for d in (-1, 0, 1)}
    probes |= {(a + b) // 2 for a, b in terms}
    for c in probes:
        assert covered(got, c) == any(a <= c <= b for a, b in terms), (text, c)


@settings(max_examples=60, deadline=None)  # the pattern's strings are long: fewer of them
@given(st.text(max_size=80) | st.from_regex(CAMERAS_PATTERN, fullmatch=True))
def test_any_camera_text_is_ranges_or_a_message_naming_the_option(text):
    try:
        got = parse_cameras(text, "cameras")
    except InvalidValueError as exc:
        assert str(exc).startswith("cameras ") and str(MAX_ID) in str(exc)
        ok_digits = all(int(n) <= MAX_ID for n in re.findall(r"[0-9]+", text))
        assert not (re.fullmatch(CAMERAS_PATTERN, text) and ok_digits)
        return
    if got is None:
        assert text.strip() == ""
    else:
        assert re.fullmatch(CAMERAS_PATTERN, text)
        well_formed(got)


def test_camera_filter_limits():
    assert parse_cameras("1-300000000") == [(1, 300000000)]  # one range, not 3e8 ids
    assert parse_cameras(f"0-{MAX_ID}") == [(0, MAX_ID)]
    for bad, why in [
        (",".join(["1"] * (MAX_CAMERA_TERMS + 1)), f"at most {MAX_CAMERA_TERMS} terms"),
        (f"1-{MAX_ID + 1}", f"above the largest, {MAX_ID}"),
        ("-3", "expected camera ids"),
        ("3-x", "expected camera ids"),
    ]:
        with pytest.raises(InvalidValueError, match=re.escape(why)):
            parse_cameras(bad)


@PROPS
@given(st.lists(st.one_of(small_ids, st.tuples(small_ids, small_ids).map(sorted)), max_size=12))
def test_camera_ranges_cover_exactly_the_given_cameras(items):
    got = camera_ranges([tuple(x) if isinstance(x, list) else x for x in items])
    well_formed(got)
    want = set()
    for x in items:
        a, b = (x, x) if isinstance(x, int) else x
        want |= set(range(a, b + 1))
    assert {c for a, b in got for c in range(a, b + 1)} == want


def test_camera_ranges_bounds():
    with pytest.raises(StoreError, match="at most"):
        camera_ranges(range(0, 2 * (MAX_CAMERA_RANGES + 1), 2))
    assert camera_ranges(range(0, 10**5)) == [(0, 10**5 - 1)]  # a long id list: one range
    for bad in [(-1, 3), (5, 4), (0, MAX_ID + 1)]:
        with pytest.raises(StoreError, match="not within"):
            camera_ranges([bad])


@PROPS
@given(st.text(max_size=30) | ids.map(str) | st.integers(-(2**70), 2**70))
def test_camera_ids_are_bounded(value):
    try:
        got = camera_id(value, "camera")
    except InvalidValueError as exc:
        assert str(exc).startswith("camera ") and str(MAX_ID) in str(exc)
        return
    if isinstance(value, str) and not value.strip():
        assert got is None
    else:
        assert 0 <= got <= MAX_ID and got == int(value)


@PROPS
@given(st.from_regex(TRACKLET_PATTERN, fullmatch=True) | st.text(max_size=50))
def test_tracklet_ids_are_canonical_or_refused(text):
    try:
        got = tracklet_id(text, "tracklet")
    except InvalidValueError as exc:
        assert str(exc).startswith("tracklet ")
        return
    assert re.fullmatch(TRACKLET_PATTERN, text)
    a, _, b = got.partition(":")
    assert (a == "crop" or 0 <= int(a) <= MAX_ID) and 0 <= int(b) <= MAX_ID
    assert tracklet_id(got) == got and str(int(b)) == b  # canonical: 3:017 is 3:17


@PROPS
@given(ids, ids)
def test_track_refs(camera, track):
    assert track_ref(f"{camera}:{track}", None) == f"{camera}:{track}"
    assert track_ref(str(track), camera) == f"{camera}:{track}"
    assert track_ref(f"crop:{track}", None) == f"crop:{track}"


def test_topk_bounds():
    assert check_topk(1) == 1 and check_topk(MAX_TOPK) == MAX_TOPK
    for bad in [0, -5, MAX_TOPK + 1, 10**30, 2.5, "10", True]:
        with pytest.raises(InvalidValueError, match=str(MAX_TOPK)):
            check_topk(bad)


# ------------------------------------------------------------------------------- times

in_range = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
)
offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))


@PROPS
@given(in_range, offsets, st.sampled_from(["seconds", "milliseconds", "microseconds", "minutes"]))
def test_iso_times_parse_to_their_epoch_seconds(dt, tz, spec):
    aware = dt.replace(tzinfo=tz)
    text = aware.isoformat(timespec=spec)
    want = datetime.fromisoformat(text).timestamp()
    assert parse_time(text) == pytest.approx(want, abs=1e-6)
    naive = dt.isoformat(timespec=spec)  # no offset: UTC
    assert parse_time(naive) == pytest.approx(
        datetime.fromisoformat(naive).replace(tzinfo=timezone.utc).timestamp(), abs=1e-6
    )
    assert parse_time(naive + "Z") == parse_time(naive)


@PROPS
@given(st.floats(MIN_TIME, MAX_TIME))
def test_seconds_parse_and_format_round_trip(t):
    assert parse_time(t) == t
    if 1e-4 <= t < 1e11:  # repr writes these without an exponent, in at most 11 digits
        assert parse_time(repr(t)) == t
    back = parse_time(format_time(t))  # ISO to the millisecond (truncated)
    assert 0 <= t - back < 1e-3 + 1e-6 * max(1.0, t / 1e9)


@PROPS
@given(
    st.text(max_size=70)
    | st.from_regex(TIME_PATTERN, fullmatch=True)
    | st.floats(allow_nan=True, allow_infinity=True).map(repr)
)
def test_any_time_text_is_a_time_in_range_or_a_message(text):
    try:
        t = parse_time(text, "after")
    except InvalidValueError as exc:
        msg = str(exc)
        assert msg.startswith("after ") and "9999-12-31T23:59:59Z" in msg
        return
    assert re.fullmatch(TIME_PATTERN, text) and math.isfinite(t) and MIN_TIME <= t <= MAX_TIME


@PROPS
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_numbers_out_of_range_are_refused_and_any_number_formats(x):
    ok = math.isfinite(x) and MIN_TIME <= x <= MAX_TIME
    if ok:
        assert parse_time(x) == x
    else:
        with pytest.raises(InvalidValueError, match="outside the accepted times"):
            parse_time(x, "--before")
    assert isinstance(format_time(x), str)  # never an OverflowError


def test_the_reported_overflow_is_a_message():
    with pytest.raises(InvalidValueError, match="before '-1e308' is not a time"):
        parse_time("-1e308", "before")
    with pytest.raises(InvalidValueError, match="before '1e308' is not a time"):
        parse_time("1e308", "before")  # no exponents: at most 11 digits of seconds
    with pytest.raises(InvalidValueError, match="outside the accepted times"):
        parse_time(1e308, "before")
    with pytest.raises(InvalidValueError, match="day is out of range"):
        parse_time("2026-02-30", "after")  # the pattern's calendar is not exact
    assert parse_time("9999-12-31T23:59:59Z") == MAX_TIME
    with pytest.raises(InvalidValueError, match="outside"):
        parse_time("9999-12-31T23:59:59-00:01")
