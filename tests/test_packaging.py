"""What `pip install .` ships: every package under harness/, and configs/ and baselines/ as data
(scripts/ci_install_check.sh installs it and runs from another folder)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_pyproject_lists_every_package_under_harness():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "harness").rglob("__init__.py")}
    mapped = setuptools["package-dir"]
    assert set(setuptools["packages"]) == on_disk | set(mapped)
    assert {name: (ROOT / folder).is_dir() for name, folder in mapped.items()} == {
        "harness._configs": True, "harness._baselines": True}
    assert setuptools["package-data"] == {"harness._configs": ["*.yaml"], "harness._baselines": ["*.py", "*.yaml"]}
