import dataclasses
from pathlib import Path

import pytest

from harness.config import Config, ForgetConfig, SubmissionsConfig, check_config, load_config, shipped_dir
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
    path = write(tmp_path / "c.yaml", "version: 1\nreferences: {n_models: 4}\nsubmissions: {n_runs: 4}\n")
    assert load_config(path, overrides={"references.n_models": 9, "submissions.n_runs": 9}).references.n_models == 9


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


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("submissions: {n_runs: 8}\n",
         r"keys 'submissions.n_runs' \(8\) and 'references.n_models' \(16\) must be equal: .* --n-runs and --n-models"),
        ("submissions: {n_runs: 1}\nreferences: {n_models: 1}\n",
         r"key 'references.n_models' must be at least 2 \(the metric compares two distributions\), got 1; fix it in the config's references section"),
        ("time_cap: {solo_retrains: 0}\n", r"key 'time_cap.solo_retrains' must be at least 1, got 0"),
        ("time_cap: {fraction: 0}\n", r"key 'time_cap.fraction' must be a number above 0 \(a share of one solo retrain\), or null, got 0.0"),
        ("time_cap: {retain_epochs: -1}\n", r"key 'time_cap.retain_epochs' must be a number above 0 .*, got -1.0"),
        ("sandbox: {memory_gb: 0}\n", r"key 'sandbox.memory_gb' must be a number of GiB above 0, got 0.0; fix it in the config's sandbox section"),
        ("executor: {kind: rey}\n", r"key 'executor.kind' must be one of 'local', 'ray', got 'rey' \(did you mean 'ray'\?\)"),
        ("model: {name: resnet19}\n", r"key 'model.name' must be one of 'resnet18', 'small-cnn', got 'resnet19' \(did you mean 'resnet18'\?\)"),
        ("task: {dataset: kagle}\n", r"key 'task.dataset' must be one of .*'kaggle'.*, got 'kagle' \(did you mean 'kaggle'\?\)"),
        ("recipe: {lr: 0}\n", r"key 'recipe.lr' must be a number above 0, got 0.0"),
        ("task: {forget: {fraction: 1.5}}\n", r"key 'task.forget.fraction' must be a number in \(0, 1\], or null, got 1.5"),
        ("evaluation: {instantiation: per_run_original}\n",
         r"key 'evaluation.instantiation' must be one of 'competition', 'per_run_originals', 'fresh_references', "
         r"got 'per_run_original' \(did you mean 'per_run_originals'\?\); fix it in the config's evaluation section"),
    ],
    ids=["n_runs-vs-n_models", "n_models", "solo_retrains", "fraction", "retain_epochs", "memory_gb", "executor",
         "model", "dataset", "lr", "forget-fraction", "instantiation"],
)
def test_every_constraint_fails_at_load_naming_file_key_rule_value_and_fix(tmp_path, text, match):
    with pytest.raises(ConfigError, match=r"bad\.yaml: " + match):
        load_config(write(tmp_path / "bad.yaml", text))


def test_every_shipped_default_meets_its_own_constraint():
    check_config(Config())


def test_a_config_built_in_code_is_checked_as_a_loaded_one():
    cfg = dataclasses.replace(Config(), submissions=SubmissionsConfig(n_runs=4))
    with pytest.raises(ConfigError, match=r"keys 'submissions.n_runs' \(4\) and 'references.n_models' \(512\) must be equal"):
        check_config(cfg)


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
    assert base.hash() != load_config(overrides={"submissions.n_runs": 3, "references.n_models": 3}).hash()


