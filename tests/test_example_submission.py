"""The repository's own example submission runs on every shipped config, in each one's batch format.

Every configs/*.yaml is built as shipped (its model, batch size, batch format, image size), on a
dataset generated in its layout where the config reads files; the example's unlearning() then
runs as the worker calls it. test_runner_dry_run dry-runs it with tuple batches in the sandbox.
"""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from harness.config import load_config
from harness.data.loaders import make_loader
from harness.data.task import build_task
from harness.learn.models import build_model, validate_state_dict
from kaggle_layout import write_kaggle_layout
from test_data_layouts import make_cifar, make_surf, write_image

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "submissions" / "example_submission.py"
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def _utkface(root: Path) -> dict:
    for i in range(60):
        write_image(root / f"{20 + i % 50}_0_0_2017{i:04d}.jpg.chip.jpg", seed=i, fmt="JPEG")
    return {}


def _csv(root: Path) -> dict:
    rows = []
    for i in range(30):
        write_image(root / "imgs" / f"{i}.png", seed=i)
        rows.append({"path": f"imgs/{i}.png", "person_id": f"p{i}", "age": 20 + i})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return {"task.path": str(root / "manifest.csv")}


def _kaggle(root: Path) -> dict:
    write_kaggle_layout(root, size=32)
    return {"model.checkpoint": None}  # the organizers' checkpoint is not here: a fresh model of its architecture


def _cifar10(root: Path) -> dict:
    make_cifar(root)
    return {"task.options.verify_md5": False}


# config -> how to generate its data here (None: the embedded synthetic faces, nothing to read)
DATASETS = {
    "default": None,
    "ci": None,
    "ci-docker": None,
    "kaggle": _kaggle,
    "casia-surf": lambda root: make_surf(root) or {},
    "utkface": _utkface,
    "cifar10": _cifar10,
    "csv": _csv,
}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location("example_submission", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_shipped_config_is_covered():
    assert sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")) == sorted(DATASETS)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_example_submission_runs_on_the_shipped_config(name, tmp_path):
    overrides = {"output.dir": str(tmp_path / "runs")}
    make = DATASETS[name]
    if make is not None:
        overrides |= {"task.path": str(tmp_path / "data")}
        overrides |= make(tmp_path / "data")
    cfg = load_config(ROOT / "configs" / f"{name}.yaml", overrides=overrides)
    task = build_task(cfg.task)
    module = _load(EXAMPLE)
    batch_format = getattr(module, "BATCH_FORMAT", None) or cfg.task.batch_format  # as the worker picks it
    torch.manual_seed(0)
    original = build_model(cfg.model.name, num_classes=cfg.model.num_classes, in_channels=int(task.images.shape[1]))
    net = copy.deepcopy(original).train()
    loaders = [make_loader(task.arrays(split), batch_size=cfg.task.batch_size, shuffle=True, batch_format=batch_format, seed=0)
               for split in ("retain", "forget", "val")]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        returned = module.unlearning(net, *loaders)
    finally:
        torch.set_num_threads(threads)
    model = returned if isinstance(returned, nn.Module) else net
    state = model.state_dict()
    assert validate_state_dict(original.state_dict(), state) is None
    assert not all(torch.equal(state[k], v) for k, v in original.state_dict().items()), "the example changed nothing"
