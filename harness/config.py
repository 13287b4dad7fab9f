"""Typed, frozen configuration loaded from YAML.

Precedence: CLI flags > YAML > the embedded default (configs/default.yaml) > dataclass defaults.
A YAML file may `include:` another (paths relative to the including file); the including file's
keys win, merged section by section. A file that includes nothing starts from the embedded
default, so a file holding only overrides (`executor: {workers: 1}`) is the embedded task with
them. Every error names the key and the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from harness.errors import ConfigError

CONFIG_VERSION = 1
PACKAGE_ROOT = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """configs/ or baselines/: the copy installed inside the package (pyproject maps them to
    harness/_configs and harness/_baselines), else the source checkout's, beside harness/."""
    installed = PACKAGE_ROOT / f"_{name}"
    return installed if installed.is_dir() else PACKAGE_ROOT.parent / name


DEFAULT_CONFIG = shipped_dir("configs") / "default.yaml"


# -- constraints: each key declares its rule beside it (scikit-learn's parameter constraints) ----
@dataclass(frozen=True)
class Rule:
    """What a key's value must be: `must` completes "key 'x' must be ..."; a callable `must`
    lists a registry's names when the message is written, after every entry has registered."""

    must: str | Callable[[], str]
    test: Callable[[Any], bool]
    names: Callable[[], Sequence[str]] | None = None  # one_of's choices, for "did you mean"

    def text(self) -> str:
        return self.must() if callable(self.must) else self.must


def rule(must: str, test: Callable[[Any], bool]) -> Rule:
    return Rule(must, test)


def one_of(names: Callable[[], Sequence[str]]) -> Rule:
    """A name in a registry (imported when checked, so the registry is the one list of names)."""
    return Rule(lambda: "one of " + ", ".join(map(repr, names())), lambda v: v in names(), names)


def key(default: Any, constraint: Rule) -> Any:
    """A config field with its constraint."""
    return field(default=default, metadata={"rule": constraint})


def _batch_formats() -> tuple[str, ...]:
    from harness.sandbox.protocol import BATCH_FORMATS

    return BATCH_FORMATS


def _layout_names() -> list[str]:
    from harness.data.layouts import LAYOUTS

    return LAYOUTS.names()


def _model_names() -> list[str]:
    from harness.learn.models import MODELS

    return MODELS.names()


def backend_names() -> list[str]:
    """'auto' (bubblewrap where it works) and every registered sandbox backend."""
    from harness.sandbox.backends import BACKENDS

    return ["auto", *BACKENDS.names()]


def executor_names() -> list[str]:
    from harness.compete.executors import EXECUTORS

    return EXECUTORS.names()


POSITIVE = rule("a number above 0", lambda v: v > 0)


@dataclass(frozen=True)
class SplitConfig:
    """train/val/test fractions after a seeded shuffle (the organizers used 80/10/10)."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    by_person: bool = True  # keep each person in one split, so test persons are unseen
    seed: int = 43


@dataclass(frozen=True)
class ForgetConfig:
    """How the forget set is drawn from the train split."""

    by: Literal["person", "example", "index_file"] = "person"
    count: int | None = key(None, rule("at least 1, or null", lambda v: v is None or v >= 1))  # k persons (by person) or k examples
    fraction: float | None = key(None, rule("a number in (0, 1], or null", lambda v: v is None or 0 < v <= 1))  # when count is None
    first_k: bool = False  # the first k person ids, as the organizers' released code took them
    classes: tuple[int, ...] | None = None  # draw only from these age groups
    index_file: str | None = None  # one image_id per line (by: index_file)
    seed: int = 0
    private_index_file: str | None = None  # the private board's forget set (image_ids), disjoint from the public one


@dataclass(frozen=True)
class TaskConfig:
    dataset: str = key("synthetic-faces", one_of(_layout_names))  # harness.data.layouts.LAYOUTS
    path: str | None = None  # local data root for real layouts; never downloaded
    options: dict[str, Any] = field(default_factory=dict)  # layout-specific knobs
    split: SplitConfig = field(default_factory=SplitConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    batch_size: int = key(64, rule("at least 1", lambda v: v >= 1))
    batch_format: str = key("dict", one_of(_batch_formats))  # harness.sandbox.protocol.BATCH_FORMATS


@dataclass(frozen=True)
class ModelConfig:
    name: str = key("resnet18", one_of(_model_names))  # harness.learn.models.MODELS
    num_classes: int = key(10, rule("at least 2", lambda v: v >= 2))
    checkpoint: str | None = None  # a state_dict file (Kaggle's original_model.pth); else trained


@dataclass(frozen=True)
class RecipeConfig:
    """The organizers' training recipe by default; every knob here."""

    epochs: int = key(30, rule("at least 1", lambda v: v >= 1))
    lr: float = key(1e-4, POSITIVE)
    weight_decay: float = key(5e-3, rule("a number of at least 0", lambda v: v >= 0))
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = key(0.9, rule("a number in [0, 1)", lambda v: 0 <= v < 1))
    scheduler: Literal["cosine", "none"] = "cosine"
    batch_size: int = key(64, rule("at least 1", lambda v: v >= 1))
    class_weighted: bool = True  # cross-entropy weights 1/count from the train split


