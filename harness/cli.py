"""`unlearn`: parses arguments, builds the config, calls one library function."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.timefmt import seconds_text


def _config(args: argparse.Namespace, **flag_keys: str):
    """CLI flags > YAML > defaults; a flag overrides only when the user gave it."""
    from harness.config import load_config

    overrides: dict[str, Any] = {}
    for attr, key in flag_keys.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    return load_config(getattr(args, "config", None), overrides=overrides)


def _emit(obj: Any, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=None, default=_json_default) if as_json else text)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def cmd_run(args: argparse.Namespace) -> int:
    from harness.compete.runner import run_competition

    cfg = _config(args, n_runs="submissions.n_runs", n_models="references.n_models", output="output.dir", device="device",
                  executor="executor.kind", address="executor.address")
    table = run_competition(
        cfg,
        submissions_dir=args.submissions,
        all_baselines=args.all_baselines,
        leaderboards=("public", "private") if args.private else ("public",),
        unsafe_no_sandbox=args.unsafe_no_sandbox,
        rerun=tuple(getattr(args, "rerun", None) or ()),
        progress=not args.quiet,
        log=(lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr)),
    )
    from harness.results.leaderboard import format_leaderboard

    print(format_leaderboard(table))
    print(f"\nwritten to {cfg.run_dir}/", file=sys.stderr)
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    args.all_baselines = False
    args.private = True
    return cmd_run(args)


def cmd_dry_run(args: argparse.Namespace) -> int:
    from harness.compete.runner import dry_run

    cfg = _config(args, n_runs="submissions.n_runs", n_models="references.n_models", output="output.dir", device="device",
                  executor="executor.kind", address="executor.address")
    record = dry_run(
        args.submission,
        cfg,
        batch_format=args.batch_format,
        unsafe_no_sandbox=args.unsafe_no_sandbox,
        fresh=args.fresh,
        progress=not args.json,
        log=lambda msg: print(msg, file=sys.stderr),
        over_cap_allowance=args.over_cap_allowance,
    )
    _emit(record, args.json, _format_dry_run(record))
    return 0 if record["status"] == "ok" else 1


def _format_dry_run(r: dict) -> str:
    lines = [f"submission  {r['submission']} (version {r['version']})", f"status      {r['status']}"]
    if r["stored_runs"]:
        lines.append(f"stored      {r['stored_runs']} of {r['n_models']} runs served from {r['store']} "
                     f"(same file and settings, key {r['key']}); --fresh runs them again")
    if r["error"]:
        lines.append(f"error       {r['error']}")
    if r.get("hint"):
        lines.append(f"hint        {r['hint']}")
    if r.get("traceback"):
        label = "traceback" if r["traceback"][0].startswith("Traceback") else "log tail"
        lines.append(f"{label:<11} (the last {len(r['traceback'])} lines)")
        lines += [f"  | {line}" for line in r["traceback"]]
    if r.get("log") and r["status"] != "ok":
        lines.append(f"full log    {r['log']} (every run's: {r['logs_dir']})")
    if r["final_score"] is not None:
        lines += [
            f"final score {r['final_score']:.4f}  (95% CI {r['ci_95'][0]:.4f} - {r['ci_95'][1]:.4f}, N = {r['n_models']})",
            f"forgetting  F = {r['forget_quality']:.4f}",
            f"accuracy    retain {r['retain_accuracy']:.3f} (x{r['retain_ratio']:.3f} of retrained)  "
            f"test {r['test_accuracy']:.3f} (x{r['test_ratio']:.3f})  forget {r['forget_accuracy']:.3f}",
        ]
    if r["noise_floor"] is not None:
        lines.append(f"calibration a perfect unlearner scores F ~ {r['noise_floor']:.3f} here ({r['noise_floor_note']})")
    times = r["run_times_s"]
    if times:
        lines.append(f"run times   median {seconds_text(sorted(times)[len(times) // 2])}, worst {seconds_text(max(times))}, "
                     f"cap {seconds_text(r['time_cap_s'])}")
    over = r.get("over_cap")
    if over:
        lines += _format_over_cap(over, r["status"])
    return "\n".join(lines)


def _format_over_cap(over: dict, status: str) -> list[str]:
    """The over-cap allowance's lines: the verdict stands; the score is what the runs would earn."""
    late = over["runs_over_cap"]
    if not late:
        return [f"over cap    no run went past the cap (allowance {over['allowance']:g}x)"]
    worst = max(late, key=lambda run: run["over_s"])
    lines = [f"over cap    {len(late)} run(s) past the {seconds_text(over['time_cap_s'])} cap, by up to {seconds_text(worst['over_s'])} "
             f"({worst['ratio']:.2f}x, run {worst['run']}): the organizers would reject this file ({status})",
             "            " + ", ".join(f"run {run['run']} +{seconds_text(run['over_s'])}" for run in late)]
    would = over["would_score"]
    if would is not None:
        lines.append(f"would score {would['final_score']:.4f}  (95% CI {would['ci_95'][0]:.4f} - {would['ci_95'][1]:.4f}; "
                     f"F = {would['forget_quality']:.4f}) had every run been within the cap")
    else:
        lines.append(f"would score -  ({over['note']})")
    return lines


