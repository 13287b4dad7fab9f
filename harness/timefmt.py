"""The one way a duration is written, in every reason, log line, table and CLI output.

Three significant figures with a unit that keeps the number short: `0.04 s`, `1.65 s`, `12.4 s`,
`12.4 min`, `54.0 h`. Standard library only: the sandbox's host side and the leaderboards use it.
"""

from __future__ import annotations

import math

_EXTRA_PLACES = 4  # at most this many more decimals to tell a time from the cap beside it


def seconds_text(seconds: float, *, unlike: float | None = None) -> str:
    """`seconds` as text: two decimals below 10 s, one below a minute, then minutes, then hours.

    `unlike`: another duration printed beside this one (a cap); when both would read the same
    (1.654 s past a 1.65 s cap), this one gets the decimals that tell them apart.
    """
    value = float(seconds)
    if not math.isfinite(value):
        return f"{value} s"
    scale, unit, places = _tier(value)
    text = f"{value / scale:.{places}f} {unit}"
    if unlike is None or float(unlike) == value or text != seconds_text(float(unlike)):
        return text
    for extra in range(1, _EXTRA_PLACES + 1):
        text = f"{value / scale:.{places + extra}f} {unit}"
        if text != f"{float(unlike) / scale:.{places + extra}f} {unit}":
            break
    return text


def _tier(value: float) -> tuple[float, str, int]:
    """(divisor, unit, decimals), chosen on the rounded figure so 59.96 s reads 1.0 min, not 60.0 s."""
    size = abs(value)
    if round(size, 2) < 10:
        return 1.0, "s", 2
    if round(size, 1) < 60:
        return 1.0, "s", 1
    if round(size / 60, 1) < 60:
        return 60.0, "min", 1
    return 3600.0, "h", 1
