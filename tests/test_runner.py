"""The runner end to end on a tiny competition (seconds): the specification of `unlearn run`."""

import functools
import json
import os
import signal
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from harness.compete.runner import discover_entries, dry_run, run_competition
from harness.config import load_config
from harness.results.store import Store

TINY = Path(__file__).parent / "data" / "tiny.yaml"

KAGGLE_STYLE = '''
import os
import torch
from torch import nn, optim

def unlearning(net, retain_loader, forget_loader, val_loader, class_weights=None):
    """Kaggle template: dict batches, changes net in place, returns nothing."""
    assert isinstance(retain_loader.batch_size, int) and len(retain_loader.dataset) > 0
    os.makedirs("/kaggle/tmp", exist_ok=True)
    torch.save(net.state_dict(), "/kaggle/tmp/scratch.pth")
    device = next(net.parameters()).device
    opt = optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    net.train()
    for batch in retain_loader:
        x, y = batch["image"].to(device), batch["age_group"].to(device)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
'''

STARTING_KIT_STYLE = '''
import torch
from torch import nn, optim
BATCH_FORMAT = "tuple"

def unlearning(net, retain, forget, validation):
    """CIFAR-10 starting kit: tuple batches, returns the model."""
    device = next(net.parameters()).device
    opt = optim.SGD(net.parameters(), lr=0.001)
    for inputs, targets in retain:
        opt.zero_grad()
        nn.functional.cross_entropy(net(inputs.to(device)), targets.to(device)).backward()
        opt.step()
    net.eval()
    return net
'''

RAISES = '''
def unlearning(net, retain_loader, forget_loader, val_loader):
    raise RuntimeError("boom")
'''


def tiny_config(tmp_path, **overrides):
    return load_config(TINY, overrides={"output.dir": str(tmp_path / "runs"), **overrides})


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(scope="module")
def competition(tmp_path_factory):
    """One tiny competition: two baselines, a Kaggle-style, a starting-kit-style and a broken file."""
    tmp = tmp_path_factory.mktemp("competition")
    subs = tmp / "submissions"
    subs.mkdir()
    write(subs / "kaggle_team.py", KAGGLE_STYLE)
    write(subs / "kit_team.py", STARTING_KIT_STYLE)
    write(subs / "broken_team.py", RAISES)
    cfg = tiny_config(tmp)
    table = run_competition(cfg, submissions_dir=subs, progress=False, log=lambda m: None)
    return cfg, table


def test_run_competition_scores_every_entry(competition):
    cfg, table = competition
    teams = set(table["team"])
    assert {"baseline:do_nothing", "baseline:finetune", "kaggle_team", "kit_team", "broken_team"} <= teams
    ok = table[table["status"] == "ok"]
    assert set(ok["team"]) >= {"baseline:do_nothing", "baseline:finetune", "kaggle_team", "kit_team"}
    assert np.isfinite(ok["final_score"]).all()


def test_run_competition_failure_is_a_row_with_reason(competition):
    _, table = competition
    row = table[table["team"] == "broken_team"].iloc[0]
    assert row["status"] == "exception"
    # the public reason is a template naming the participant's file; the message is in the private log
    assert row["reason"] == "run 0: RuntimeError at broken_team.py:3 in unlearning" and "boom" not in row["reason"]


def test_run_competition_writes_leaderboard_files(competition):
    cfg, _ = competition
    assert (cfg.run_dir / "results.sqlite").is_file()
    assert any(cfg.run_dir.glob("leaderboard_public.*"))


def test_run_competition_rerun_resumes_without_redoing(competition):
    cfg, table = competition
    store = Store(cfg.run_dir / "results.sqlite")
    before = len(store.all_runs())
    started = time.monotonic()
    again = run_competition(cfg, submissions_dir=cfg.run_dir.parent.parent / "submissions", progress=False, log=lambda m: None)
    assert len(Store(cfg.run_dir / "results.sqlite").all_runs()) == before
    ok_before = table.set_index("team")["final_score"].dropna()
    ok_after = again.set_index("team")["final_score"].dropna()
    assert ok_after.loc[ok_before.index].tolist() == pytest.approx(ok_before.tolist())
    assert time.monotonic() - started < 60


def test_discover_entries_marks_the_oracle_exempt(tmp_path):
    cfg = tiny_config(tmp_path, **{"submissions.baselines": ["do_nothing", "retrain"]})
    entries = {e.team: e for e in discover_entries(cfg)}
    assert entries["baseline:retrain"].exempt and entries["baseline:retrain"].kind == "oracle"
    assert not entries["baseline:do_nothing"].exempt


