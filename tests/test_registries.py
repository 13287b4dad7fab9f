"""Registries are the one source of names: a new executor or sandbox backend is one file and one
registry line; the config's checks and the CLI's choices take it from the registry at once."""

import importlib.util
import sys
import textwrap

import numpy as np
import pytest

from harness import cli
from harness.compete.executors import EXECUTORS, make_executor
from harness.compete.units import TrainOriginal, train_original
from harness.config import RecipeConfig, backend_names, executor_names, load_config
from harness.errors import ConfigError
from harness.learn.models import ModelSpec
from harness.sandbox.backends import BACKENDS, SandboxUnavailable, resolve_backend

# The whole cost of a new executor: this file, whose decorator is its one registry line.
INLINE_EXECUTOR = '''
import pickle
import tempfile
from pathlib import Path

from harness.compete.executors import EXECUTORS, Executor, Shared


@EXECUTORS.register("inline")
class InlineExecutor(Executor):
    """Each unit in the driver's own process, one after another."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.folder = Path(tempfile.mkdtemp(prefix="inline-executor-"))

    def submit_all(self, fn, units, *, resources=None):
        for unit in units:
            yield unit, fn(unit)

    def share(self, key, value):
        path = self.folder / f"{len(list(self.folder.iterdir()))}.pkl"
        path.write_bytes(pickle.dumps(value))
        return Shared(key=key, path=str(path))

    def unit_threads(self, resources):
        return 1

    def on_every_node(self, fn, arg):
        fn(arg)
        return 1

    def slots(self, resources):
        return 1
'''


def _register(tmp_path, monkeypatch, registry, name, source):
    """Import `source` as a plugin file; its registration lasts for this test only."""
    monkeypatch.setattr(registry, "_items", dict(registry._items))
    path = tmp_path / f"{name}_plugin.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(f"{name}_plugin", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def _unit(executor, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 24)
    images = (rng.normal(size=(24, 3, 8, 8)) + labels[:, None, None, None]).astype(np.float32)
    recipe = RecipeConfig(epochs=1, lr=1e-3, batch_size=8, class_weighted=False)
    return TrainOriginal(spec=ModelSpec("small-cnn", 3, 3), recipe=recipe, seed=seed, device="cpu", threads=1,
                         train=executor.share("registries-test-train", {"image": images, "age_group": labels}), class_weights=(1.0,) * 3)


def test_a_registered_executor_is_chosen_from_yaml_and_the_cli_and_runs_a_unit(tmp_path, monkeypatch):
    assert "inline" not in executor_names()
    config = tmp_path / "c.yaml"
    config.write_text("executor: {kind: inline}\n")
    with pytest.raises(ConfigError, match=r"key 'executor.kind' must be one of 'local', 'ray', got 'inline'"):
        load_config(config)
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--executor", "inline"])

    plugin = _register(tmp_path, monkeypatch, EXECUTORS, "inline", INLINE_EXECUTOR)
    from_yaml = load_config(config)
    args = cli.build_parser().parse_args(["run", "--executor", "inline"])
    from_cli = cli._config(args, executor="executor.kind")
    assert from_yaml.executor.kind == from_cli.executor.kind == "inline"

    with make_executor(from_cli.executor) as executor:
        assert isinstance(executor, plugin.InlineExecutor)
        unit = _unit(executor)
        [(done, result)] = list(executor.submit_all(train_original, [unit]))
    assert done is unit and result["seconds"] > 0
    again = train_original(unit)  # the same unit, called directly: the same weights
    assert result["state"].keys() == again["state"].keys()
    for key, value in result["state"].items():
        np.testing.assert_array_equal(value, again["state"][key])