@dataclass(frozen=True)
class ReferencesConfig:
    n_models: int = key(512, rule("at least 2 (the metric compares two distributions)", lambda v: v >= 2))
    seed: int = key(1000, rule("an integer of at least 0", lambda v: v >= 0))
    training_path: Literal["auto", "loop", "processes", "vmap"] = "auto"
    workers: int | None = key(None, rule("at least 1, or null for one per core", lambda v: v is None or v >= 1))  # CPU path
    vmap_chunk: int = key(64, rule("at least 1", lambda v: v >= 1))  # ensemble members per vmap chunk on GPUs
    cache_dir: str | None = None  # None: <output.dir>/cache
    solo_first: int = key(3, rule("at least 0", lambda v: v >= 0))  # the first models train alone by the plain recipe; their times serve the time cap


# The NeurIPS 2023 competition's allowance: 0.2 of a retrain by the organizers' 30-epoch recipe
# (README, "The time cap"), i.e. six epochs of that recipe over the retain set.
COMPETITION_RETAIN_EPOCHS = 6.0


@dataclass(frozen=True)
class TimeCapConfig:
    """A run's allowance. The budget is `retain_epochs` of the recipe over retain (the competition
    allowed 0.2 of a 30-epoch retrain: 6), so fraction = retain_epochs / recipe.epochs of the median
    solo retrain, on every task; `fraction` sets the share of a retrain directly instead."""

    # the budget in retain-epoch equivalents; None: the competition's 6
    retain_epochs: float | None = key(None, rule("a number above 0 (epochs of the recipe over retain), or null for 6",
                                                 lambda v: v is None or v > 0))
    # of one solo retrain's wall time; an alternative to retain_epochs
    fraction: float | None = key(None, rule("a number above 0 (a share of one solo retrain), or null",
                                            lambda v: v is None or v > 0))
    solo_retrains: int = key(3, rule("at least 1", lambda v: v >= 1))  # the cap is the median of this many solo retrains
    # repeats of a fixed submission whose p99 run-time spread widens the cap; 0: none
    noise_runs: int = key(16, rule("0 (no noise margin) or at least 2", lambda v: v == 0 or v >= 2))
    seconds: float | None = key(None, rule("a number of seconds above 0, or null to measure the cap",
                                           lambda v: v is None or v > 0))  # a fixed cap, overriding the measurement
    # bounds the harness's own steps between runs (a fork); never submission code
    grace_s: float = key(10.0, rule("a number of seconds above 0", lambda v: v > 0))

    def share(self, recipe_epochs: int) -> float:
        """The cap's share of one retrain."""
        if self.fraction is not None:
            return float(self.fraction)
        return float(self.budget_epochs) / float(recipe_epochs)

    @property
    def budget_epochs(self) -> float:
        return COMPETITION_RETAIN_EPOCHS if self.retain_epochs is None else float(self.retain_epochs)


