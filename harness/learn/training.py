"""The organizers' training recipe, and three ways to train many models with it.

The recipe (google-deepmind/unlearning_evaluation, train_lib.py): Adam lr 1e-4, weight decay
5e-3, CosineAnnealingLR(T_max=epochs) stepped once per epoch, batch 64 shuffled each epoch,
cross-entropy weighted 1/count per class of the train split, 30 epochs, keep the last epoch's
weights. Every knob comes from RecipeConfig.

Paths for many models, all giving models of the same quality:
- loop: one after another in this process;
- processes: a spawn pool of one-thread processes (fastest on multi-core CPUs: two one-thread
  processes beat one two-thread process by ~20% on 2 cores);
- vmap: a torch.func ensemble with stacked parameters and buffers (3-4x a loop on an H100, slower
  than a loop on CPUs).
Each model's init comes from its seed (init_model: torch seeded in a forked generator) and its batch order from a
separate stream of the same seed, so every path trains member i on the same init and batches.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.config import RecipeConfig
from harness.errors import HarnessError
from harness.learn.models import channels_last_on_cpu
from harness.processes import die_with_driver, usable_cores

TRAINING_PATHS = ("loop", "processes", "vmap")

ModelFactory = Callable[[], nn.Module]  # e.g. harness.learn.models.ModelSpec; picklable for processes


@dataclass(frozen=True)
class Seeds:
    """A seed's independent streams: the model's init (torch) and the data order."""

    seed: int
    torch: int
    data: int


def split_seed(seed: int) -> Seeds:
    """Independent seeds for python, numpy, torch (init) and the data order, from one seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise HarnessError(f"seed must be a non-negative integer, got {seed!r}")
    # streams 0 and 1 once seeded python and numpy, which no model init uses; 2 and 3 stay where they were
    _, _, torch_, data = (int(s) for s in np.random.SeedSequence(int(seed)).generate_state(4))
    return Seeds(seed=int(seed), torch=torch_, data=data)


