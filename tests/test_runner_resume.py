"""A killed runner, resumed; reruns on purpose or because the run protocol changed; `run` and
`rescore` scoring the same runs. The specification of what a competition's store promises.

Each crash test SIGKILLs a real `python -m harness.cli run` (on the tiny config, one pool
worker, the default sandbox) at one point, then runs it again: the rerun redoes no stored run,
no pool or sandbox process outlives the killed runner, and the leaderboard equals the one of an
uninterrupted run.
"""

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from harness.compete.runner import run_competition
from harness.config import load_config
from harness.results.leaderboard import build_leaderboard
from harness.results.rescore import rescore
from harness.results.store import Store
from harness.scoring.scores import score_run_records

TINY = Path(__file__).parent / "data" / "tiny.yaml"
ROOT = Path(__file__).resolve().parent.parent
N = 4  # runs per entry (tiny.yaml)
SAME = ["team", "status", "final_score", "forget_quality", "ci_low", "ci_high", "retain_acc", "test_acc", "forget_acc", "n_ok"]

# The runner, killed by itself with SIGKILL right after the KILL_AT-th run's confidences file is
# written, inside that run's transaction (before its row is committed): "while committing".
KILLED_WHILE_COMMITTING = textwrap.dedent(
    """
    import os, signal, sys
    import harness.results.store as store

    original = store.Store._save_array
    saved = []

    def save_then_die(self, rel, data):
        original(self, rel, data)
        if rel.startswith("arrays/run_"):
            saved.append(rel)
            if len(saved) == int(os.environ["KILL_AT"]):
                os.kill(os.getpid(), signal.SIGKILL)

    store.Store._save_array = save_then_die
    from harness.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _config_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "c.yaml"
    path.write_text(f"include: {TINY}\noutput: {{dir: {folder / 'runs'}}}\nexecutor: {{workers: 1}}\n")
    return path


def _cli(cfg: Path) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "run", str(cfg), "--quiet"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _board(run_dir: Path):
    with Store(run_dir / "results.sqlite", create=False) as s:
        return build_leaderboard(s)[SAME].set_index("team").sort_index()


def _runs(run_dir: Path) -> list[tuple]:
    with Store(run_dir / "results.sqlite", create=False) as s:
        return [(r.id, r.submission_id, r.leaderboard, r.run_index, r.recorded_at) for r in s.all_runs()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The tiny competition run once from nothing, uninterrupted: what every resumed run must give."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    cfg = load_config(_config_file(folder))
    started = time.monotonic()
    run_competition(cfg, progress=False, log=lambda _: None)  # what `unlearn run c.yaml --quiet` does, in-process
    print(f"uninterrupted tiny competition: {time.monotonic() - started:.1f} s")
    return cfg.run_dir


# -- crash and resume ----------------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    found, stack = set(), [pid]
    while stack:
        for task in Path(f"/proc/{stack.pop()}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.update(children)
            stack.extend(children)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _run_until(proc: subprocess.Popen, condition, *, kill: bool, limit_s: float = 300) -> set[int]:
    """Watch the runner (and every process under it) until `condition()` holds, then SIGKILL the
    runner alone (its pool workers must die by themselves), or until it killed itself. Returns
    every process seen under it."""
    seen: set[int] = set()
    deadline = time.monotonic() + limit_s
    while proc.poll() is None:
        assert time.monotonic() < deadline, "the runner never reached the point to kill it at"
        seen |= _descendants(proc.pid)
        if kill and condition(seen):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the runner ended with {proc.returncode}, not by SIGKILL"
    return seen


def _assert_none_left(seen: set[int]) -> None:
    """No pool worker or sandbox outlives its killed driver (reparented to init, as they were)."""
    assert seen, "no process was seen under the runner"
    deadline = time.monotonic() + 30
    while (left := {pid for pid in seen if _alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"left behind: {[(pid, _cmdline(pid)[:80]) for pid in left]}"


def _resume_and_compare(cfg: Path, run_dir: Path, uninterrupted: Path) -> None:
    kept = _runs(run_dir) if (run_dir / "results.sqlite").exists() else []
    resumed = subprocess.run(_cli(cfg), timeout=600, env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = _runs(run_dir)
    assert set(kept) <= set(after), "a stored run was redone or lost"
    assert len(after) == 2 * N and len({r[1:4] for r in after}) == 2 * N
    with Store(run_dir / "results.sqlite", create=False) as s:
        assert s.superseded_runs() == []
        assert s._read("PRAGMA integrity_check")[0]["integrity_check"] == "ok"
    assert _board(run_dir).equals(_board(uninterrupted))


def test_killed_during_references_resumes_with_the_same_leaderboard(tmp_path, uninterrupted):
    cfg = _config_file(tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    models = lambda: sorted((run_dir / "cache" / "references").glob("*/model_*.npz"))  # noqa: E731
    started = time.monotonic()
    proc = subprocess.Popen(_cli(cfg), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = _run_until(proc, lambda _: len(models()) >= 1, kill=True)
    _assert_none_left(seen)
    trained = {p: p.stat().st_mtime_ns for p in models()}
    assert 1 <= len(trained) < N, f"killed after {len(trained)} of {N} reference models: not during references"
    with Store(run_dir / "results.sqlite", create=False) as s:
        assert s.references("public") is None and s.all_runs() == []
    _resume_and_compare(cfg, run_dir, uninterrupted)
    assert {p: p.stat().st_mtime_ns for p in trained} == trained, "a trained reference model was trained again"
    print(f"killed during references and resumed: {time.monotonic() - started:.1f} s")


def _with_cache_of(uninterrupted: Path, tmp_path: Path) -> Path:
    """A fresh competition folder holding only the uninterrupted run's cache (original, references)."""
    cfg = _config_file(tmp_path)
    shutil.copytree(uninterrupted / "cache", tmp_path / "runs" / "tiny" / "cache")
    return cfg


def test_killed_during_a_unit_resumes_with_the_same_leaderboard(tmp_path, uninterrupted):
    cfg = _with_cache_of(uninterrupted, tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    db = run_dir / "results.sqlite"
    started = time.monotonic()
    proc = subprocess.Popen(_cli(cfg), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (run_dir / "writer.lock").exists() or str(proc.pid) not in (run_dir / "writer.lock").read_text():
        assert proc.poll() is None and time.monotonic() - started < 120
        time.sleep(0.02)
    # a second runner on the same folder meanwhile: the lock's one-line error, and it changes nothing
    second = subprocess.run(_cli(cfg), env=_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert f"is being written by another process (pid {proc.pid}, " in second.stderr.strip().splitlines()[-1]

    def in_second_unit(seen):  # do_nothing's unit committed, finetune's sandboxed worker running
        sandbox = any(b"harness.sandbox" in _cmdline(pid) for pid in _descendants(proc.pid))
        return sandbox and db.exists() and len(_runs(run_dir)) == N

    seen = _run_until(proc, in_second_unit, kill=True)
    _assert_none_left(seen)
    assert len(_runs(run_dir)) == N, "killed after the second unit was committed: not during it"
    _resume_and_compare(cfg, run_dir, uninterrupted)
    print(f"killed during a unit and resumed: {time.monotonic() - started:.1f} s")


def test_killed_while_committing_resumes_with_the_same_leaderboard(tmp_path, uninterrupted):
    cfg = _with_cache_of(uninterrupted, tmp_path)
    run_dir = tmp_path / "runs" / "tiny"
    started = time.monotonic()
    cmd = [sys.executable, "-c", KILLED_WHILE_COMMITTING, "run", str(cfg), "--quiet"]
    proc = subprocess.Popen(cmd, env={**_env(), "KILL_AT": "2"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen = _run_until(proc, None, kill=False)  # it kills itself inside the second run's commit
    _assert_none_left(seen)
    kept = _runs(run_dir)
    assert [r[3] for r in kept] == [0], "only the first run was committed; the second's transaction rolled back"
    _resume_and_compare(cfg, run_dir, uninterrupted)
    print(f"killed while committing and resumed: {time.monotonic() - started:.1f} s")


# -- the same runs for run and rescore ------------------------------------------------------------


def _copy_of(uninterrupted: Path, tmp_path: Path):
    shutil.copytree(uninterrupted, tmp_path / "runs" / "tiny")
    return load_config(_config_file(tmp_path))


def test_run_and_rescore_score_the_same_runs(tmp_path, uninterrupted):
    """More ok runs stored than n_runs (from an earlier, larger N) and a failed run beyond them:
    both score runs 0..n_runs-1 only, and agree."""
    cfg = _copy_of(uninterrupted, tmp_path)
    db = cfg.run_dir / "results.sqlite"
    with Store(db) as s:
        sid = next(x.id for x in s.submissions() if x.team == "baseline:finetune")
        first = s.runs(sid, "public")[0]
        for i in (N, N + 1):
            s.record_run(sid, leaderboard="public", run_index=i, seed=i, status="ok", retain_acc=0.5, test_acc=0.5,
                         forget_acc=0.5, confs=s.load_confs(first) + i)
        s.record_run(sid, leaderboard="public", run_index=N + 2, seed=0, status="timeout", reason="took 9 s > cap 1 s")
        last_ok = [r for r in s.runs(sid, "public") if r.status == "ok"][-N:]  # another pick of N ok runs
        refs = s.references("public")
        other_pick = score_run_records(last_ok, np.stack([s.load_confs(r) for r in last_ok]),
                                       s.load_array(refs.confs_file), refs, noise_floor=None).final_score
    expected = _board(uninterrupted).loc["baseline:finetune", "final_score"]
    assert other_pick != pytest.approx(expected)  # which runs are picked changes the score

    table = run_competition(cfg, progress=False, log=lambda _: None).set_index("team")
    assert table.loc["baseline:finetune", "status"] == "ok" and table.loc["baseline:finetune", "n_ok"] == N
    assert table.loc["baseline:finetune", "final_score"] == pytest.approx(expected, abs=1e-12)
    assert rescore(cfg.run_dir) == 2
    assert _board(cfg.run_dir).loc["baseline:finetune", "final_score"] == pytest.approx(expected, abs=1e-12)


# -- reruns ---------------------------------------------------------------------------------------


def test_rerun_team_runs_its_stored_runs_again_recorded_as_such(tmp_path, uninterrupted):
    from harness.cli import build_parser

    assert build_parser().parse_args(["run", "--rerun", "a", "--rerun", "b"]).rerun == ["a", "b"]
    cfg = _copy_of(uninterrupted, tmp_path)
    before = {r[1:4]: r for r in _runs(cfg.run_dir)}
    notes = []
    run_competition(cfg, rerun=("baseline:finetune",), progress=False, log=notes.append)
    with Store(cfg.run_dir / "results.sqlite", create=False) as s:
        sid = next(x.id for x in s.submissions() if x.team == "baseline:finetune")
        old = s.superseded_runs()
        assert [(r.submission_id, r.run_index, r.cause) for r in old] == \
            [(sid, i, "rerun asked for (--rerun baseline:finetune)") for i in range(N)]
        assert [r.id for r in old] == [before[(sid, "public", i)][0] for i in range(N)]
    after = {r[1:4]: r for r in _runs(cfg.run_dir)}
    assert {k for k in after if after[k] != before[k]} == {(sid, "public", i) for i in range(N)}  # only finetune's
    assert any("baseline:finetune (baseline, public): running its 4 stored run(s) again, as asked" in n for n in notes)
    assert _board(cfg.run_dir).equals(_board(uninterrupted))  # the same seeds: the same scores


def test_rerun_of_an_unknown_team_names_the_entries(tmp_path):
    cfg = load_config(_config_file(tmp_path))
    with pytest.raises(ValueError, match=r"--rerun 'finetune': no such entry in this competition; did you mean "
                                         r"'baseline:finetune'\? entries: baseline:do_nothing, baseline:finetune"):
        run_competition(cfg, rerun=("finetune",), progress=False, log=lambda _: None)
    assert not (cfg.run_dir / "results.sqlite").exists()


def test_runs_of_an_older_protocol_are_run_again_with_a_note(tmp_path, uninterrupted):
    """Runs stored before the run protocol changed are never resumed silently: shown on the boards
    and by rescore, then run again by the next run."""
    cfg = _copy_of(uninterrupted, tmp_path)
    db = cfg.run_dir / "results.sqlite"
    with Store(db) as s:
        sid = next(x.id for x in s.submissions() if x.team == "baseline:finetune")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE runs SET protocol = 1 WHERE submission_id = ?", (sid,))  # as migrated rows from schema 1 are
    conn.commit()
    conn.close()
    board = build_leaderboard(Store(db)).set_index("team")["old_protocol"]
    assert board["baseline:finetune"] == 1 and board.isna()["baseline:do_nothing"]
    notes = []
    rescore(cfg.run_dir, log=notes.append)
    assert notes == ["public: 1 entry rests on runs of an older run protocol (1 < 2): baseline:finetune; "
                     "`unlearn run` runs them again"]
    assert "old_protocol" in (cfg.run_dir / "leaderboard_public.md").read_text()

    notes = []
    run_competition(cfg, progress=False, log=notes.append)
    assert "baseline:finetune (baseline, public): 4 stored run(s) were run under run protocol 1 (now 2), so they " \
           "are not resumed: running them again" in notes
    with Store(db, create=False) as s:
        assert [(r.run_index, r.protocol, r.cause) for r in s.superseded_runs()] == \
            [(i, 1, "run protocol 1 < 2: run again") for i in range(N)]
        assert {r.protocol for r in s.all_runs()} == {2}
        assert build_leaderboard(s)["old_protocol"].isna().all()
    assert _board(cfg.run_dir).equals(_board(uninterrupted))