def test_executor_shorthand_names_the_kind(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("executor: ray\n")
    assert load_config(path).executor.kind == "ray"
    cfg = load_config(path, overrides={"executor.address": "127.0.0.1:6379"})
    assert (cfg.executor.kind, cfg.executor.address) == ("ray", "127.0.0.1:6379")


def test_load_config_overrides_only_file_starts_from_the_embedded_task(tmp_path):
    """A file holding only overrides is the embedded task with them, not the dataclass defaults
    (ResNet-18, 30 epochs) under the embedded task's name."""
    path = write(tmp_path / "one-worker.yaml", "executor: {workers: 1}\n")
    cfg = load_config(path)
    embedded = load_config()
    assert (cfg.model.name, cfg.recipe.epochs, cfg.executor.workers) == (embedded.model.name, embedded.recipe.epochs, 1)
    assert cfg.hash() == embedded.hash()  # executor settings change nothing stored: same competition


def test_load_config_a_file_naming_another_dataset_inherits_neither_options_nor_forget(tmp_path):
    """task.options and task.forget belong to one dataset: the embedded default's forget.count
    must not replace a layout's own forget set."""
    path = write(tmp_path / "k.yaml", "include: base.yaml\ntask: {dataset: kaggle, path: /data}\n")
    write(tmp_path / "base.yaml", "task: {options: {n_persons: 9}, forget: {count: 16, first_k: true}}\n")
    task = load_config(path).task
    assert task.options == {} and task.forget == ForgetConfig()


def test_load_config_forget_size_in_a_file_replaces_the_included_one(tmp_path):
    write(tmp_path / "base.yaml", "task: {forget: {count: 16, seed: 3}}\n")
    path = write(tmp_path / "top.yaml", "include: base.yaml\ntask: {forget: {fraction: 0.1}}\n")
    forget = load_config(path).task.forget
    assert (forget.count, forget.fraction, forget.seed) == (None, 0.1, 3)


def test_load_config_count_and_fraction_together_is_an_error(tmp_path):
    path = write(tmp_path / "both.yaml", "task: {forget: {count: 4, fraction: 0.1}}\n")
    with pytest.raises(ConfigError, match=r"both.yaml: keys 'task.forget.count' \(4\) and 'task.forget.fraction' \(0.1\) are alternatives"):
        load_config(path)


def test_load_config_names_a_shipped_config_from_any_folder(tmp_path, monkeypatch):
    """`unlearn run configs/ci.yaml` (or `ci`) works outside the checkout, as after `pip install .`."""
    monkeypatch.chdir(tmp_path)
    shipped = shipped_dir("configs") / "ci.yaml"
    for name in ("configs/ci.yaml", "ci.yaml", "ci"):
        cfg = load_config(name)
        assert cfg.name == "ci" and cfg.source == str(shipped)
    write(tmp_path / "ci.yaml", "name: mine\n")
    assert load_config("ci.yaml").name == "mine"  # a file of that name here wins
    with pytest.raises(ConfigError, match=r"config file configs/nope.yaml does not exist; .* shipped config \(casia-surf, ci, "):
        load_config("configs/nope.yaml")


def test_shipped_dir_prefers_the_copy_installed_in_the_package(tmp_path, monkeypatch):
    import harness.config

    (tmp_path / "harness" / "_configs").mkdir(parents=True)
    monkeypatch.setattr(harness.config, "PACKAGE_ROOT", tmp_path / "harness")
    assert shipped_dir("configs") == tmp_path / "harness" / "_configs"
    assert shipped_dir("baselines") == tmp_path / "baselines"  # a source checkout: beside harness/


def test_config_hash_of_the_competition_instantiation_is_the_hash_before_the_key():
    """Stores and baselines/expected.yaml written before `evaluation` existed still match."""
    assert load_config().hash() == "b7e5d0365f864197"
    assert load_config("configs/ci.yaml").hash() == "381dc7a18b42cbca"
    assert load_config(overrides={"evaluation.instantiation": "competition"}).hash() == "b7e5d0365f864197"
    others = {load_config(overrides={"evaluation.instantiation": name}).hash() for name in ("per_run_originals", "fresh_references")}
    assert len(others) == 2 and "b7e5d0365f864197" not in others