@dataclass(frozen=True)
class SandboxConfig:
    backend: str = key("auto", one_of(backend_names))  # harness.sandbox.backends.BACKENDS, or auto
    memory_gb: float = key(4.0, rule("a number of GiB above 0", lambda v: v > 0))
    max_processes: int = key(256, rule("at least 1", lambda v: v >= 1))  # on top of what the sandbox user already runs
    max_file_size_mb: int = key(1024, rule("at least 1", lambda v: v >= 1))
    log_bytes: int = key(64 * 1024, rule("at least 0", lambda v: v >= 0))
    docker_image: str = "unlearning-harness:latest"
    shm_size_gb: float = key(1.0, rule("a number of GiB above 0", lambda v: v > 0))
    cpus: float | None = key(None, rule("a number above 0, or null", lambda v: v is None or v > 0))
    gpus: bool = False
    # what a run may write into its scratch folders (/tmp, /dev/shm, /kaggle/*), in all
    scratch_gb: float = key(4.0, rule("a number of GiB above 0", lambda v: v > 0))
    max_files: int = key(20000, rule("at least 1", lambda v: v >= 1))  # files and folders a run may create there
    first_uid: int = 60000  # a root host runs each concurrent sandbox as its own uid from here (+0..999)
    seccomp: bool = True  # bubblewrap: the system-call filter of harness.sandbox.seccomp
    cgroups: bool = True  # cores, memory and processes per sandbox where the host has cgroup v1
    docker_host_python: bool = False  # docker: bind the host's Python and harness into a minimal image


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = key("local", one_of(executor_names))  # harness.compete.executors.EXECUTORS
    # local process pool size; None: the machine's cores
    workers: int | None = key(None, rule("at least 1, or null for one per core", lambda v: v is None or v >= 1))
    address: str | None = None  # Ray cluster; None: ray.init() locally
    cpus_per_unit: float = key(1.0, POSITIVE)
    # a submission's runs and the original
    gpus_per_unit: float = key(0.0, rule("a number of at least 0 (a fraction shares a GPU)", lambda v: v >= 0))
    # None: gpus_per_unit; 0.25 fits four of the recipe's trainings on one GPU
    reference_gpus_per_unit: float | None = key(None, rule("a number of at least 0, or null for gpus_per_unit",
                                                           lambda v: v is None or v >= 0))
    # a submission's runs per sandboxed worker; None: all missing runs spread over the slots
    runs_per_unit: int | None = key(None, rule("at least 1, or null to spread runs over the slots", lambda v: v is None or v >= 1))
    # re-runs of a unit whose process or node died (never of one that raised)
    max_retries: int = key(3, rule("at least 0", lambda v: v >= 0))
    # units submitted at once; None: twice what can run at once
    max_in_flight: int | None = key(None, rule("at least 1, or null for the default", lambda v: v is None or v >= 1))


@dataclass(frozen=True)
class SubmissionsConfig:
    dir: str | None = "submissions"
    baselines: tuple[str, ...] = ("do_nothing", "finetune", "retrain", "neggrad_plus")
    reference_baselines: tuple[str, ...] = ("retrain",)  # scored and listed, exempt from the cap, never ranked
    n_runs: int = key(512, rule("at least 2 (the metric compares two distributions)", lambda v: v >= 2))  # the organizers' N


@dataclass(frozen=True)
class LeaderboardConfig:
    publish_logs: bool = False  # run logs on the public site: a channel from the sandbox to the public; organizers opt in


# The instantiations of the evaluation framework (README, "Instantiations and their cost"):
# what is trained afresh for whom. A closed set: the runner has a branch for each.
INSTANTIATIONS: dict[str, str] = {
    "competition": "one original, N unlearning runs from it, N references shared by all entries (the NeurIPS 2023 one)",
    "per_run_originals": "N originals trained from their own seeds, one unlearning run from each; N shared references",
    "fresh_references": "one original; N references drawn for each entry from its own seeds",
}


def instantiation_names() -> list[str]:
    return list(INSTANTIATIONS)