def init_model(factory: ModelFactory, seed: int) -> nn.Module:
    """A fresh model whose init depends only on `seed` (built on the CPU, whatever the device).
    Torch's generator is seeded inside `fork_rng`, so the caller's global generators stay as they
    were: a second competition in the same process draws what the first would have."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(split_seed(seed).torch)
        return factory()


def choose_path(device: str | torch.device, *, n_models: int, cores: int | None = None) -> str:
    """The fastest measured path: vmap on CUDA, processes on a multi-core CPU, else a loop."""
    cores = usable_cores() if cores is None else cores
    if n_models <= 1:
        return "loop"
    if torch.device(device).type == "cuda":
        return "vmap"
    return "processes" if cores > 1 else "loop"


def hardware_description(device: str | torch.device) -> str:
    """What a timing was measured on: the accelerator, the CPU model, cores (and which) and torch threads."""
    facts = hardware_identity(device)
    cpu = f"{facts['cpu_model']} x{facts['cores']} cores (cpus {facts['cpu_set']}), torch {facts['torch_threads']} threads"
    if facts["accelerator"]:
        return f"{facts['accelerator']} ({facts['device_type']}); host {cpu}"
    return cpu


def hardware_identity(device: str | torch.device) -> dict[str, Any]:
    """Everything a timing depends on beyond the code: what a cached time cap is keyed by."""
    device = torch.device(device)
    return {
        "cpu_model": _cpu_model(),
        "cores": usable_cores(),
        "cpu_set": _cpu_ranges(_cpu_set()),
        "torch_threads": timing_threads(device),
        "torch": torch.__version__,
        "device_type": device.type,
        "accelerator": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def _cpu_set() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return list(range(os.cpu_count() or 1))


def _cpu_ranges(cpus: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5', as /sys and taskset write CPU sets."""
    parts, start = [], None
    for i, cpu in enumerate(cpus):
        if start is None:
            start = cpu
        if i + 1 == len(cpus) or cpus[i + 1] != cpu + 1:
            parts.append(str(start) if start == cpu else f"{start}-{cpu}")
            start = None
    return ",".join(parts)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def train_model(
    model: nn.Module,
    arrays: Mapping[str, np.ndarray],
    recipe: RecipeConfig,
    *,
    class_weights: torch.Tensor | np.ndarray | None,
    seed: int,
    device: str | torch.device,
) -> float:
    """Train `model` in place by the recipe on arrays["image"], arrays["age_group"]; returns wall seconds.

    The batch order comes from `seed` alone (not from the init), so a given seed on the same
    machine and thread count gives the same model. Leaves the model in eval mode, as the
    organizers did. A trailing batch of one example is skipped: BatchNorm cannot train on it.
    """
    start = time.perf_counter()
    device = torch.device(device)
    images, labels = _tensors(arrays, device)
    weights = _loss_weights(class_weights, recipe, device)
    model.to(device).train()
    with channels_last_on_cpu(model, device) as memory_format:
        images = images.contiguous(memory_format=memory_format)
        optimizer, scheduler = _optimizer(list(model.parameters()), recipe)
        order = torch.Generator().manual_seed(split_seed(seed).data)
        slices = _batch_slices(len(labels), recipe.batch_size)
        for _ in range(recipe.epochs):
            perm = torch.randperm(len(labels), generator=order).to(device)
            for batch in slices:
                idx = perm[batch]
                loss = F.cross_entropy(model(images[idx]), labels[idx], weight=weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
    model.eval()
    _synchronize(device)
    return time.perf_counter() - start


def timing_threads(device: str | torch.device) -> int:
    """Torch threads for every timed computation on a CPU: the time cap's retrains and the
    sandboxed runs use the same count, so the cap compares like with like; one thread leaves the
    other cores to evaluation running beside the worker (and spinning idle threads on a busy
    machine cost 5-10x). GPUs are timed with the default."""
    return 1 if torch.device(device).type == "cpu" else torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_plain(
    model: nn.Module,
    arrays: Mapping[str, np.ndarray],
    recipe: RecipeConfig,
    *,
    class_weights: torch.Tensor | np.ndarray | None,
    seed: int,
    device: str | torch.device,
) -> float:
    """The recipe as the organizers ran it, through the same kind of DataLoader a submission gets
    (dict batches, default memory layout): the time cap's basis. Returns wall seconds.

    `train_model` gives the same recipe faster (tensors, channels-last); timing the cap with it
    would shrink every submission's budget relative to its own data path.
    """
    from harness.data.loaders import make_loader

    start = time.perf_counter()
    device = torch.device(device)
    weights = _loss_weights(class_weights, recipe, device)
    model.to(device).train()
    optimizer, scheduler = _optimizer(list(model.parameters()), recipe)
    loader = make_loader(arrays, batch_size=recipe.batch_size, shuffle=True, seed=split_seed(seed).data)
    for _ in range(recipe.epochs):
        for batch in loader:
            inputs, targets = batch["image"].to(device), batch["age_group"].to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(inputs), targets, weight=weights)
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
    model.eval()
    _synchronize(device)
    return time.perf_counter() - start


def warm_up_plain(model: nn.Module, arrays: Mapping[str, np.ndarray], recipe: RecipeConfig, *,
                  device: str | torch.device) -> None:
    """Pay torch's one-off costs before `train_plain` is timed: the first optimizer step imports
    torch._dynamo and the first forward/backward loads kernels (about 4 s in a fresh process, more
    than a whole retrain of the default task). A sandboxed run never pays them (its warm parent
    did), so a timed retrain must not either. `model` is a throwaway; its weights change."""
    from harness.data.loaders import make_loader

    device = torch.device(device)
    model.to(device).train()
    optimizer, scheduler = _optimizer(list(model.parameters()), recipe)
    batch = next(iter(make_loader(arrays, batch_size=recipe.batch_size, shuffle=True, seed=0)))
    optimizer.zero_grad()
    F.cross_entropy(model(batch["image"].to(device)), batch["age_group"].to(device)).backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    with torch.no_grad():
        model.eval()(batch["image"].to(device))
    _synchronize(device)


@dataclass(frozen=True)
class TrainResult:
    """One trained model: its index in the seed list, seed, wall seconds and path.

    `state_dict` holds its weights on the CPU (None with keep_weights=False); `output` is what
    `finish(model)` returned where the model was trained (None without finish).
    """

    index: int
    seed: int
    state_dict: dict[str, torch.Tensor] | None
    seconds: float  # for vmap: the chunk's wall time divided by its members
    path: str
    output: Any = None


