"""Competition state the boards can trust: disjoint private forget sets, one original and one cap
per competition, a cap cache keyed by the hardware, teams unique across entry kinds."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.compete.check_baselines import check_baselines
from harness.compete.executors import make_executor
from harness.compete.runner import board_task, discover_entries, prepare, run_competition, time_cap_file
from harness.config import load_config
from harness.errors import HarnessError, SubmissionError
from harness.learn.training import hardware_identity
from harness.results.store import Store
from kaggle_layout import write_kaggle_layout

ROOT = Path(__file__).resolve().parent.parent
TINY = Path(__file__).parent / "data" / "tiny.yaml"
QUIET = {"progress": False, "log": lambda _: None}
RAISES = "def unlearning(net, retain_loader, forget_loader, val_loader):\n    raise RuntimeError('boom')\n"


def tiny(tmp_path: Path, **overrides):
    return load_config(TINY, overrides={"output.dir": str(tmp_path / "runs"), **overrides})


def kaggle_config(tmp_path: Path, *, forget: dict | None = None) -> Path:
    """configs/kaggle.yaml on a generated dataset in its layout, shrunk to seconds."""
    if not (tmp_path / "data" / "retain.csv").exists():
        write_kaggle_layout(tmp_path / "data")
    cfg = {
        "include": str(ROOT / "configs" / "kaggle.yaml"),
        "task": {"path": str(tmp_path / "data"), "options": {"image_size": 16},
                 "forget": {"count": None, **(forget or {})}},  # forget.csv stands
        "model": {"name": "small-cnn", "checkpoint": None},
        "recipe": {"epochs": 2, "lr": 0.001, "weight_decay": 0.0},
        "references": {"n_models": 4, "training_path": "loop"},
        "time_cap": {"seconds": 60},
        "submissions": {"n_runs": 4, "dir": None, "baselines": ["do_nothing"]},
        "output": {"dir": str(tmp_path / "runs")},
    }
    path = tmp_path / "kaggle-small.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_private_board_on_the_kaggle_layout_without_its_forget_set_fails_in_one_line(tmp_path, capsys):
    """Must show (issue 11): forget.csv is the layout's own forget set; no seed redraws it, so the
    private board needs one given, and the run says which key to set before training anything."""
    config = kaggle_config(tmp_path)
    assert main(["run", str(config), "--private", "--unsafe-no-sandbox", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: the private leaderboard needs a forget set disjoint from the public one")
    assert "set task.forget.private_index_file" in err
    assert not (tmp_path / "runs" / "kaggle").exists(), "the refused run left a competition folder behind"


def test_private_board_on_the_kaggle_layout_with_its_forget_set_is_disjoint_and_says_so(tmp_path, capsys):
    """With task.forget.private_index_file the two boards forget disjoint sets, share one original
    model and one time cap, and the run reports the forget sets as disjoint."""
    retain = write_kaggle_layout(tmp_path / "data")["retain"]  # the same files kaggle_config writes
    private = [i for i in retain if i.split("-")[0] in {"0000", "0001", "0002"}]  # three whole persons
    (tmp_path / "data" / "private_forget.txt").write_text("\n".join(private) + "\n")
    config = kaggle_config(tmp_path, forget={"private_index_file": "private_forget.txt"})
    assert main(["run", str(config), "--private", "--unsafe-no-sandbox"]) == 0
    err = capsys.readouterr().err
    assert f"forget sets: public 10 images, private {len(private)} images, disjoint (none shared)" in err

    cfg = load_config(config)
    public, secret = (set(board_task(cfg, board).arrays("forget")["image_id"]) for board in ("public", "private"))
    assert secret == set(private) and not public & secret
    store = Store(cfg.run_dir / "results.sqlite")
    assert store.get_meta("forget_sets") == {"public": 10, "private": len(private), "shared": 0}
    assert "disjoint from the public forget set" in store.get_meta("task_private")
    assert {lb: cap["time_cap_s"] for lb, cap in store.competition().time_caps.items()} == {"public": 60.0, "private": 60.0}
    assert len(list((cfg.run_dir / "cache").glob("original-*.safetensors"))) == 1, "each board trained its own original"
    for board, size in (("public", 10), ("private", len(private))):
        assert store.reference_confs(board).shape == (4, size)


def test_time_cap_cached_on_other_hardware_is_not_used_and_says_so(tmp_path):
    """A cap measured on another CPU (same task and recipe) is never used silently: it is measured
    here, the log names the other machine, and this machine's own cached cap is reused after."""
    cfg = tiny(tmp_path, **{"time_cap.seconds": None})
    cache = cfg.run_dir / "cache"
    with make_executor(cfg.executor) as executor:
        own = prepare(cfg, executor=executor, **QUIET)
        key = own.references.cache_key
        for stale in cache.glob(f"time-cap-{key}*.json"):
            stale.unlink()
        elsewhere = {"median_retrain_s": 999.0, "retrain_times_s": [999.0], "hardware": "Another CPU x64 cores"}
        other = {**hardware_identity(own.device), "cpu_model": "Another CPU", "cores": 64}
        time_cap_file(cache, key, other).write_text(json.dumps(elsewhere))
        (cache / f"time-cap-{key}.json").write_text(json.dumps(elsewhere))  # as the cache was keyed before
        said: list[str] = []
        measured = prepare(cfg, executor=executor, progress=False, log=said.append)
        assert measured.time_cap_s != pytest.approx(0.2 * 999.0)
        assert measured.time_cap_basis["hardware_identity"] == hardware_identity(own.device)
        assert any("cached for this task on other hardware" in line and "Another CPU x64 cores" in line for line in said)
        said.clear()
        again = prepare(cfg, executor=executor, progress=False, log=said.append)
    assert again.time_cap_s == measured.time_cap_s
    assert any(line.startswith("time cap:") and line.endswith("; cached") for line in said)


