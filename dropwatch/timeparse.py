"""Parsing of the time and duration strings users type on the command line and in URLs.

All datetimes handed back are timezone-aware and in UTC: the store keys history by
UTC epoch seconds, and mixing naive local times in would silently shift windows
by the host's UTC offset.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

__all__ = ["TimeParseError", "format_iso", "parse_duration", "parse_time"]

TIME_FORMS = "use 'now', a relative time like -15m/-2h/-7d, or ISO 8601 like 2026-11-24T10:00:00Z"
DURATION_FORMS = (
    "use a positive number of seconds or a number with a unit ms/s/m/h/d, "
    "like 500ms, 10s, 5m, 1h, 2d or 1m30s"
)

# Units are accepted once each and from the largest down, so "-1h30m" reads the way
# people write it and typos such as "-30m1h" or "-1m1m" are rejected rather than
# guessed at.
_RELATIVE_RE = re.compile(
    r"-(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?",
    re.ASCII,
)
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)", re.ASCII)
_PLAIN_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?|\.\d+", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class TimeParseError(ValueError):
    """A time or duration string that is not in one of the accepted forms."""


def _as_utc(dt: datetime) -> datetime:
    # Naive values are taken as UTC (documented for users), never as local time.
    if dt.tzinfo is None or dt.tzinfo.utcoffset(dt) is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def parse_time(value: str, now: datetime) -> datetime:
    """Parse 'now', a relative time ('-90s', '-15m', '-2h', '-7d', '-1h30m') or ISO 8601.

    Relative times count back from ``now``; a naive ``now`` or naive ISO string is
    taken as UTC. Returns an aware UTC datetime. Raises TimeParseError naming the
    bad input and the accepted forms.
    """
    text = value.strip()
    if not text:
        raise TimeParseError(f"invalid time {value!r}: it is empty; {TIME_FORMS}")
    now_utc = _as_utc(now)
    if text.lower() == "now":
        return now_utc

    rel = _RELATIVE_RE.fullmatch(text)
    if rel is not None and any(rel.group(u) is not None for u in "dhms"):
        parts = {u: int(rel.group(u) or 0) for u in "dhms"}
        try:
            delta = timedelta(
                days=parts["d"], hours=parts["h"], minutes=parts["m"], seconds=parts["s"]
            )
            return now_utc - delta
        except OverflowError:
            raise TimeParseError(
                f"invalid time {value!r}: too far in the past; {TIME_FORMS}"
            ) from None

    if text.startswith(("-", "+")):
        # Looks like an attempt at a relative time: say which part is wrong, since
        # "-1w" or "-5 min" fall through to a confusing ISO error otherwise.
        raise TimeParseError(
            f"invalid time {value!r}: relative times take units d/h/m/s in that order "
            f"(e.g. -1h30m); {TIME_FORMS}"
        )

    try:
        return _as_utc(datetime.fromisoformat(text))
    except ValueError:
        raise TimeParseError(f"invalid time {value!r}: {TIME_FORMS}") from None
    except OverflowError:
        # e.g. 0001-01-01T00:00:00+05:00, which has no UTC equivalent.
        raise TimeParseError(f"invalid time {value!r}: out of range; {TIME_FORMS}") from None


def parse_duration(value: str) -> float:
    """Parse a positive duration: '500ms', '10s', '5m', '1h', '2d', '1m30s' or '15' (seconds).

    Returns seconds as a float. Raises TimeParseError if the text is malformed or
    the duration is not strictly positive.
    """
    text = value.strip()
    seconds: float
    if _PLAIN_NUMBER_RE.fullmatch(text):
        seconds = float(text)
    else:
        pos = 0
        seconds = 0.0
        matched = False
        for part in _DURATION_PART_RE.finditer(text):
            if part.start() != pos:
                break
            seconds += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
            pos = part.end()
            matched = True
        if not matched or pos != len(text):
            raise TimeParseError(f"invalid duration {value!r}: {DURATION_FORMS}")
    if not math.isfinite(seconds):
        raise TimeParseError(f"invalid duration {value!r}: too large; {DURATION_FORMS}")
    if seconds <= 0:
        raise TimeParseError(
            f"invalid duration {value!r}: must be greater than zero; {DURATION_FORMS}"
        )
    return seconds


def format_iso(dt: datetime) -> str:
    """Format as ISO 8601 UTC with second precision and a 'Z' suffix, e.g. 2026-11-24T10:00:00Z.

    A naive datetime is taken as UTC; sub-second parts are truncated (not rounded)
    so a timestamp never moves into the next second.
    """
    return _as_utc(dt).strftime("%Y-%m-%dT%H:%M:%SZ")
