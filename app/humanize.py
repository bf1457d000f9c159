"""Readable numbers for people: sizes, rates, durations, timestamps."""

from __future__ import annotations

import time

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(n: float | None) -> str:
    """Bytes in the largest unit that keeps the number under 1000: "1.0 MiB", not
    "1006.6 KiB"; three significant digits at most ("312 MiB", "4.3 MiB")."""
    if n is None:
        return "-"
    value = float(n)
    for unit in UNITS:
        # 999.5 would print as "1000": the next unit is the one to use.
        if abs(value) < 999.5 or unit == UNITS[-1]:
            if unit == "B" or abs(value) >= 99.95:
                return f"{value:.0f} {unit}"
            return f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def rate(bps: float | None) -> str:
    return "-" if not bps else f"{size(bps)}/s"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def when(ms: int | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ms / 1000))