def test_a_submission_file_named_like_a_baseline_team_is_refused(tmp_path):
    subs = tmp_path / "submissions"
    subs.mkdir()
    (subs / "baseline:finetune.py").write_text(RAISES)
    with pytest.raises(SubmissionError, match=r"named like a baseline's team 'baseline:finetune'; rename the file"):
        discover_entries(tiny(tmp_path), submissions_dir=subs)


def test_check_baselines_matches_the_baseline_not_a_submission_named_like_it(tmp_path):
    """A participant's finetune.py (failing) and retrain.py sit beside the baselines of those names:
    check-baselines reads the baselines' own rows."""
    subs = tmp_path / "submissions"
    subs.mkdir()
    (subs / "finetune.py").write_text(RAISES)
    (subs / "retrain.py").write_text(RAISES)
    cfg = tiny(tmp_path)
    table = run_competition(cfg, submissions_dir=subs, **QUIET).set_index("team")
    assert table.loc["finetune", "status"] == "exception" and table.loc["baseline:finetune", "status"] == "ok"
    spec = {"oracle": "finetune", "do_nothing": "do_nothing", "oracle_margin": -1.0, "baselines": {
        name: {f: {"value": float(table.loc[f"baseline:{name}", f]), "tolerance": 1e-9}
               for f in ("final_score", "forget_quality", "retain_acc", "test_acc")}
        for name in ("do_nothing", "finetune")}}
    expected = tmp_path / "expected.yaml"
    expected.write_text(yaml.safe_dump(spec))
    report = check_baselines(cfg, expected=expected)
    assert report["ok"], report
    assert {c["status"] for c in report["checks"] if c["baseline"] == "finetune"} == {"ok"}


def test_store_refuses_a_team_stored_as_another_kind(tmp_path):
    store = Store(tmp_path / "results.sqlite")
    path = tmp_path / "x.py"
    path.write_text(RAISES)
    store.add_submission(path, team="baseline:retrain", kind="oracle", exempt=True)
    path.write_text(textwrap.dedent(RAISES) + "# another version\n")
    with pytest.raises(HarnessError, match="team 'baseline:retrain' is already stored as kind 'oracle', not 'submission'"):
        store.add_submission(path, team="baseline:retrain", kind="submission")
