"""The one time parser and formatter: ISO 8601 (UTC unless an offset is given) or epoch seconds.

Accepted times (:data:`TIME_PATTERN`, at most :data:`MAX_TIME_CHARS` characters) lie between
:data:`MIN_TIME` (1970-01-01T00:00:00Z) and :data:`MAX_TIME` (9999-12-31T23:59:59Z): anything
else is an :class:`~partreid.errors.InvalidValueError` naming the option, never an overflow.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any

from ..errors import InvalidValueError

MIN_TIME = 0.0  # 1970-01-01T00:00:00Z
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: the last second a datetime can hold
MAX_TIME_CHARS = 64
# seconds since the epoch (no sign: the range starts at 0), or ISO 8601 date[Ttime[offset]]
_SECONDS = r"[0-9]{1,11}(\.[0-9]{1,20})?"  # up to 99999999999 s (the year 5138), no exponent
_ISO = (  # the calendar's ranges, so that what matches is a time (but February 30 and the like)
    r"(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"([Tt ]([01][0-9]|2[0-3])(:[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?)?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?"
)
TIME_PATTERN = rf"^ *({_SECONDS}|{_ISO}) *$"
TIME_HELP = (
    "ISO 8601 such as 2026-12-03T14:00:00 (UTC unless it says Z or +HH:MM) or seconds since "
    "1970-01-01 (at most 11 digits), from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z"
)
_TIME_RE = re.compile(TIME_PATTERN)
_SECONDS_RE = re.compile(_SECONDS)


def shown(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for messages that quote user input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}...' ({len(str(value))} chars)"


def _in_range(t: float, what: str, value: Any) -> float:
    if not (math.isfinite(t) and MIN_TIME <= t <= MAX_TIME):
        raise InvalidValueError(
            f"{what} {shown(value)} is outside the accepted times: from 1970-01-01T00:00:00Z "
            f"(0) to 9999-12-31T23:59:59Z ({MAX_TIME:.0f})"
        )
    return float(t)


def parse_time(value: Any, what: str = "time") -> float:
    """Seconds since the Unix epoch from ISO 8601 (``2026-12-03T14:00:00``, ``...Z``,
    ``...+01:00``; without an offset the time is UTC) or a number of seconds, within
    [:data:`MIN_TIME`, :data:`MAX_TIME`]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _in_range(float(value), what, value)
    text = str(value)
    if len(text) > MAX_TIME_CHARS or not _TIME_RE.fullmatch(text):
        raise InvalidValueError(f"{what} {shown(value)} is not a time: expected {TIME_HELP}")
    text = text.strip()
    if _SECONDS_RE.fullmatch(text):
        return _in_range(float(text), what, value)
    try:
        t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        seconds = (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
    except (ValueError, OverflowError) as exc:
        raise InvalidValueError(
            f"{what} {shown(value)} is not a valid date and time ({exc}): expected {TIME_HELP}"
        ) from None
    return _in_range(seconds, what, value)


def format_time(seconds: float) -> str:
    """ISO 8601 in UTC, to the millisecond; a value no date can hold (NaN, beyond year 9999)
    is written as the number it is, never an error."""
    try:
        t = datetime.fromtimestamp(float(seconds), tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return repr(float(seconds))
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
