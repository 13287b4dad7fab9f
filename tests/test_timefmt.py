"""One format for every time the harness prints: harness.timefmt.seconds_text."""

from __future__ import annotations

import pytest

from harness.timefmt import seconds_text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0.00 s"), (0.0412, "0.04 s"), (1.65, "1.65 s"), (1.7, "1.70 s"), (9.994, "9.99 s"), (9.996, "10.0 s"),
     (12.44, "12.4 s"), (59.94, "59.9 s"), (59.96, "1.0 min"), (744.0, "12.4 min"), (3599.0, "1.0 h"),
     (194_400.0, "54.0 h")],
)
def test_seconds_text_three_figures_and_a_unit_that_keeps_them_short(seconds, text):
    assert seconds_text(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "cap", "text"),
    [(1.654, 1.65, "1.654 s"), (1.78, 1.65, "1.78 s"), (1.65, 1.654, "1.650 s"), (744.5, 744.0, "12.41 min")],
)
def test_seconds_text_beside_a_cap_tells_them_apart(seconds, cap, text):
    assert seconds_text(seconds, unlike=cap) == text
    assert seconds_text(seconds, unlike=cap) != seconds_text(cap)


def test_one_format_in_every_message_and_table():
    """No module formats a duration by hand: every `... s` in a message comes from seconds_text."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "harness"
    by_hand = re.compile(r"\{[^{}]*(time|cap|_s|second|seconds|grace|timeout)[^{}]*:\.\d+f\} ?(s|min|h)\b")
    found = [f"{path.relative_to(root)}:{number}: {line.strip()}"
             for path in sorted(root.rglob("*.py")) for number, line in enumerate(path.read_text().splitlines(), 1)
             if by_hand.search(line)]
    assert found == []
