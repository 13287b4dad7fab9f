"""One writer per run folder: every command that writes the store meets a second writer's lock
with a one-line error naming the holder; a holder killed with SIGKILL leaves the folder free."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.results.lock import lock_holder, writer_lock

TINY = Path(__file__).parent / "data" / "tiny.yaml"
OLD_STORE = Path(__file__).parent / "data" / "store-ce713d5"

_HOLDER = textwrap.dedent(
    """
    import sys
    from harness.results.lock import writer_lock

    with writer_lock(sys.argv[1], command="holder for a test"):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin (or kills us)
    """
)


@pytest.fixture
def holder():
    """Start another process that holds a folder's writer lock; yields a function that starts it."""
    procs = []

    def start(run_dir: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": _root()})
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def _root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"include: {TINY}\noutput: {{dir: {tmp_path / 'runs'}}}\n")
    return path


def _commands(tmp_path: Path) -> dict[str, tuple[list[str], Path]]:
    """Every command that writes a store, and the run folder it writes."""
    run_dir = tmp_path / "ce713d5"
    shutil.copytree(OLD_STORE, run_dir)
    cfg = _tiny_config(tmp_path)
    tiny_dir = tmp_path / "runs" / "tiny"
    expected = tmp_path / "expected.yaml"  # made for this config (the figures are never reached)
    figures = {f: {"value": 0.0, "tolerance": 1.0} for f in ("final_score", "forget_quality", "retain_acc", "test_acc")}
    expected.write_text(yaml.safe_dump({"config": str(cfg), "baselines": {"do_nothing": figures}}))
    sub = tmp_path / "mine.py"
    sub.write_text("def unlearning(net, retain_loader, forget_loader, val_loader):\n    pass\n")
    return {
        "run": (["run", str(cfg), "--quiet"], tiny_dir),
        "score": (["score", "--config", str(cfg), "--submissions", str(tmp_path), "--quiet"], tiny_dir),
        "dry-run": (["dry-run", str(sub), "--config", str(cfg)], tiny_dir / "dry-runs"),  # its own store
        "check-baselines": (["check-baselines", "--config", str(cfg), "--expected", str(expected)], tiny_dir),
        "references-import": (["references", "import", str(tmp_path / "refs.npz"), "--config", str(cfg)], tiny_dir),
        "rescore": (["rescore", str(run_dir)], run_dir),
        "leaderboard-reveal": (["leaderboard", str(run_dir), "--reveal-private"], run_dir),
    }


@pytest.mark.parametrize("command", ["run", "score", "dry-run", "check-baselines", "references-import", "rescore",
                                     "leaderboard-reveal"])
def test_a_second_writer_gets_a_one_line_error_naming_the_holder(tmp_path, holder, capsys, command):
    argv, run_dir = _commands(tmp_path)[command]
    proc = holder(run_dir)
    before = sorted(p.name for p in run_dir.iterdir())
    started = time.monotonic()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {run_dir.resolve()} is being written by another process (pid {proc.pid}, "
                             "`holder for a test`, started 20")
    assert err[0].endswith("wait for it to finish or stop it, then run this again")
    assert time.monotonic() - started < 10, "it must fail at once, not after preparing the competition"
    assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written


def test_a_sigkilled_holder_leaves_the_folder_free(tmp_path, holder, capsys):
    run_dir = tmp_path / "ce713d5"
    shutil.copytree(OLD_STORE, run_dir)
    proc = holder(run_dir)
    assert lock_holder(run_dir)["pid"] == proc.pid
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert lock_holder(run_dir) is None  # free by construction: nobody clears anything
    assert main(["rescore", str(run_dir)]) == 0
    assert "rescored 4 submissions" in capsys.readouterr().out


def test_the_lock_is_reentrant_in_a_process_and_released_after(tmp_path):
    """check-baselines runs a competition under its own lock: the inner block must not deadlock."""
    with writer_lock(tmp_path, command="outer"):
        with writer_lock(tmp_path, command="inner"):
            assert lock_holder(tmp_path)["command"] == "outer"
        assert "FolderLockedError" in _take_in_another_process(tmp_path)  # still held by the outer block
    assert lock_holder(tmp_path) is None and _take_in_another_process(tmp_path) == ""


def _take_in_another_process(run_dir: Path) -> str:
    code = "import sys\nfrom harness.results.lock import writer_lock\nwith writer_lock(sys.argv[1]):\n    pass\n"
    out = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": _root()}, timeout=60)
    return out.stderr
