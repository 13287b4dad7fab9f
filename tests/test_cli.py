"""The CLI is a thin layer: each command parses, builds the config and calls one library function."""

import json

import numpy as np
import pytest

from harness.cli import main

VECTORS = np.load(__import__("pathlib").Path(__file__).parent / "data" / "metric_vectors.npz")


def test_metric_prints_forget_quality_as_json(tmp_path, capsys):
    np.save(tmp_path / "u.npy", VECTORS["n16_unlearned"])
    np.save(tmp_path / "r.npy", VECTORS["n16_retrained"])
    assert main(["metric", "--unlearned", str(tmp_path / "u.npy"), "--retrained", str(tmp_path / "r.npy"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["forget_quality"] == pytest.approx(float(VECTORS["n16_forget_score"]), abs=0)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: None, r"does not exist"),
        (lambda d: (d / "u.npy").write_text("not numpy"), r"u\.npy"),
    ],
    ids=["missing-file", "malformed-file"],
)
def test_metric_bad_file_is_one_line_error(tmp_path, capsys, make, match):
    make(tmp_path)
    np.save(tmp_path / "r.npy", VECTORS["n16_retrained"])
    code = main(["metric", "--unlearned", str(tmp_path / "u.npy"), "--retrained", str(tmp_path / "r.npy")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ")
    assert __import__("re").search(match, err)


def test_leaderboard_without_store_says_which_folder(tmp_path, capsys):
    assert main(["leaderboard", str(tmp_path)]) == 2
    assert "no results store" in capsys.readouterr().err


def test_dry_run_missing_file_is_one_line_error(tmp_path, capsys):
    assert main(["dry-run", str(tmp_path / "nope.py"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_run_unknown_config_key_names_key_and_file(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("version: 1\nrecipe: {epoch: 3}\n")
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "recipe.epoch" in err and "c.yaml" in err


def test_dry_run_directory_is_one_line_error_naming_it(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    assert main(["dry-run", str(tmp_path / "mine"), "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'mine'} is a directory; pass the path of one .py file in it" in err[0]