@dataclass(frozen=True)
class EvaluationConfig:
    """Which instantiation scores the entries; the default is the competition's, and its
    numbers and config hash are those of a config without this section."""

    instantiation: str = key("competition", one_of(instantiation_names))  # INSTANTIATIONS


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "runs"  # a competition lives in <dir>/<name>/


@dataclass(frozen=True)
class Config:
    version: int = CONFIG_VERSION
    name: str = "default"
    seed: int = 0
    device: str = "auto"  # auto: cuda when present, else cpu
    deterministic: bool = False
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    references: ReferencesConfig = field(default_factory=ReferencesConfig)
    time_cap: TimeCapConfig = field(default_factory=TimeCapConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    submissions: SubmissionsConfig = field(default_factory=SubmissionsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    leaderboard: LeaderboardConfig = field(default_factory=LeaderboardConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    source: str | None = None  # the file it came from, for messages and records

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir) / self.name

    @property
    def cache_dir(self) -> Path:
        """Trained models and read datasets: references.cache_dir, else the run folder's cache/."""
        return Path(self.references.cache_dir) if self.references.cache_dir else self.run_dir / "cache"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source", None)
        return data

    def hash(self) -> str:
        """What the stored results depend on: not which entries are scored, where, or on what executor."""
        data = self.to_dict()
        for key in ("output", "executor", "leaderboard"):
            data.pop(key)
        data["submissions"] = {"n_runs": self.submissions.n_runs, "reference_baselines": self.submissions.reference_baselines}
        if data["task"]["forget"]["private_index_file"] is None:  # a later key: unset, stored hashes stand
            del data["task"]["forget"]["private_index_file"]
        if data["evaluation"] == dataclasses.asdict(EvaluationConfig()):  # likewise: the competition's instantiation
            del data["evaluation"]
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_device(device: str) -> str:
    """'auto' picks CUDA when present (organizers score on GPUs), else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_config(path: str | Path | None = None, *, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML config (the embedded default when `path` is None) and apply dotted overrides."""
    path = find_config(path) if path is not None else DEFAULT_CONFIG
    data = _shorthands(_read_yaml(path, seen=()))
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return from_dict(data, source=str(path))


def from_dict(data: dict[str, Any], *, source: str = "<dict>") -> Config:
    data = dict(data)
    version = data.get("version", CONFIG_VERSION)
    if version != CONFIG_VERSION:
        raise ConfigError(
            f"{source}: key 'version' is {version!r} but this harness reads config version "
            f"{CONFIG_VERSION}; update the file or the harness"
        )
    data["source"] = source
    cfg = _build(Config, _shorthands(data), key="", source=source)
    check_config(cfg)
    return cfg


# Rules that tie keys together: (keys, holds, what to do); checked after every key's own rule.
CROSS_RULES: tuple[tuple[str, Callable[[Config], bool], str], ...] = (
    ("submissions.n_runs and references.n_models", lambda c: c.submissions.n_runs == c.references.n_models,
     "must be equal: the metric compares as many runs as retrained models; set both "
     "(on the command line: --n-runs and --n-models)"),
    ("task.forget.count and task.forget.fraction", lambda c: c.task.forget.count is None or c.task.forget.fraction is None,
     "are alternatives; set one of them"),
    ("time_cap.retain_epochs and time_cap.fraction", lambda c: c.time_cap.retain_epochs is None or c.time_cap.fraction is None,
     "are alternatives; set one (retain_epochs: 6 is the competition's budget)"),
)


def check_config(cfg: Config) -> None:
    """Every key's rule, then the rules between keys; the first broken one is a ConfigError naming
    the file, the key, the rule, the value and where to fix it. Load calls it; so does the runner,
    for a Config built in code."""
    for name in (f.name for f in dataclasses.fields(cfg)):
        value = getattr(cfg, name)
        if dataclasses.is_dataclass(value):
            check_section(value, name, source=cfg.source)
    for keys, holds, fix in CROSS_RULES:
        if not holds(cfg):
            first, second = (f"'{k}' ({_shown(_value_at(cfg, k))})" for k in keys.split(" and "))
            where = f"{cfg.source}: keys" if cfg.source else "keys"
            raise ConfigError(f"{where} {first} and {second} {fix}")


def check_section(section: Any, prefix: str, *, source: str | None = None) -> None:
    """The rules of one section (and its subsections), e.g. `check_section(cfg.executor, "executor")`."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        dotted = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            check_section(value, dotted, source=source)
            continue
        constraint = f.metadata.get("rule")
        if constraint is None or constraint.test(value):
            continue
        hint = ""
        if constraint.names is not None:
            import difflib

            close = difflib.get_close_matches(str(value), list(constraint.names()), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = f"{source}: key '{dotted}'" if source else dotted
        section_name = prefix.split(".")[0]
        raise ConfigError(
            f"{where} must be {constraint.text()}, got {value!r}{hint}; fix it in the config's {section_name} section"
        )


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _value_at(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def find_config(path: str | Path) -> Path:
    """`path` itself when it exists; else the shipped config it names (`ci`, `ci.yaml` or
    `configs/ci.yaml`), so documented commands work from any folder after `pip install .`."""
    path = Path(path)
    if path.exists() or path.parent not in (Path("."), Path("configs")):
        return path
    shipped = shipped_dir("configs") / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    if shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in shipped_dir("configs").glob("*.yaml")))
    raise ConfigError(f"config file {path} does not exist; pass an existing YAML file or a shipped config ({names})")


def _shorthands(data: dict[str, Any]) -> dict[str, Any]:
    """`executor: ray` names only the kind."""
    if isinstance(data.get("executor"), str):
        data = {**data, "executor": {"kind": data["executor"]}}
    return data


def _read_yaml(path: Path, *, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{seen[-1]}: 'include' forms a cycle through {path}")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    include = data.pop("include", None)
    if include is not None:
        base = _read_yaml(path.parent / include, seen=(*seen, path))
    elif path != DEFAULT_CONFIG.resolve():
        base = _read_yaml(DEFAULT_CONFIG, seen=(*seen, path))  # overrides-only files start from the embedded task
    else:
        return data
    return _merge(base, data)


# Alternatives within task.forget: a file that sets one drops what its include set for the others.
_FORGET_SIZES = ("count", "fraction", "index_file")
_CAP_BUDGETS = ("retain_epochs", "fraction")  # likewise within time_cap


def _merge(base: dict[str, Any], top: dict[str, Any], *, key: str = "") -> dict[str, Any]:
    """`top` over `base`, section by section. task.options and task.forget describe one dataset:
    a file naming another task.dataset inherits neither, so a layout's own forget set (Kaggle's
    forget.csv) is never replaced by an included default's `count`."""
    out = dict(base)
    if key == "task" and "dataset" in top and top["dataset"] != base.get("dataset"):
        out.pop("options", None)
        out.pop("forget", None)
    if key == "task.forget" and any(k in top for k in _FORGET_SIZES):
        for name in _FORGET_SIZES:
            out.pop(name, None)
    if key == "time_cap" and any(k in top for k in _CAP_BUDGETS):
        for name in _CAP_BUDGETS:
            out.pop(name, None)
    for name, value in top.items():
        sub = f"{key}.{name}" if key else name
        if isinstance(value, dict) and isinstance(out.get(name), dict) and name != "options":
            out[name] = _merge(out[name], value, key=sub)
        else:
            out[name] = value
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def _build(cls: type, data: Any, *, key: str, source: str) -> Any:
    where = key or "the top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: key '{where}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        prefix = f"{key}." if key else ""
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'{hint} valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        sub = f"{key}.{name}" if key else name
        kwargs[name] = _coerce(hints[name], value, key=sub, source=source)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, *, key: str, source: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key=key, source=source)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key=key, source=source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"{source}: key '{key}' must be one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{key}' must be a list, got {value!r}")
        (item_tp, *_) = get_args(tp)
        return tuple(_coerce(item_tp, v, key=f"{key}[{i}]", source=source) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: key '{key}' must be a string, got {value!r}")
        return value
    return value
