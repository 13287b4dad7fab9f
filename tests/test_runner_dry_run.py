"""`unlearn dry-run` apart from the competition: its own store, runs keyed by all that changes them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from harness.compete.executors import make_executor
from harness.compete.runner import DRY_RUNS_DIR, dry_run, run_competition
from harness.config import load_config
from harness.errors import SubmissionError
from harness.learn.models import build_model
from harness.results.store import Store
from harness.sandbox.hints import DICT_HINT

TINY = Path(__file__).parent / "data" / "tiny.yaml"
QUIET = {"progress": False, "log": lambda _: None}

KAGGLE_STYLE = '''
import torch
from torch import nn, optim

def unlearning(net, retain_loader, forget_loader, val_loader):
    """Dict batches (Kaggle): a little fine-tuning on retain."""
    device = next(net.parameters()).device
    opt = optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    for batch in retain_loader:
        opt.zero_grad()
        nn.functional.cross_entropy(net(batch["image"].to(device)), batch["age_group"].to(device)).backward()
        opt.step()
'''
TUPLES = '''
BATCH_FORMAT = "tuple"
def unlearning(net, retain, forget, validation):
    for inputs, targets in retain:
        pass
    return net
'''
DO_NOTHING = "def unlearning(net, retain_loader, forget_loader, val_loader):\n    pass\n"
RAISES = "def unlearning(net, retain_loader, forget_loader, val_loader):\n    raise RuntimeError('boom')\n"
IMPORT_ERROR = "import a_module_that_does_not_exist\n"
NO_FUNCTION = "x = 1\n"


def tiny(tmp_path: Path, **overrides):
    return load_config(TINY, overrides={"output.dir": str(tmp_path / "runs"), **overrides})


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def published(cfg) -> dict:
    """Everything the competition publishes or keys on, byte for byte."""
    store = Store(cfg.run_dir / "results.sqlite")
    return {
        "csv": (cfg.run_dir / "leaderboard_public.csv").read_text(),
        "md": (cfg.run_dir / "leaderboard_public.md").read_text(),
        "config_hash": store.competition().config_hash,
        "teams": [(s.team, s.version, s.kind) for s in store.submissions()],
        "runs": [(r.submission_id, r.run_index, r.recorded_at) for r in store.all_runs()],
    }


def test_a_dozen_dry_runs_leave_the_competition_exactly_as_it_was(tmp_path):
    """Must show (issue 11): dry runs of assorted files and settings, then `unlearn run` in the same
    folder gives exactly the leaderboard it gave before them. The dry runs' own store keeps every
    setting apart, says when it serves stored runs, and --fresh runs them again."""
    subs = tmp_path / "submissions"
    write(subs / "team_a.py", KAGGLE_STYLE)
    cfg = tiny(tmp_path)
    run_competition(cfg, submissions_dir=subs, **QUIET)
    before = published(cfg)

    mine = write(tmp_path / "mine" / "mine.py", KAGGLE_STYLE)
    files = {name: write(tmp_path / "mine" / f"{name}.py", text) for name, text in [
        ("retrain", DO_NOTHING), ("team_a", RAISES), ("tuples", TUPLES), ("imports", IMPORT_ERROR),
        ("nothing", NO_FUNCTION)]}
    runs = [
        ("first", mine, cfg, {}),
        ("again", mine, cfg, {}),
        ("tuple batches", mine, cfg, {"batch_format": "tuple"}),
        ("another cap", mine, tiny(tmp_path, **{"time_cap.seconds": 30.0}), {}),
        ("another forget set", mine, tiny(tmp_path, **{"task.forget.seed": 5}), {}),
        ("no sandbox", mine, cfg, {"unsafe_no_sandbox": True}),
        ("named like the oracle", files["retrain"], cfg, {}),
        ("named like a competitor", files["team_a"], cfg, {}),
        ("starting-kit style", files["tuples"], cfg, {}),
        ("import error", files["imports"], cfg, {}),
        ("no unlearning()", files["nothing"], cfg, {}),
        ("fresh", mine, cfg, {"fresh": True}),
    ]
    said: dict[str, list[str]] = {}
    records, recorded = {}, {}
    dry_store = Store(cfg.run_dir / DRY_RUNS_DIR / "results.sqlite")
    with make_executor(cfg.executor) as executor:  # one pool for all twelve: seconds, not minutes
        for label, path, config, kwargs in runs:
            said[label] = []
            records[label] = dry_run(path, config, executor=executor, progress=False, log=said[label].append, **kwargs)
            recorded[label] = sorted(r.recorded_at for r in dry_store.all_runs())

    assert published(cfg) == before, "a dry run changed the competition's store or leaderboard"
    run_competition(cfg, submissions_dir=subs, **QUIET)
    assert published(cfg) == before

    assert records["first"]["status"] == "ok" and records["first"]["stored_runs"] == 0
    served = records["again"]
    assert served["stored_runs"] == 4 and served["final_score"] == records["first"]["final_score"]
    assert any("serving 4 of 4 runs stored" in line and "--fresh" in line for line in said["again"])
    assert recorded["again"] == recorded["first"], "serving stored runs recorded runs"
    assert records["tuple batches"]["status"] == "exception" and records["tuple batches"]["stored_runs"] == 0
    assert records["another cap"]["stored_runs"] == 0 and records["another cap"]["time_cap_s"] == 30.0
    assert records["another forget set"]["stored_runs"] == 0 and records["another forget set"]["status"] == "ok"
    assert records["no sandbox"]["stored_runs"] == 0
    assert records["named like the oracle"]["status"] == "ok"
    assert records["named like a competitor"]["status"] == "exception"
    assert records["import error"]["status"] == "import_error"
    assert records["no unlearning()"]["status"] == "missing_function"
    assert records["fresh"]["stored_runs"] == 0 and records["fresh"]["status"] == "ok"
    assert len(recorded["fresh"]) == len(recorded["no unlearning()"]) and recorded["fresh"] != recorded["no unlearning()"]
    keys = {label: r["key"] for label, r in records.items() if r["submission"] == str(mine)}
    assert keys["first"] == keys["again"] == keys["fresh"]
    assert len({keys[k] for k in ("first", "tuple batches", "another cap", "another forget set", "no sandbox")}) == 5
    assert {r["store"] for r in records.values()} == {str(dry_store.path)}


def test_dry_run_never_replays_runs_of_another_original_model(tmp_path):
    """Another original_model.pth (same name, other bytes): the runs are run again against it."""
    checkpoint = tmp_path / "original_model.pth"
    model = build_model("small-cnn", num_classes=10, in_channels=3)
    torch.save(model.state_dict(), checkpoint)
    cfg = tiny(tmp_path, **{"model.checkpoint": str(checkpoint)})
    path = write(tmp_path / "mine.py", KAGGLE_STYLE)
    with make_executor(cfg.executor) as executor:
        first = dry_run(path, cfg, executor=executor, **QUIET)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
        torch.save(model.state_dict(), checkpoint)
        second = dry_run(path, cfg, executor=executor, **QUIET)
    assert first["stored_runs"] == 0 and second["stored_runs"] == 0
    assert first["key"] != second["key"]
    assert len(Store(cfg.run_dir / DRY_RUNS_DIR / "results.sqlite").all_runs()) == 2 * 4


# -- a failed dry run explains itself: the participant's file and line, the traceback, the log, a hint
MY_METHOD = '''\
import torch


def unlearning(net, retain_loader, forget_loader, val_loader):
    for batch in retain_loader:
        hessian(net, batch["image"])


def hessian(net, images):
    raise ValueError(f"the Hessian of {len(images)} images is singular")
'''
CUDA_ON_CPU = '''\
def unlearning(net, retain_loader, forget_loader, val_loader):
    net.cuda()
'''
DICT_BY_INDEX = '''\
def unlearning(net, retain_loader, forget_loader, val_loader):
    for batch in retain_loader:
        images, labels = batch[0], batch[1]
'''
TUPLE_BY_KEY = '''\
BATCH_FORMAT = "tuple"


def unlearning(net, retain_loader, forget_loader, val_loader):
    for batch in retain_loader:
        images = batch["image"]
'''


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    """One tiny competition's cache and one pool for the dry runs below."""
    root = tmp_path_factory.mktemp("dry-runs")
    cfg = tiny(root)
    with make_executor(cfg.executor) as executor:
        yield cfg, executor, root


