"""The bundled baselines: one plain submission file per method under baselines/, by name.

A baseline is registered by adding baselines/<name>.py; files starting with "_" are not
baselines. The config lists which ones a competition scores (submissions.baselines) and which are
references exempt from the time cap (submissions.reference_baselines).
"""

from __future__ import annotations

from pathlib import Path

from harness.config import shipped_dir
from harness.registry import Registry

BASELINES_DIR = shipped_dir("baselines")

BASELINES: Registry[Path] = Registry("baseline")
for _path in sorted(BASELINES_DIR.glob("*.py")):
    if not _path.name.startswith("_"):
        BASELINES.add(_path.stem, _path)


def baseline_path(name: str) -> Path:
    """The submission file of baseline `name`; an unknown name lists the baselines and the closest one."""
    return BASELINES.get(name)
