"""The shipped re-implementations of top competition entries (submissions/examples/*.py)."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import pytest

from harness.config import load_config
from harness.compete.executors import make_executor
from harness.compete.runner import dry_run

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "submissions" / "examples"
EXAMPLES = sorted(EXAMPLES_DIR.glob("*.py"))
TINY = Path(__file__).parent / "data" / "tiny.yaml"
SIGNATURE = ["net", "retain_loader", "forget_loader", "val_loader"]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_examples_are_shipped():
    assert [path.stem for path in EXAMPLES] == ["prune_retrain_quantize", "reset_distill", "transposed_retrain"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_declares_unlearning_and_maps_every_hyperparameter(path):
    module = _load(path)
    assert list(inspect.signature(module.unlearning).parameters) == SIGNATURE
    assert not hasattr(module, "BATCH_FORMAT"), "examples use the Kaggle interface (dict batches)"
    doc = module.__doc__ or ""
    for section in ("Source:", "Hyperparameters, published -> here:", "Budget:", "Cost:"):
        assert section in doc
    assert "kaggle.com/competitions/neurips-2023-machine-unlearning" in doc or "deepunlearn" in doc
    constants = {key: value for key, value in vars(module).items()
                 if re.fullmatch(r"[A-Z][A-Z0-9_]*", key) and isinstance(value, (int, float))}
    assert constants, "hyperparameters are module-level constants"
    stated = {key: [float(v) for v in re.findall(rf"\b{key} = (-?[0-9.]+(?:e-?[0-9]+)?)", doc)] for key in constants}
    assert {key: value for key, value in constants.items() if float(value) not in stated[key]} == {}


@pytest.fixture(scope="module")
def tiny_competition(tmp_path_factory):
    cfg = load_config(TINY, overrides={"output.dir": str(tmp_path_factory.mktemp("runs"))})
    with make_executor(cfg.executor) as executor:
        yield cfg, executor


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_ok_in_the_sandbox_on_a_tiny_task(path, tiny_competition):
    cfg, executor = tiny_competition
    record = dry_run(path, cfg, executor=executor, progress=False, log=lambda _: None)
    assert record["status"] == "ok", record