def test_a_registered_backend_is_a_valid_sandbox_backend_and_says_why_it_is_unavailable(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("sandbox: {backend: jail}\n")
    with pytest.raises(ConfigError, match=r"key 'sandbox.backend' must be one of 'auto', 'bubblewrap', 'docker', 'none'"):
        load_config(config)
    _register(tmp_path, monkeypatch, BACKENDS, "jail", '''
        from harness.sandbox.backends import BACKENDS


        @BACKENDS.register("jail")
        class JailBackend:
            name = "jail"

            @staticmethod
            def available():
                return False, "no jail here"

            @staticmethod
            def unavailable(why):
                return f"{why}; build one"
    ''')
    assert "jail" in backend_names()
    assert load_config(config).sandbox.backend == "jail"
    with pytest.raises(SandboxUnavailable, match=r"sandbox backend 'jail': no jail here; build one"):
        resolve_backend("jail", allow_unsafe_fallback=True)  # named explicitly: never a fallback


def test_config_choices_are_the_registries_names():
    assert executor_names() == EXECUTORS.names() == ["local", "ray"]
    assert backend_names() == ["auto", *BACKENDS.names()]
    executor_flag = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["run"]._actions
                         if a.dest == "executor")
    assert list(executor_flag.choices) == EXECUTORS.names()


# The whole cost of a new lens: this function and its one registry line.
THROWAWAY_LENS = '''
import numpy as np

from harness.scoring.lenses import register_lens


@register_lens("mean_gap", column="gap", title="mean gap", no_difference="0")
def mean_gap(inputs):
    """|mean unlearned - mean retrained| over every model and example."""
    return {"gap": float(abs(inputs.unlearned.mean() - inputs.retrained.mean()))}
'''


def test_a_registered_lens_appears_in_the_store_metric_json_and_every_board(tmp_path, monkeypatch):
    import pandas as pd

    from harness.results.leaderboard import board_columns, write_leaderboard
    from harness.results.store import Store
    from harness.scoring.lenses import LENSES
    from harness.scoring.metric_report import metric_report
    from harness.scoring.scores import LENSES_EXTRA, record_entry_score

    n, s = 6, 20
    rng = np.random.default_rng(0)
    unlearned, retrained = rng.normal(0.5, 1, size=(n, s)), rng.normal(size=(n, s))
    gap = abs(unlearned.mean() - retrained.mean())
    assert "lens_mean_gap" not in board_columns()
    _register(tmp_path, monkeypatch, LENSES, "mean_gap", THROWAWAY_LENS)
    assert "lens_mean_gap" in board_columns()

    run_dir = tmp_path / "run"
    with Store(run_dir / "results.sqlite") as store:
        store.record_competition(config={"name": "lenses"}, config_hash="h", code_version="0")
        store.record_references(leaderboard="public", cache_key="k", confs=retrained, retain_acc=np.full(n, 0.9),
                                test_acc=np.full(n, 0.8), forget_acc=np.full(n, 0.8))
        (tmp_path / "sub.py").write_text("pass\n")
        sid = store.add_submission(tmp_path / "sub.py", team="team")
        for i in range(n):
            store.record_run(sid, leaderboard="public", run_index=i, seed=i, status="ok", seconds=1.0, retain_acc=0.9,
                             test_acc=0.8, forget_acc=0.7, confs=unlearned[i])
        refs = store.references("public")
        record_entry_score(store, sid, leaderboard="public", n_runs=n, references=refs,
                           reference_confs=store.load_array(refs.confs_file), noise_floor=None, time_cap_s=None)
        assert store.get_extra(sid, leaderboard="public", name=LENSES_EXTRA)["mean_gap"] == {"gap": pytest.approx(gap)}
        write_leaderboard(store, run_dir, plots=False)

    board = pd.read_csv(run_dir / "leaderboard_public.csv")
    assert board.loc[0, "lens_mean_gap"] == pytest.approx(gap)
    assert "lens_mean_gap" in (run_dir / "leaderboard_public.md").read_text()
    assert "<th data-col='lens_mean_gap' title='lens_mean_gap'>mean gap</th>" in (run_dir / "site" / "index.html").read_text()
    assert "mean gap" in (run_dir / "site" / "submissions" / f"{sid}.html").read_text()
    np.save(tmp_path / "u.npy", unlearned)
    np.save(tmp_path / "r.npy", retrained)
    shown = metric_report(tmp_path / "u.npy", tmp_path / "r.npy")["lenses"]["mean_gap"]
    assert shown["gap"] == pytest.approx(gap) and shown["no_difference"] == "0"
