"""Lengths and moments as people write and read them: `10m`, `1h30m`, `2026-11-29 14:00`."""

from __future__ import annotations

import re
from datetime import datetime

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_CLOCK = re.compile(r"\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?")


def parse_duration(text: str) -> float:
    """Seconds in `text`: number-unit pairs (ms, s, m, h, d, w) such as 90s or 1h30m."""
    compact = text.strip().lower().replace(" ", "")
    parts = _PART.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration (examples: 90s, 10m, 1h30m, 7d)")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def parse_moment(text: str, now: float) -> float:
    """Unix seconds for a duration before `now` (10m), or a local timestamp: ISO 8601
    (2026-11-29, 2026-11-29 14:05:00, with an offset if given) or a time today (14:05)."""
    text = text.strip()
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        if _CLOCK.fullmatch(text):
            day = datetime.fromtimestamp(now).date().isoformat()
            return datetime.fromisoformat(f"{day}T{text}").timestamp()
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (10m, 2h) nor a timestamp (2026-11-29 14:05, 14:05)"
        ) from None


def format_length(seconds: float | None) -> str:
    """A length for people: 340 ms, 12.3 s, 4 m 05 s, 2 h 03 m, 1 d 02 h."""
    if seconds is None:
        return "-"
    s = float(seconds)
    sign, s = ("-", -s) if s < 0 else ("", s)
    if s < 1:
        text = f"{s * 1000:.0f} ms"
    elif s < 60:
        text = f"{s:.1f} s"
    elif s < 3600:
        m, rest = divmod(int(round(s)), 60)
        text = f"{m} m {rest:02d} s"
    elif s < 86400:
        h, rest = divmod(int(round(s)) // 60, 60)
        text = f"{h} h {rest:02d} m"
    else:
        d, rest = divmod(int(round(s)) // 3600, 24)
        text = f"{d} d {rest:02d} h"
    return sign + text


def format_time(ts: float | None) -> str:
    """A moment in local time to a tenth of a second: 2026-11-29 14:05:09.3."""
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(ts)
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + str(moment.microsecond // 100000)


def iso_time(ts: float | None) -> str | None:
    """A moment for scripts: ISO 8601 in local time with its UTC offset, to the millisecond."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")