def test_dry_run_record_has_the_documented_fields(tmp_path):
    path = write(tmp_path / "mine.py", KAGGLE_STYLE)
    record = dry_run(path, tiny_config(tmp_path), progress=False, log=lambda m: None)
    for key in ("status", "error", "final_score", "forget_quality", "retain_accuracy", "test_accuracy",
                "forget_accuracy", "time_cap_s", "run_times_s"):
        assert key in record
    assert record["status"] == "ok" and record["error"] is None
    assert len(record["run_times_s"]) == 4
    json.dumps(record)


def test_dry_run_batch_format_override_feeds_tuples(tmp_path):
    # The Kaggle file indexes batch["image"]: forced tuple batches make it fail, cleanly.
    path = write(tmp_path / "mine.py", KAGGLE_STYLE)
    record = dry_run(path, tiny_config(tmp_path), batch_format="tuple", progress=False, log=lambda m: None)
    assert record["status"] == "exception"
    assert record["final_score"] is None


def test_rescore_recomputes_the_same_scores_from_the_store(competition):
    from harness.results.leaderboard import build_leaderboard
    from harness.results.rescore import rescore

    cfg, table = competition
    assert rescore(cfg.run_dir) >= 4
    again = build_leaderboard(Store(cfg.run_dir / "results.sqlite"))
    before = table.set_index("team")["final_score"].dropna()
    assert again.set_index("team")["final_score"].loc[before.index].tolist() == pytest.approx(before.tolist())


def test_every_scored_entry_has_its_lenses_beside_the_score_and_rescore_recomputes_them(competition):
    from harness.results.rescore import rescore
    from harness.scoring.lenses import LENSES
    from harness.scoring.scores import LENSES_EXTRA, TEST_LOSSES_EXTRA

    cfg, table = competition
    store = Store(cfg.run_dir / "results.sqlite")
    (sub,) = [s for s in store.submissions() if s.team == "baseline:finetune"]
    losses = store.get_extra(sub.id, leaderboard="public", name=TEST_LOSSES_EXTRA)
    assert sorted(map(int, losses)) == list(range(cfg.submissions.n_runs))
    assert all(len(v) == len(losses["0"]) > 0 and min(v) >= 0 for v in losses.values())
    before = store.get_extra(sub.id, leaderboard="public", name=LENSES_EXTRA)
    assert set(before) == set(LENSES.names())
    assert "unavailable" not in before["simple_mia"] and 0 <= before["simple_mia"]["mean_accuracy"] <= 1
    assert 0 <= before["lira"]["auc"] <= 1 and before["lira"]["unit"] == "(example, model) pair"
    assert before["bounded_f"]["forget_quality"] >= table.set_index("team").loc["baseline:finetune", "forget_quality"]
    board = (cfg.run_dir / "leaderboard_public.csv").read_text().splitlines()[0]
    assert all(f"lens_{name}" in board for name in LENSES.names())
    rescore(cfg.run_dir)
    assert Store(cfg.run_dir / "results.sqlite").get_extra(sub.id, leaderboard="public", name=LENSES_EXTRA) == before


def _expected_file(path: Path, table, *, nudge: float = 0.0) -> Path:
    import yaml

    rows = table.set_index("team")
    spec = {"oracle": "finetune", "do_nothing": "do_nothing", "oracle_margin": -1.0, "baselines": {}}
    for name in ("do_nothing", "finetune"):
        row = rows.loc[f"baseline:{name}"]
        spec["baselines"][name] = {
            f: {"value": float(row[f]) + nudge, "tolerance": 1e-9} for f in ("final_score", "forget_quality", "retain_acc", "test_acc")
        }
    path.write_text(yaml.safe_dump(spec))
    return path


def test_check_baselines_passes_on_the_same_seeds(competition, tmp_path):
    from harness.compete.check_baselines import check_baselines

    cfg, table = competition
    report = check_baselines(cfg, expected=_expected_file(tmp_path / "e.yaml", table))
    assert report["ok"], report


def test_check_baselines_names_what_drifted(competition, tmp_path):
    from harness.compete.check_baselines import check_baselines, format_check

    cfg, table = competition
    report = check_baselines(cfg, expected=_expected_file(tmp_path / "e.yaml", table, nudge=0.5))
    assert not report["ok"]
    assert "drifted: do_nothing.final_score" in format_check(report)