def train_many(
    factory: ModelFactory,
    arrays: Mapping[str, np.ndarray],
    recipe: RecipeConfig,
    *,
    seeds: Sequence[int],
    class_weights: torch.Tensor | np.ndarray | None,
    device: str | torch.device,
    path: str = "auto",
    workers: int | None = None,
    vmap_chunk: int = 64,
    finish: Callable[[nn.Module], Any] | None = None,
    keep_weights: bool = True,
) -> Iterator[TrainResult]:
    """Train one model per seed, yielding each as it finishes (in any order; see .index).

    `path` is "auto" (choose_path), "loop", "processes" or "vmap"; each result records the one
    used. Results come as they finish, so a caller can store each one and resume after a crash.
    `finish` (picklable for processes) runs on each trained model where it was trained, e.g. an
    evaluation, so a pool's workers evaluate in parallel instead of the parent competing for cores.
    """
    seeds = [split_seed(s).seed for s in seeds]
    if path == "auto":
        path = choose_path(device, n_models=len(seeds))
    if path not in TRAINING_PATHS:
        raise HarnessError(f"training path must be 'auto' or one of {', '.join(TRAINING_PATHS)}, got {path!r}")
    if vmap_chunk < 1 or (workers is not None and workers < 1):
        raise HarnessError(f"vmap_chunk and workers must be >= 1, got vmap_chunk={vmap_chunk}, workers={workers}")
    # fail here, not in a worker, on bad input
    _check_recipe(recipe)
    _tensors(arrays, torch.device("cpu"))
    _loss_weights(class_weights, recipe, torch.device("cpu"))
    if not seeds:
        return iter(())
    job = _Job(factory, arrays, recipe, class_weights, str(device), finish, keep_weights)
    if path == "loop":
        return _train_loop(job, seeds)
    if path == "processes":
        return _train_processes(job, seeds, workers=min(workers or usable_cores(), len(seeds)))
    return _train_vmap(job, seeds, chunk=vmap_chunk)


@dataclass(frozen=True)
class _Job:
    """What every model of a train_many call shares (sent once to each worker process)."""

    factory: ModelFactory
    arrays: Mapping[str, np.ndarray]
    recipe: RecipeConfig
    class_weights: torch.Tensor | np.ndarray | None
    device: str
    finish: Callable[[nn.Module], Any] | None
    keep_weights: bool

    def train(self, index: int, seed: int, path: str) -> TrainResult:
        model = init_model(self.factory, seed)
        seconds = train_model(
            model, self.arrays, self.recipe, class_weights=self.class_weights, seed=seed, device=self.device
        )
        output = None if self.finish is None else self.finish(model)
        state = _cpu_state(model) if self.keep_weights else None
        return TrainResult(index, seed, state, seconds, path, output)


def _train_loop(job: _Job, seeds: list[int]) -> Iterator[TrainResult]:
    for index, seed in enumerate(seeds):
        yield job.train(index, seed, "loop")


_WORKER_JOB: list[_Job] = []  # the job of this pool worker, set once by _worker_init


def _worker_init(job: _Job, driver_pid: int) -> None:
    die_with_driver(driver_pid)  # no worker outlives a killed driver
    torch.set_num_threads(1)
    _WORKER_JOB.append(job)


def _worker_train(index: int, seed: int) -> TrainResult:
    result = _WORKER_JOB[0].train(index, seed, "processes")
    if result.state_dict is None:
        return result
    # numpy, not tensors: torch would pass tensors through shared memory, which Docker keeps small
    return dataclasses.replace(result, state_dict={key: value.numpy() for key, value in result.state_dict.items()})


def _train_processes(job: _Job, seeds: list[int], *, workers: int) -> Iterator[TrainResult]:
    weights = None if job.class_weights is None else torch.as_tensor(job.class_weights).cpu().numpy()
    data = {"image": np.asarray(job.arrays["image"]), "age_group": np.asarray(job.arrays["age_group"])}
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=torch.multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(dataclasses.replace(job, arrays=data, class_weights=weights), os.getpid()),
    )
    try:
        futures = [pool.submit(_worker_train, index, seed) for index, seed in enumerate(seeds)]
        for future in concurrent.futures.as_completed(futures):
            result = future.result()
            if result.state_dict is not None:
                state = {key: torch.from_numpy(value) for key, value in result.state_dict.items()}
                result = dataclasses.replace(result, state_dict=state)
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _train_vmap(job: _Job, seeds: list[int], *, chunk: int) -> Iterator[TrainResult]:
    model = None
    for first in range(0, len(seeds), chunk):
        members = seeds[first : first + chunk]
        states, seconds = _train_ensemble(job, members)
        for offset, (seed, state) in enumerate(zip(members, states)):
            output = None
            if job.finish is not None:
                model = model or job.factory()
                model.load_state_dict(state)
                output = job.finish(model.to(job.device).eval())
            weights = state if job.keep_weights else None
            yield TrainResult(first + offset, seed, weights, seconds / len(members), "vmap", output)


