"""The one time parser and formatter: ISO 8601 (UTC unless an offset is given) or epoch seconds."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..errors import InvalidValueError


def parse_time(value: Any, what: str = "time") -> float:
    """Seconds since the Unix epoch from ISO 8601 (``2026-12-03T14:00:00``, ``...Z``,
    ``...+01:00``; without an offset the time is UTC) or a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise InvalidValueError(
            f"{what} {value!r} is not a time: expected ISO 8601 such as 2026-12-03T14:00:00 "
            "(UTC unless it says +HH:MM) or seconds since 1970-01-01"
        ) from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def format_time(seconds: float) -> str:
    """ISO 8601 in UTC, to the millisecond."""
    t = datetime.fromtimestamp(float(seconds), tz=timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
