import json

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.scoring import metric
from harness.scoring.metric_report import format_metric_report, metric_report


@pytest.fixture
def confs(tmp_path):
    rng = np.random.default_rng(0)
    mu = rng.normal(0, 2, size=30)
    u = mu + 0.3 + rng.normal(size=(8, 30))
    r = mu + rng.normal(size=(8, 30))
    np.save(tmp_path / "u.npy", u)
    np.save(tmp_path / "r.npy", r)
    return tmp_path / "u.npy", tmp_path / "r.npy", u, r


def test_metric_report_scores_and_calibrates(confs):
    u_path, r_path, u, r = confs
    report = metric_report(u_path, r_path)
    assert report["forget_quality"] == metric.forget_quality(u, r)
    assert report["ci"][0] <= report["forget_quality"] <= report["ci"][1]
    assert (report["n_models"], report["n_examples"], report["higher_is_better"]) == (8, 30, True)
    assert sum(b["count"] for b in report["buckets"]) == 30
    assert report["noise_floor"] == metric.noise_floor(r[:4], r[4:])
    assert "a perfect unlearner scores about 0.18-0.20" in report["calibration"]
    json.dumps(report)  # the CLI's --json output


def test_format_metric_report_names_the_numbers(confs):
    text = format_metric_report(metric_report(*confs[:2]))
    assert text.startswith("forgetting quality F = ")
    assert "higher is better" in text and "calibration" in text


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "missing.npy", r"unlearned file '.*missing.npy' does not exist"),
        (lambda p: _save(p / "flat.npy", np.zeros(5)), r"must hold a 2-D float array .* got a 1-D float64"),
        (lambda p: _save(p / "ints.npy", np.zeros((8, 30), dtype=int)), r"got a 2-D int64 array"),
        (lambda p: _savez(p / "a.npz"), r"is an .npz archive \(arrays: confs\)"),
        (lambda p: _text(p / "junk.npy"), r"is not a readable .npy array"),
        (lambda p: _save(p / "narrow.npy", np.zeros((8, 29))), r"unlearned \(8, 29\) and retrained \(8, 30\) must have the same shape"),
        (lambda p: _save(p / "nan.npy", np.full((8, 30), np.nan)), r"unlearned_confs contains 240 NaN/inf"),
    ],
    ids=["missing", "1d", "ints", "npz", "junk", "shape-mismatch", "nan"],
)
def test_metric_report_rejects_bad_files(confs, make, match):
    _, r_path, _, _ = confs
    with pytest.raises(HarnessError, match=match):
        metric_report(make(r_path.parent), r_path)


def _save(path, array):
    np.save(path, array)
    return path


def _savez(path):
    np.savez(path, confs=np.zeros((8, 30)))
    return path


def _text(path):
    path.write_text("not an array\n")
    return path