def test_an_entry_alone_is_spread_over_the_workers(tmp_path):
    """One entry's runs fill every worker: two workers, two sandboxed units of two runs each."""
    from harness.compete.baselines import baseline_path
    from harness.compete.executors import make_executor
    from harness.compete.runner import Entry, open_store, prepare, score_entries

    cfg = tiny_config(tmp_path, **{"executor.workers": 2})
    store = open_store(cfg)
    entry = Entry(team="finetune", path=baseline_path("finetune"), kind="baseline", exempt=False)
    with make_executor(cfg.executor) as executor:
        prep = prepare(cfg, executor=executor, progress=False, log=lambda _: None)
        [result] = score_entries(prep, [entry], store, executor=executor, n_runs=4, backend="none", progress=False,
                                 log=lambda _: None)
    assert result.status == "ok"
    assert len(result.unit_timings) == 2
    assert sorted(r["run_index"] for r in store.all_runs()) == [0, 1, 2, 3]
    assert not any((cfg.run_dir / "work" / "data").iterdir()), "the splits the units read stayed on disk"


@pytest.mark.parametrize("retries", [1, 0])
def test_a_pool_worker_killed_mid_unit(tmp_path, retries):
    """SIGKILL the pool worker running a submission's runs. With a retry left the unit runs again
    and every run is stored once; with none the entry is worker_died with no run rows, and the
    next run retries exactly those runs."""
    cfg = tiny_config(tmp_path, **{"executor.workers": 1, "executor.max_retries": retries,
                                   "submissions.baselines": ["finetune"]})
    killed = _kill_first_worker_with_a_child()
    table = run_competition(cfg, unsafe_no_sandbox=True, progress=False, log=lambda _: None)
    killed["stop"].set()
    killed["thread"].join()
    assert killed["pids"], "no pool worker was seen running a unit"
    row = table.set_index("team").loc["baseline:finetune"]
    runs = Store(cfg.run_dir / "results.sqlite").all_runs()
    if retries:
        assert row["status"] == "ok"
        assert sorted(r["run_index"] for r in runs) == [0, 1, 2, 3]
        return
    assert row["status"] == "worker_died" and "died" in row["reason"]
    assert runs == []
    again = run_competition(cfg, unsafe_no_sandbox=True, progress=False, log=lambda _: None)
    assert again.set_index("team").loc["baseline:finetune", "status"] == "ok"
    assert sorted(r["run_index"] for r in Store(cfg.run_dir / "results.sqlite").all_runs()) == [0, 1, 2, 3]


def _kill_first_worker_with_a_child() -> dict:
    """In the background: SIGKILL the first process-pool worker of this test seen running a
    submission's sandboxed worker, once. (Any child will not do: a worker starting up runs
    short-lived ones while torch loads, and a kill then is a start-up failure, not a lost unit.)"""
    import threading

    state = {"pids": [], "stop": threading.Event()}

    def kill() -> None:
        while not state["stop"].is_set() and not state["pids"]:
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                    parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    children = [c for task in (proc / "task").iterdir() for c in (task / "children").read_text().split()]
                except (OSError, ValueError, IndexError):
                    continue
                if b"spawn_main" in cmdline and parent == os.getpid() and any(map(_runs_sandbox, children)):
                    os.kill(int(proc.name), signal.SIGKILL)
                    state["pids"].append(int(proc.name))
                    break
            time.sleep(0.02)

    state["thread"] = threading.Thread(target=kill, daemon=True)
    state["thread"].start()
    return state


def _runs_sandbox(pid: str) -> bool:
    try:
        return b"harness.sandbox" in (Path("/proc") / pid / "cmdline").read_bytes()
    except OSError:
        return False


def test_runs_the_sandbox_failed_run_again_next_time(tmp_path):
    """The node cannot start the sandbox (no Docker daemon here): the harness's failure, not the
    submission's. The runs are sandbox_error with the reason; once the sandbox works, the next
    scoring runs them again and replaces those rows."""
    from harness.compete.baselines import baseline_path
    from harness.compete.executors import make_executor
    from harness.compete.runner import Entry, open_store, prepare, score_entries

    cfg = tiny_config(tmp_path, **{"executor.workers": 1})
    store = open_store(cfg)
    entry = Entry(team="finetune", path=baseline_path("finetune"), kind="baseline", exempt=False)
    with make_executor(cfg.executor) as executor:
        prep = prepare(cfg, executor=executor, progress=False, log=lambda _: None)
        score = functools.partial(score_entries, prep, [entry], store, executor=executor, n_runs=4, progress=False,
                                  log=lambda _: None)
        [broken] = score(backend="docker")
        assert broken.status == "sandbox_error" and "docker" in broken.reason
        assert [r["status"] for r in store.all_runs()] == ["sandbox_error"] * 4
        [fixed] = score(backend="none")
    assert fixed.status == "ok"
    assert [(r["run_index"], r["status"]) for r in store.all_runs()] == [(i, "ok") for i in range(4)]
