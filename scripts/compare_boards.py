"""Two leaderboards of the same competition scored two ways (e.g. bubblewrap and Docker) agree.

    python scripts/compare_boards.py A.csv B.csv

Same teams, same statuses, and the same final score, F and accuracies to 1e-9; exits 1 naming
what differs. Times are not compared: they belong to the machine, not the score.
"""

from __future__ import annotations

import sys

import pandas as pd

COLUMNS = ("status", "final_score", "forget_quality", "retain_acc", "test_acc", "forget_acc")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    a, b = (pd.read_csv(path).set_index("team") for path in argv)
    problems = []
    if sorted(a.index) != sorted(b.index):
        problems.append(f"teams differ: {sorted(set(a.index) ^ set(b.index))}")
    for team in sorted(set(a.index) & set(b.index)):
        for column in COLUMNS:
            if column not in a.columns:
                continue
            x, y = a.at[team, column], b.at[team, column]
            same = x == y or (pd.isna(x) and pd.isna(y))
            if not same and isinstance(x, float) and isinstance(y, float):
                same = abs(x - y) <= 1e-9
            if not same:
                problems.append(f"{team} {column}: {x} vs {y}")
    for problem in problems:
        print(f"boards differ: {problem}", file=sys.stderr)
    if not problems:
        print(f"boards agree: {len(a)} teams, {', '.join(c for c in COLUMNS if c in a.columns)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
