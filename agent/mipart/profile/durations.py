"""Durations: read as whole milliseconds within a field's bounds, and written back exactly: pure.

nginx counts time in milliseconds and takes the units ms, s, m, h, d (nginx.org,
"Configuration file measurement units"); the profile takes the same ones, so a profile's
500ms reaches nginx.conf as `500ms`, never rounded down to `0s`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DURATION = re.compile(r"([0-9]+)(?:\.([0-9]+))?(ms|s|m|h|d)")
MAX_DIGITS = 15
HOUR_MS = UNITS_MS["h"]
DAY_MS = UNITS_MS["d"]
EXAMPLES = "e.g. 2s, 500ms, 5m"


@dataclass(frozen=True)
class Bounds:
    low_ms: int = 1
    high_ms: int = DAY_MS


DEFAULT = Bounds()


def parse_ms(text: str, bounds: Bounds = DEFAULT) -> tuple[int, str]:
    """(milliseconds, "") or (0, the rest of a problem line after the field's name)."""
    match = DURATION.fullmatch(text)
    if not match:
        return 0, f"is {_quoted(text)}; write a duration with a unit, {EXAMPLES}"
    whole, fraction, unit = match.group(1), match.group(2) or "", match.group(3)
    if len(whole) + len(fraction) > MAX_DIGITS:
        return 0, f"is {_quoted(text)}, far too long; use at most {format_ms(bounds.high_ms)}"
    scaled, scale = int(whole + fraction) * UNITS_MS[unit], 10 ** len(fraction)
    if scaled == 0:
        return 0, "must be longer than zero; e.g. 2s"
    if scaled % scale:
        return 0, f"is {text}, not a whole number of milliseconds; round it, e.g. {max(1, scaled // scale)}ms"
    millis = scaled // scale
    if millis < bounds.low_ms:
        return 0, f"is {text}; use at least {format_ms(bounds.low_ms)}"
    if millis > bounds.high_ms:
        return 0, f"is {text}; use at most {format_ms(bounds.high_ms)}"
    return millis, ""


def format_ms(millis: int) -> str:
    """The largest unit that divides it: 500ms, 2s, 5m, 1d."""
    for unit in ("d", "h", "m", "s"):
        if millis % UNITS_MS[unit] == 0:
            return f"{millis // UNITS_MS[unit]}{unit}"
    return f"{millis}ms"


def nginx_time(seconds: float) -> str:
    """A duration for nginx.conf, in whole seconds when it is one (600s), else in ms (500ms)."""
    millis = max(1, round(seconds * 1000))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def _quoted(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:40]) + f"... ({len(text)} characters)"