def _train_ensemble(job: _Job, seeds: list[int]) -> tuple[list[dict], float]:
    """Train len(seeds) models as one vmapped ensemble; member i sees what train_model would."""
    start = time.perf_counter()
    device, recipe = torch.device(job.device), job.recipe
    images, labels = _tensors(job.arrays, device)
    weights = _loss_weights(job.class_weights, recipe, device)
    models = [init_model(job.factory, seed).to(device).train() for seed in seeds]
    params, buffers = torch.func.stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    del models

    def forward(p, b, x):
        return torch.func.functional_call(base, (p, b), (x,))

    ensemble = torch.func.vmap(forward, randomness="different")
    optimizer, scheduler = _optimizer(list(params.values()), recipe)
    orders = [torch.Generator().manual_seed(split_seed(seed).data) for seed in seeds]
    n = len(labels)
    slices = _batch_slices(n, recipe.batch_size)
    for _ in range(recipe.epochs):
        perms = torch.stack([torch.randperm(n, generator=g) for g in orders]).to(device)
        for batch in slices:
            idx = perms[:, batch]  # [members, batch]
            logits = ensemble(params, buffers, images[idx])  # [members, batch, classes]
            loss = _ensemble_loss(logits, labels[idx], weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
    _synchronize(device)
    seconds = time.perf_counter() - start
    names = list(base.state_dict())
    stacked = {**params, **buffers}
    states = [{name: stacked[name][i].detach().to("cpu").clone() for name in names} for i in range(len(seeds))]
    return states, seconds


def _ensemble_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Sum over members of each member's (weighted-mean) cross-entropy, as F.cross_entropy takes it."""
    members, batch, classes = logits.shape
    losses = F.cross_entropy(logits.reshape(-1, classes), targets.reshape(-1), reduction="none")
    losses = losses.reshape(members, batch)
    if weights is None:
        return losses.mean(dim=1).sum()
    w = weights[targets]
    return ((w * losses).sum(dim=1) / w.sum(dim=1)).sum()


def _batch_slices(n: int, batch_size: int) -> list[slice]:
    """An epoch's batches as slices of a permutation, without a trailing batch of one."""
    slices = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if len(slices) > 1 and n - slices[-1].start == 1:
        slices.pop()
    return slices


def _check_recipe(recipe: RecipeConfig) -> None:
    if recipe.epochs < 1 or recipe.batch_size < 1 or recipe.lr <= 0:
        raise HarnessError(
            f"recipe needs epochs >= 1, batch_size >= 1 and lr > 0, got epochs={recipe.epochs}, "
            f"batch_size={recipe.batch_size}, lr={recipe.lr}; fix the config's recipe section"
        )
    if recipe.optimizer not in ("adam", "sgd"):
        raise HarnessError(f"recipe.optimizer must be 'adam' or 'sgd', got {recipe.optimizer!r}")
    if recipe.scheduler not in ("cosine", "none"):
        raise HarnessError(f"recipe.scheduler must be 'cosine' or 'none', got {recipe.scheduler!r}")


def _optimizer(params: list[torch.Tensor], recipe: RecipeConfig):
    _check_recipe(recipe)
    if recipe.optimizer == "adam":
        optimizer = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    if recipe.scheduler == "none":
        return optimizer, None
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=recipe.epochs)


def _loss_weights(class_weights, recipe: RecipeConfig, device: torch.device) -> torch.Tensor | None:
    if not recipe.class_weighted:
        return None
    if class_weights is None:
        raise HarnessError(
            "recipe.class_weighted is true but no class_weights were given; pass "
            "harness.data.loaders.class_weights(labels, num_classes) or set recipe.class_weighted: false"
        )
    return torch.as_tensor(class_weights, dtype=torch.float32).to(device)


def _tensors(arrays: Mapping[str, np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    missing = [key for key in ("image", "age_group") if key not in arrays]
    if missing:
        raise HarnessError(f"training arrays need keys 'image' and 'age_group', missing {missing}; pass a SplitArrays")
    images = np.asarray(arrays["image"])
    labels = np.asarray(arrays["age_group"])
    if images.ndim != 4 or len(images) != len(labels) or len(labels) < 2:
        raise HarnessError(
            f"training arrays need images [n, C, H, W] and n labels with n >= 2, got images "
            f"{images.shape} and {labels.shape[0]} labels"
        )
    return (
        torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device),
        torch.from_numpy(labels.astype(np.int64)).to(device),
    )


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu").clone() for key, value in model.state_dict().items()}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
