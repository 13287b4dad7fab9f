"""`unlearn check-baselines`: do the baselines still reproduce their scores?

Re-scores the baselines listed in the expected file with the config's fixed seeds and compares
each figure with its expected value and tolerance. Tolerances come from the spread measured
across seeds (see baselines/expected.yaml), so another machine's floating point does not fail
the check while a real change in training, the sandbox or the metric does. The oracle must also
beat doing nothing on forgetting quality by a stated margin, or the task is degenerate.

The expected file names the config it was made for (`config: configs/ci.yaml`): the check uses
that config unless given one, and refuses a config whose results would differ from it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import yaml

from harness.config import Config, find_config, load_config, shipped_dir
from harness.errors import ConfigError

FIGURES = ("final_score", "forget_quality", "retain_acc", "test_acc")
DEFAULT_EXPECTED = shipped_dir("baselines") / "expected.yaml"


def load_expected(path: str | Path | None = None) -> dict:
    path = Path(path) if path is not None else DEFAULT_EXPECTED
    if not path.is_file():
        raise ConfigError(f"expected-scores file {path} does not exist; pass --expected with baselines/expected.yaml")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data.get("baselines"), dict) or not data["baselines"]:
        raise ConfigError(f"{path}: key 'baselines' must map baseline names to expected figures")
    for name, figures in data["baselines"].items():
        for figure in FIGURES:
            entry = (figures or {}).get(figure)
            if not isinstance(entry, dict) or {"value", "tolerance"} - set(entry):
                raise ConfigError(f"{path}: key 'baselines.{name}.{figure}' must be a mapping with 'value' and 'tolerance'")
    if "config" in data and not isinstance(data["config"], str):
        raise ConfigError(f"{path}: key 'config' must be the path of the config these figures were made for, got {data['config']!r}")
    return data


def expected_config(cfg: Config | None, spec: dict, *, expected: str | Path | None = None) -> Config:
    """The config to check: the one the expected file names, or `cfg` when it hashes the same
    (a copy, or other executor settings); `cfg` alone for a file that names none."""
    where = expected if expected is not None else DEFAULT_EXPECTED
    named = spec.get("config")
    if named is None:
        if cfg is None:
            raise ConfigError(f"{where} names no config; add 'config: <the config it was made for>' to it, or pass --config")
        return cfg
    relative = Path(where).parent / named
    made_for = load_config(relative if not Path(named).is_absolute() and relative.is_file() else find_config(named))
    if cfg is not None and cfg.hash() != made_for.hash():
        raise ConfigError(
            f"{where} was made for {named} (config hash {made_for.hash()}), not {cfg.source} (config hash {cfg.hash()}); "
            f"drop --config to check {named}, or pass --expected with a file made for {cfg.source}"
        )
    return made_for if cfg is None else cfg


def check_baselines(
    cfg: Config | None, *, expected: str | Path | None = None, progress: bool = False, log=lambda msg: None
) -> dict:
    from harness.compete.runner import run_competition

    spec = load_expected(expected)
    cfg = expected_config(cfg, spec, expected=expected)
    names = tuple(spec["baselines"])
    oracle, nothing = spec.get("oracle", "retrain"), spec.get("do_nothing", "do_nothing")
    margin = float(spec.get("oracle_margin", 0.0))
    cfg = replace(cfg, submissions=replace(cfg.submissions, baselines=names, dir=None))
    table = run_competition(cfg, submissions_dir=None, baselines=names, progress=progress, log=log)
    rows = baseline_rows(table, names)
    checks = []
    for name, figures in spec["baselines"].items():
        row = rows.get(name)
        for figure in FIGURES:
            want, tol = float(figures[figure]["value"]), float(figures[figure]["tolerance"])
            got = None if row is None or row.get("status") != "ok" else float(row[figure])
            ok = got is not None and abs(got - want) <= tol
            checks.append({"baseline": name, "figure": figure, "expected": want, "tolerance": tol, "got": got, "ok": ok,
                           "status": None if row is None else row.get("status")})
    f_oracle = _figure(rows, oracle, "forget_quality")
    f_nothing = _figure(rows, nothing, "forget_quality")
    gap_ok = f_oracle is not None and f_nothing is not None and f_oracle - f_nothing >= margin
    checks.append({"baseline": f"{oracle} - {nothing}", "figure": "forget_quality gap", "expected": margin,
                   "tolerance": 0.0, "got": None if f_oracle is None or f_nothing is None else f_oracle - f_nothing,
                   "ok": gap_ok, "status": None})
    return {"ok": all(c["ok"] for c in checks), "checks": checks, "config": cfg.source}


TOLERANCE_FLOORS = {"final_score": 0.01, "forget_quality": 0.01, "retain_acc": 0.05, "test_acc": 0.05}


def expected_spec(
    values: dict[str, dict[str, float]],
    across_seeds: dict[str, dict[str, list[float]]],
    *,
    config: str,
    oracle: str = "retrain",
    do_nothing: str = "do_nothing",
    oracle_margin: float = 0.10,
) -> dict:
    """An expected file's content (scripts/baseline_spread.py writes it): each baseline's figures
    on `config` as is, each tolerance 4 standard deviations across seeds and at least its floor
    (three seeds underestimate a spread), and the config they were made for."""
    baselines = {}
    for name, figures in values.items():
        baselines[name] = {}
        for figure in FIGURES:
            seen = [float(v) for v in across_seeds[name][figure]]
            sd = float(np.std(seen, ddof=1)) if len(seen) > 1 else 0.0
            baselines[name][figure] = {"value": round(float(figures[figure]), 4),
                                       "tolerance": round(max(4 * sd, TOLERANCE_FLOORS[figure]), 3)}
    return {"config": config, "oracle": oracle, "do_nothing": do_nothing, "oracle_margin": oracle_margin, "baselines": baselines}


def baseline_rows(table, names) -> dict:
    """Each baseline's row, found by the entry's identity (its team and kind), never by a name a
    submission could share (a file named retrain.py is team 'retrain', not the baseline)."""
    from harness.compete.runner import baseline_team

    rows = {}
    for name in names:
        match = table[(table["team"] == baseline_team(name)) & table["kind"].isin(("baseline", "oracle"))]
        if len(match):
            rows[name] = match.iloc[0]
    return rows


def _figure(rows: dict, name: str, figure: str) -> float | None:
    row = rows.get(name)
    if row is None or row.get("status") != "ok":
        return None
    return float(row[figure])


def format_check(report: dict) -> str:
    lines = []
    for c in report["checks"]:
        got = "missing" if c["got"] is None else f"{c['got']:.4f}"
        mark = "ok   " if c["ok"] else "DRIFT"
        rule = f">= {c['expected']:.4f}" if c["figure"].endswith("gap") else f"{c['expected']:.4f} +- {c['tolerance']:.4f}"
        extra = f" (status {c['status']})" if c["status"] not in (None, "ok") else ""
        lines.append(f"{mark} {c['baseline']:<28} {c['figure']:<20} got {got:<9} expected {rule}{extra}")
    drifted = [f"{c['baseline']}.{c['figure']}" for c in report["checks"] if not c["ok"]]
    lines.append("all baselines reproduce" if report["ok"] else f"drifted: {', '.join(drifted)}")
    return "\n".join(lines)
