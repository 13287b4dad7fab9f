"""check-baselines finds the config its expected file was made for (the runs themselves: test_runner.py)."""

from pathlib import Path

import pytest
import yaml

from harness.cli import main
from harness.compete.check_baselines import DEFAULT_EXPECTED, expected_config, expected_spec, load_expected
from harness.config import load_config
from harness.errors import ConfigError

CONFIGS = Path(__file__).parent.parent / "configs"


def test_shipped_expected_file_names_the_ci_config_and_bare_check_uses_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from any folder, as after `pip install .`
    spec = load_expected()
    assert spec["config"] == "configs/ci.yaml"
    cfg = expected_config(None, spec)
    assert cfg.name == "ci" and cfg.hash() == load_config(CONFIGS / "ci.yaml").hash()


def test_check_baselines_config_other_than_the_expected_files_is_a_one_line_error(capsys):
    assert main(["check-baselines", "--config", str(CONFIGS / "default.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{DEFAULT_EXPECTED} was made for configs/ci.yaml (config hash " in err
    assert "default.yaml (config hash " in err and "drop --config to check configs/ci.yaml" in err


def test_expected_config_accepts_a_config_that_hashes_the_same(tmp_path):
    copy = tmp_path / "mine.yaml"
    copy.write_text(f"include: {CONFIGS / 'ci.yaml'}\nexecutor: {{workers: 1}}\n")
    cfg = load_config(copy)
    assert expected_config(cfg, load_expected()) is cfg


def test_expected_file_without_config_needs_one(tmp_path):
    path = tmp_path / "e.yaml"
    spec = load_expected()
    del spec["config"]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"e.yaml names no config; add 'config: <the config it was made for>' to it, or pass --config"):
        expected_config(None, load_expected(path), expected=path)
    cfg = load_config()
    assert expected_config(cfg, load_expected(path), expected=path) is cfg  # an older file, with --config


def test_expected_spec_writes_the_config_and_floored_tolerances(tmp_path):
    values = {"finetune": {"final_score": 0.04449, "forget_quality": 0.04, "retain_acc": 0.9, "test_acc": 0.5}}
    seeds = {"finetune": {"final_score": [0.0, 0.02, 0.04], "forget_quality": [0.04, 0.04, 0.04],
                          "retain_acc": [0.90, 0.91, 0.92], "test_acc": [0.5, 0.5, 0.5]}}
    spec = expected_spec(values, seeds, config="mine.yaml")
    figures = spec["baselines"]["finetune"]
    assert spec["config"] == "mine.yaml" and figures["final_score"] == {"value": 0.0445, "tolerance": 0.08}
    assert figures["forget_quality"]["tolerance"] == 0.01 and figures["retain_acc"]["tolerance"] == 0.05
    # a relative config is found beside the expected file first
    (tmp_path / "mine.yaml").write_text("name: mine\n")
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(spec))
    assert expected_config(None, load_expected(tmp_path / "e.yaml"), expected=tmp_path / "e.yaml").name == "mine"
