"""The time cap: the competition's budget on every task, measured as runs are scored, widened by
the measured run-time noise; and a participant's over-cap allowance, which never changes a verdict."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from harness.cli import build_parser
from harness.compete.executors import make_executor
from harness.compete.runner import dry_run, prepare, timing_noise
from harness.config import COMPETITION_RETAIN_EPOCHS, load_config
from harness.errors import ConfigError, HarnessError

TINY = Path(__file__).parent / "data" / "tiny.yaml"
QUIET = {"progress": False, "log": lambda _: None}
BUSY = """
import time
def unlearning(net, retain_loader, forget_loader, val_loader):
    start = time.monotonic()
    while time.monotonic() - start < {seconds}:
        pass
"""


def tiny(tmp_path: Path, **overrides):
    return load_config(TINY, overrides={"output.dir": str(tmp_path / "runs"), **overrides})


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_the_default_allows_the_competitions_six_retain_epochs():
    """0.2 of the organizers' 30-epoch retrain is 6 epochs over retain; the 15-epoch default gets 0.4."""
    cfg = load_config()
    assert COMPETITION_RETAIN_EPOCHS == 0.2 * 30
    assert cfg.time_cap.share(cfg.recipe.epochs) * cfg.recipe.epochs == pytest.approx(6.0)
    assert cfg.time_cap.share(cfg.recipe.epochs) == pytest.approx(0.4)


@pytest.mark.parametrize("name", ["kaggle", "casia-surf", "utkface", "cifar10", "csv"])
def test_every_layout_config_gets_the_same_budget(name):
    cfg = load_config(f"configs/{name}.yaml")
    assert cfg.time_cap.share(cfg.recipe.epochs) * cfg.recipe.epochs == pytest.approx(6.0)


def test_a_fraction_in_a_file_replaces_the_included_budget(tmp_path):
    path = write(tmp_path / "f.yaml", "time_cap: {fraction: 0.25}\n")
    cfg = load_config(path)
    assert cfg.time_cap.retain_epochs is None and cfg.time_cap.share(15) == 0.25


@pytest.mark.parametrize("text, match", [
    ("time_cap: {fraction: 0.2, retain_epochs: 6}\n", r"f\.yaml: keys 'time_cap\.retain_epochs' \(6\) and 'time_cap\.fraction' \(0\.2\) are alternatives"),
    ("time_cap: {retain_epochs: 0}\n", r"f\.yaml: key 'time_cap\.retain_epochs' must be a number above 0"),
    ("time_cap: {noise_runs: 1}\n", r"f\.yaml: key 'time_cap\.noise_runs' must be 0 \(no noise margin\) or at least 2, got 1"),
    ("time_cap: {solo_retrains: 0}\n", r"f\.yaml: key 'time_cap\.solo_retrains' must be at least 1"),
])
def test_a_bad_budget_fails_at_load_naming_file_and_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path / "f.yaml", text))


def test_timing_noise_is_the_p99_of_a_files_slowest_run_over_the_median():
    """A file fails on any one run past the cap: the margin lets an honest file of N runs through
    99 times in 100, so it widens with N; never below the sample's own p99."""
    rng = np.random.default_rng(0)
    times = np.exp(rng.normal(0.0, 0.1, size=4000))
    one, sixteen, many = timing_noise(times, 1), timing_noise(times, 16), timing_noise(times, 512)
    assert one == pytest.approx(np.percentile(times, 99) / np.median(times) - 1, abs=0.01)
    assert one < sixteen < many
    worst = np.exp(rng.normal(0.0, 0.1, size=(2000, 16))).max(axis=1)
    assert np.mean(worst <= 1 + sixteen) == pytest.approx(0.99, abs=0.01)
    assert timing_noise([1.0, 1.0], 16) == 0.0
    assert timing_noise([2.0]) == 0.0 and timing_noise([]) == 0.0


def test_the_measured_cap_folds_in_the_noise_of_a_fixed_submission_timed_as_runs_are(tmp_path):
    """Solo retrains run side by side, pinned like sandboxes; a fixed submission's repeated run
    times widen the cap by their p99 spread; all of it cached per hardware."""
    cfg = tiny(tmp_path, **{"time_cap.seconds": None, "time_cap.solo_retrains": 2, "references.solo_first": 2,
                            "time_cap.noise_runs": 4, "time_cap.retain_epochs": 1})
    with make_executor(cfg.executor) as executor:
        prep = prepare(cfg, executor=executor, **QUIET)
        basis = prep.time_cap_basis
        assert basis["hardware"].endswith("pinned beside busy slots")
        assert len(basis["retrain_times_s"]) == 2 and len(basis["noise_run_times_s"]) == 4
        assert basis["noise_probe"] == "a fine-tune of the budget's 1 retain epochs"
        assert all(t > 0 for t in basis["noise_run_times_s"])
        expected = 0.5 * np.median(basis["retrain_times_s"]) * (1 + timing_noise(basis["noise_run_times_s"], 4))
        assert prep.time_cap_s == pytest.approx(expected) and basis["retain_epochs"] == 1.0
        said: list[str] = []
        again = prepare(cfg, executor=executor, progress=False, log=said.append)
    assert again.time_cap_s == prep.time_cap_s
    assert not any("timing 4 runs" in line for line in said), "the noise is measured once per hardware"


def test_over_cap_allowance_keeps_the_timeout_and_says_what_the_runs_would_score(tmp_path):
    slow = write(tmp_path / "slow.py", BUSY.format(seconds=0.8))
    cfg = tiny(tmp_path, **{"time_cap.seconds": 0.4})
    with make_executor(cfg.executor) as executor:
        strict = dry_run(slow, cfg, executor=executor, **QUIET)
        allowed = dry_run(slow, cfg, executor=executor, over_cap_allowance=3.0, **QUIET)
    assert strict["status"] == "timeout" and strict["final_score"] is None and strict["over_cap"] is None
    assert allowed["status"] == "timeout" and allowed["final_score"] is None, "the organizers' verdict stands"
    over = allowed["over_cap"]
    assert [run["run"] for run in over["runs_over_cap"]] == [0, 1, 2, 3], "every run went on past the cap"
    assert all(0.3 < run["over_s"] < 0.9 and run["ratio"] > 1.5 for run in over["runs_over_cap"])
    assert over["would_score"] is not None and over["would_score"]["retain_ratio"] > 0
    assert allowed["key"] != strict["key"], "the allowance changes the outcome, so it keys the stored runs"


def test_runs_past_the_allowance_are_killed_and_no_score_is_shown(tmp_path):
    slow = write(tmp_path / "slower.py", BUSY.format(seconds=30))
    cfg = tiny(tmp_path, **{"time_cap.seconds": 0.4})
    record = dry_run(slow, cfg, over_cap_allowance=2.0, **QUIET)
    assert record["status"] == "timeout" and record["over_cap"]["would_score"] is None
    assert "did not finish within 2x the cap" in record["over_cap"]["note"]
    assert record["run_times_s"][0] < 5, "killed near 2x the cap, not left to run its 30 s"


def test_the_allowance_is_a_dry_run_flag_only():
    parser = build_parser()
    assert parser.parse_args(["dry-run", "x.py", "--over-cap-allowance", "3x"]).over_cap_allowance == 3.0
    with pytest.raises(SystemExit):
        parser.parse_args(["dry-run", "x.py", "--over-cap-allowance", "1x"])
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--over-cap-allowance", "3x"])
    with pytest.raises(HarnessError, match="above 1"):
        dry_run("x.py", load_config(), over_cap_allowance=0.5)