def test_failed_dry_run_names_the_participants_file_and_keeps_the_full_log(competition):
    cfg, executor, root = competition
    path = write(root / "mine" / "my_method.py", MY_METHOD)
    record = dry_run(path, cfg, executor=executor, **QUIET)
    assert record["status"] == "exception"
    assert record["error"] == "run 0: ValueError at my_method.py:6 in unlearning -> my_method.py:10 in hessian"
    tail = record["traceback"]
    assert tail[0] == "Traceback (most recent call last):" and tail[1] == '  File "my_method.py", line 6, in unlearning'
    assert '  File "my_method.py", line 10, in hessian' in tail
    assert tail[-1].startswith("ValueError: the Hessian of") and tail[-1].endswith("images is singular")
    logs = cfg.run_dir / DRY_RUNS_DIR / "logs" / f"my_method@{record['key']}"
    assert record["log"] == str(logs / "run_0.log") and record["logs_dir"] == str(logs)
    assert sorted(p.name for p in logs.iterdir()) == [f"run_{i}.log" for i in range(4)]
    log = (logs / "run_0.log").read_text()
    assert "\n".join(tail) in log and "submission.py" not in log and str(path.parent) not in log
    assert record["hint"] is None  # no common mistake here


@pytest.mark.parametrize(
    ("source", "hint"),
    [
        pytest.param(CUDA_ON_CPU, "CUDA_HINT", id="cuda-on-cpu",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
        pytest.param(DICT_BY_INDEX, "DICT_HINT", id="dict-batch-by-index"),
        pytest.param(TUPLE_BY_KEY, "TUPLE_HINT", id="tuple-batch-by-key"),
    ],
)
def test_failed_dry_run_hints_at_the_common_mistake(competition, source, hint):
    from harness.sandbox import hints

    cfg, executor, root = competition
    path = write(root / "hints" / f"{hint.lower()}.py", source)
    record = dry_run(path, cfg, executor=executor, **QUIET)
    assert record["status"] == "exception" and record["hint"] == getattr(hints, hint)


def test_dry_run_of_weights_returned_unchanged_says_F_will_be_0(competition):
    from harness.sandbox.hints import UNCHANGED_HINT

    cfg, executor, root = competition
    record = dry_run(write(root / "nothing" / "nothing.py", DO_NOTHING), cfg, executor=executor, **QUIET)
    assert record["status"] == "ok" and record["forget_quality"] == 0.0
    assert record["unchanged_runs"] == [0, 1, 2, 3] and record["hint"] == UNCHANGED_HINT
    changed = dry_run(write(root / "tuned" / "tuned.py", KAGGLE_STYLE), cfg, executor=executor, **QUIET)
    assert changed["status"] == "ok" and changed["unchanged_runs"] == [] and changed["hint"] is None


def test_example_submission_dry_runs_with_tuple_batches(competition):
    """configs/cifar10.yaml's batch format through the real worker: the example scores, it does not raise."""
    cfg, executor, _ = competition
    example = Path(__file__).resolve().parent.parent / "submissions" / "example_submission.py"
    record = dry_run(example, cfg, executor=executor, batch_format="tuple", **QUIET)
    assert record["status"] == "ok", record["error"]
    assert record["final_score"] is not None and record["unchanged_runs"] == []


def test_dry_run_refuses_a_directory_naming_it_and_the_fix(tmp_path):
    (tmp_path / "mine").mkdir()
    with pytest.raises(SubmissionError, match=r"^submission .*mine is a directory; pass the path of one \.py file in it"):
        dry_run(tmp_path / "mine", tiny(tmp_path), **QUIET)
    assert not (tmp_path / "runs").exists()  # refused before anything is built


def test_cli_dry_run_of_a_failing_file_prints_its_line_the_traceback_tail_the_hint_and_the_log(competition, capsys):
    """Must show (issue 12): what the participant reads, as text and as --json."""
    from harness.cli import main

    cfg, _, root = competition
    path = write(root / "cli" / "my_method.py", MY_METHOD.replace('batch["image"]', "batch[0]"))
    args = ["dry-run", str(path), "--config", str(TINY), "--output", str(cfg.output.dir)]
    assert main(args) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "error       run 0: KeyError at my_method.py:6 in unlearning" in lines
    assert f"hint        {DICT_HINT}" in lines
    assert "  |   File \"my_method.py\", line 6, in unlearning" in lines and lines[lines.index("  | KeyError: 0")]
    [full] = [line for line in lines if line.startswith("full log    ")]
    log = Path(full.split()[2])
    assert log.is_file() and log.is_relative_to(cfg.run_dir / DRY_RUNS_DIR / "logs") and "KeyError: 0" in log.read_text()
    assert main([*args, "--json"]) == 1
    record = json.loads(capsys.readouterr().out)
    assert record["hint"] == DICT_HINT and record["log"] == str(log) and record["traceback"][-1] == "KeyError: 0"
