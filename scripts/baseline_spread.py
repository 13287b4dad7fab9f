"""Measure how much each baseline's figures move across seeds, to justify check tolerances.

Runs the check config with several seeds (original model, references and runs all reseeded),
prints each figure's mean, standard deviation and range per baseline, and suggests a tolerance
(4 standard deviations, at least a floor) for baselines/expected.yaml. With --write, writes that
file: the figures of the config as is, those tolerances, and `config:` naming the config, which
`unlearn check-baselines` then uses when given no --config.

    python scripts/baseline_spread.py --config configs/ci.yaml --seeds 0 1 2 --write baselines/expected.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from harness.compete.check_baselines import FIGURES, TOLERANCE_FLOORS, expected_spec
from harness.compete.runner import run_competition
from harness.config import load_config


def figures_of(cfg) -> list[dict]:
    table = run_competition(cfg, submissions_dir=None, progress=False, log=lambda m: None)
    return [{"baseline": row["team"].removeprefix("baseline:"), "status": row["status"], **{f: row.get(f) for f in FIGURES}}
            for _, row in table.iterrows()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ci.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", default="runs")
    parser.add_argument("--write", help="write an expected file here (e.g. baselines/expected.yaml)")
    parser.add_argument("--oracle-margin", type=float, default=0.10, help="F(oracle) - F(do_nothing) the check demands")
    args = parser.parse_args()
    base = load_config(args.config)
    rows, as_is = [], None
    for seed in args.seeds:
        cfg = load_config(args.config, overrides={
            "seed": seed, "references.seed": base.references.seed + 10_000 * seed,
            "name": f"{base.name}-spread-{seed}", "output.dir": args.output,
        })
        got = figures_of(cfg)
        rows += [{"seed": seed, **r} for r in got]
        if seed == 0 and base.seed == 0:  # these overrides leave the config as it is
            as_is = got
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    print()
    for name, group in df.groupby("baseline"):
        for figure in FIGURES:
            values = group[figure].astype(float).to_numpy()
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            print(f"{name:<16} {figure:<15} mean {np.mean(values):.4f} sd {sd:.4f} range "
                  f"[{np.min(values):.4f}, {np.max(values):.4f}] suggested tolerance {max(4 * sd, TOLERANCE_FLOORS[figure]):.4f}")
    if args.write:
        if as_is is None:
            as_is = figures_of(load_config(args.config, overrides={"name": f"{base.name}-spread-as-is", "output.dir": args.output}))
        spec = expected_spec(
            {r["baseline"]: r for r in as_is},
            {name: {f: group[f].tolist() for f in FIGURES} for name, group in df.groupby("baseline")},
            config=args.config, oracle=base.submissions.reference_baselines[0], oracle_margin=args.oracle_margin,
        )
        header = (f"# What `unlearn check-baselines` must reproduce, on {args.config} as is.\n"
                  f"# Written by scripts/baseline_spread.py --config {args.config} --seeds {' '.join(map(str, args.seeds))}:\n"
                  "# tolerances are 4 standard deviations across those seeds, at least "
                  f"{TOLERANCE_FLOORS['final_score']} for scores and {TOLERANCE_FLOORS['retain_acc']} for accuracies.\n")
        Path(args.write).write_text(header + yaml.safe_dump(spec, sort_keys=False))
        print(f"\nwrote {args.write}")


if __name__ == "__main__":
    main()
