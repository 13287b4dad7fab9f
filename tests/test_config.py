from pathlib import Path

import pytest

from harness.config import Config, load_config
from harness.errors import ConfigError
from harness.registry import Registry


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_load_config_default_is_the_embedded_task():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.task.dataset == "synthetic-faces"
    assert cfg.model.name == "small-cnn"


def test_load_config_include_merges_sections(tmp_path):
    write(tmp_path / "base.yaml", "version: 1\nname: base\nrecipe: {epochs: 3, lr: 0.5}\n")
    top = write(tmp_path / "top.yaml", "include: base.yaml\nname: top\nrecipe: {epochs: 7}\n")
    cfg = load_config(top)
    assert (cfg.name, cfg.recipe.epochs, cfg.recipe.lr) == ("top", 7, 0.5)


def test_load_config_overrides_win_over_yaml(tmp_path):
    path = write(tmp_path / "c.yaml", "version: 1\nreferences: {n_models: 4}\n")
    assert load_config(path, overrides={"references.n_models": 9}).references.n_models == 9


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("version: 1\nrecipe: {epoch: 3}\n", r"unknown key 'recipe.epoch'; did you mean 'epochs'\?"),
        ("version: 1\nrecipe: {epochs: three}\n", r"key 'recipe.epochs' must be an integer, got 'three'"),
        ("version: 1\nsandbox: {backend: dockr}\n", r"key 'sandbox.backend' must be one of"),
        ("version: 2\n", r"key 'version' is 2"),
        ("- a\n- b\n", r"top level must be a mapping"),
        ("a: [\n", r"not valid YAML"),
        ("version: 1\nexecutor: {runs_per_unit: 0}\n", r"key 'executor.runs_per_unit' must be at least 1"),
    ],
    ids=["unknown-key", "wrong-type", "bad-choice", "newer-version", "not-a-mapping", "bad-yaml", "out-of-range"],
)
def test_load_config_errors_name_the_key_and_file(tmp_path, text, match):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert str(path.name) in str(info.value)


def test_load_config_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_include_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "include: b.yaml\n")
    write(tmp_path / "b.yaml", "include: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle"):
        load_config(tmp_path / "a.yaml")


def test_config_hash_changes_with_content():
    assert load_config().hash() != load_config(overrides={"seed": 1}).hash()


def test_registry_unknown_name_suggests_closest():
    reg: Registry[int] = Registry("dataset")
    reg.add("synthetic-faces", 1)
    with pytest.raises(ValueError, match=r"unknown dataset 'synth-face'; did you mean 'synthetic-faces'\?"):
        reg.get("synth-face")


def test_registry_duplicate_name_fails():
    reg: Registry[int] = Registry("model")
    reg.add("a", 1)
    with pytest.raises(ValueError, match=r"duplicate model name 'a'"):
        reg.add("a", 2)


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_load_and_name_valid_layout_options(path):
    from harness.data.layouts import LAYOUTS

    cfg = load_config(path)
    layout = LAYOUTS.get(cfg.task.dataset)
    assert set(cfg.task.options) <= set(layout.options)


def test_config_hash_ignores_which_entries_are_scored_and_where():
    base = load_config()
    same = load_config(overrides={"submissions.baselines": ["do_nothing"], "submissions.dir": None, "output.dir": "/x"})
    assert base.hash() == same.hash()
    assert base.hash() != load_config(overrides={"submissions.n_runs": 3}).hash()


def test_executor_shorthand_names_the_kind(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("executor: ray\n")
    assert load_config(path).executor.kind == "ray"
    cfg = load_config(path, overrides={"executor.address": "127.0.0.1:6379"})
    assert (cfg.executor.kind, cfg.executor.address) == ("ray", "127.0.0.1:6379")