def _allowance(text: str) -> float:
    """'3x', '3' or '2.5x': a multiple of the cap, above 1."""
    try:
        value = float(text[:-1] if text.lower().endswith("x") else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a multiple of the cap; write it as 3x") from None
    if not value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 1x (1x is the cap itself); e.g. 3x")
    return value


def cmd_metric(args: argparse.Namespace) -> int:
    from harness.scoring.metric_report import format_metric_report, metric_report

    report = metric_report(args.unlearned, args.retrained, test_losses_path=args.test_losses)
    _emit(report, args.json, format_metric_report(report))
    return 0


def cmd_data_describe(args: argparse.Namespace) -> int:
    from harness.learn.describe import describe_task, format_description

    cfg = _config(args)
    report = describe_task(cfg, measure=not args.no_measure)
    _emit(report, args.json, format_description(report))
    return 0


def cmd_references_export(args: argparse.Namespace) -> int:
    from harness.compete.references import export_references
    from harness.compete.runner import prepare

    cfg = _config(args)
    prep = prepare(cfg, log=lambda msg: print(msg, file=sys.stderr))
    export_references(prep.references, args.file)
    print(f"wrote {args.file}")
    return 0


def cmd_references_import(args: argparse.Namespace) -> int:
    from harness.compete.references import import_references

    from harness.results.lock import writer_lock

    cfg = _config(args)
    cache_dir = cfg.cache_dir
    with writer_lock(cfg.run_dir):  # the competition's cache: not while another command writes it
        key = import_references(args.file, cache_dir)
    print(f"imported references {key} into {cache_dir}")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from harness.results.leaderboard import format_leaderboard, publish_leaderboard

    table = publish_leaderboard(args.run_dir, reveal_private=args.reveal_private, publish_logs=args.publish_logs)
    print(format_leaderboard(table))
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    from harness.results.rescore import rescore

    run_dir = Path(args.run_dir)
    n = rescore(run_dir, log=print)
    print(f"rescored {n} submissions in {run_dir}")
    return 0


def cmd_check_baselines(args: argparse.Namespace) -> int:
    from harness.compete.check_baselines import check_baselines, format_check

    cfg = _config(args) if args.config is not None else None  # None: the config the expected file names
    report = check_baselines(cfg, expected=args.expected)
    print(format_check(report))
    return 0 if report["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    from harness.config import executor_names  # the registry's names, so a new executor is a choice at once
    from harness.sandbox.protocol import BATCH_FORMATS

    parser = argparse.ArgumentParser(prog="unlearn", description="Score machine-unlearning submissions.")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, positional_config: bool = False) -> None:
        if positional_config:
            p.add_argument("config", nargs="?", help="YAML config (default: the embedded synthetic-faces task)")
        else:
            p.add_argument("--config", help="YAML config (default: the embedded synthetic-faces task)")

    def scoring(p: argparse.ArgumentParser) -> None:
        p.add_argument("--n-runs", type=int, help="runs per submission (config: submissions.n_runs)")
        p.add_argument("--n-models", type=int, help="reference models (config: references.n_models)")
        p.add_argument("--output", help="folder holding competitions (config: output.dir)")
        p.add_argument("--device", help="cpu, cuda, cuda:1 or auto (config: device)")
        p.add_argument("--executor", choices=executor_names(), help="where units run (config: executor.kind)")
        p.add_argument("--address", help="a Ray cluster's address; none starts a local Ray (config: executor.address)")
        p.add_argument("--unsafe-no-sandbox", action="store_true", help="run submissions in a plain process (trusted code only)")

    p = sub.add_parser("run", help="the main job: a whole competition end to end")
    common(p, positional_config=True)
    scoring(p)
    p.add_argument("--submissions", help="folder of submission files (config: submissions.dir)")
    p.add_argument("--all-baselines", action="store_true", help="score every baseline, not only the config's")
    p.add_argument("--private", action="store_true", help="also score the private leaderboard")
    p.add_argument("--rerun", action="append", metavar="TEAM",
                   help="run this entry's stored runs again on purpose (the old rows are kept as superseded); repeatable")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("score", help="the organizers' scoring of a folder of submissions (public and private)")
    common(p)
    scoring(p)
    p.add_argument("--submissions", required=True, help="folder of submission files")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("dry-run", help="score one submission file as the organizers would, at small N")
    p.add_argument("submission", help="a .py file defining unlearning(net, retain_loader, forget_loader, val_loader)")
    common(p)
    scoring(p)
    p.add_argument("--batch-format", choices=BATCH_FORMATS, help="override the batch style the file declares")
    p.add_argument("--fresh", action="store_true", help="run again the runs stored by an earlier dry run of the same file and settings")
    p.add_argument("--over-cap-allowance", type=_allowance, metavar="Kx",
                   help="let runs past the cap finish up to K caps (e.g. 3x): still a timeout, but the score they would earn is shown")
    p.add_argument("--json", action="store_true", help="print one JSON record")
    p.set_defaults(func=cmd_dry_run)

    p = sub.add_parser("metric", help="the forgetting-quality metric on two [N, S] confidence files")
    p.add_argument("--unlearned", required=True, help=".npy file, [N models, S forget examples]")
    p.add_argument("--retrained", required=True, help=".npy file, [N models, S forget examples]")
    p.add_argument("--test-losses", help=".npy file, [N models, T test examples]: the unlearned runs' test-set losses (the simple MIA lens)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_metric)

    data = sub.add_parser("data", help="inspect the task's data").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("describe", help="counts, class balance, and whether the task generalises and memorises")
    common(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-measure", action="store_true", help="counts only; skip the training measurements")
    p.set_defaults(func=cmd_data_describe)

    refs = sub.add_parser("references", help="move reference results as one file").add_subparsers(dest="refs_command", required=True)
    p = refs.add_parser("export", help="train (or load cached) references and write them to FILE")
    p.add_argument("file")
    common(p)
    p.set_defaults(func=cmd_references_export)
    p = refs.add_parser("import", help="put exported references into this config's cache")
    p.add_argument("file")
    common(p)
    p.set_defaults(func=cmd_references_import)

    p = sub.add_parser("leaderboard", help="rebuild the leaderboards from the store")
    p.add_argument("run_dir", nargs="?", default="runs/default")
    p.add_argument("--reveal-private", action="store_true", help="publish the private leaderboard")
    p.add_argument("--publish-logs", action="store_true",
                   help="show run logs on the site (off by default: a submission's output is a channel to the public)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("rescore", help="recompute scores from stored confidences, rerunning nothing")
    p.add_argument("run_dir", nargs="?", default="runs/default")
    p.set_defaults(func=cmd_rescore)

    p = sub.add_parser("check-baselines", help="re-score the baselines and compare with baselines/expected.yaml")
    p.add_argument("--config", help="YAML config (default: the one the expected file names)")
    p.add_argument("--expected", help="expected figures (default: the shipped baselines/expected.yaml)")
    p.set_defaults(func=cmd_check_baselines)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
