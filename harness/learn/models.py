"""Model architectures, checkpoints and weight files.

"resnet18" is the organizers' model (torchvision's, never with downloaded weights); "small-cnn"
is sized for CPU dry runs. Weights that come back from untrusted submissions are read without
executing code (safetensors, or torch.load with weights_only=True) and checked against the
architecture before use.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from harness.errors import HarnessError
from harness.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

_SHOWN_KEYS = 5  # keys listed in a mismatch message before "..."


@MODELS.register("resnet18")
def resnet18(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """torchvision's ResNet-18 as the organizers built it: random init, `num_classes` outputs."""
    import torchvision  # here, not at the top: it costs worker processes seconds to import

    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


class SmallCNN(nn.Module):
    """Three conv3x3-BN-ReLU-maxpool blocks, global average pooling and a linear head.

    Trains in a few seconds on 16 px images on one CPU core; any input of 8 px or more works.
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


@MODELS.register("small-cnn")
def small_cnn(*, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return SmallCNN(num_classes=num_classes, in_channels=in_channels)


def build_model(name: str, *, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A freshly initialised model (from torch's global RNG; seed it first for a given init)."""
    if num_classes < 2 or in_channels < 1:
        raise HarnessError(
            f"model {name!r} needs num_classes >= 2 and in_channels >= 1, got num_classes={num_classes}, "
            f"in_channels={in_channels}; fix model.num_classes or the dataset's image channels"
        )
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels)


@dataclass(frozen=True)
class ModelSpec:
    """A picklable recipe for a fresh model, so worker processes can build their own."""

    name: str
    num_classes: int = 10
    in_channels: int = 3

    def __call__(self) -> nn.Module:
        return build_model(self.name, num_classes=self.num_classes, in_channels=self.in_channels)


@contextlib.contextmanager
def channels_last_on_cpu(model: nn.Module, device: str | torch.device) -> Iterator[torch.memory_format]:
    """On a CPU, run conv nets in channels-last memory (measured 1.7x faster training and 2x faster
    inference for small-cnn on one core); yields the format inputs should take. The model's
    tensors return to the default layout afterwards, so saved weights look the same either way."""
    if torch.device(device).type != "cpu":
        yield torch.contiguous_format
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield torch.channels_last
    finally:
        model.to(memory_format=torch.contiguous_format)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a .safetensors file or a torch.save'd file, without executing code."""
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"weights file {path} does not exist; pass an existing state_dict file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise HarnessError(f"weights file {path} is not a valid safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(
            f"weights file {path} cannot be read as a state_dict with torch.load(weights_only=True) "
            f"({first}); save it with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise HarnessError(
            f"weights file {path} holds a {type(state).__name__}, not a state_dict of tensors; "
            "save it with torch.save(model.state_dict(), path)"
        )
    state = dict(state)
    if state and all(key.startswith("module.") for key in state):  # saved from nn.DataParallel
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def load_checkpoint(model: nn.Module, path: str | Path, *, name: str | None = None) -> nn.Module:
    """Load a state_dict file (Kaggle's original_model.pth or safetensors) into `model`, in place."""
    name = name or type(model).__name__
    state = read_state_dict(path)
    problem = _mismatch(model.state_dict(), state, check_dtypes=False, check_finite=False)
    if problem:
        raise HarnessError(
            f"checkpoint {path} does not fit model {name!r}: {problem}; "
            "set model.name to the architecture it was trained with, or pass a checkpoint of this one"
        )
    model.load_state_dict(state)
    return model


def save_weights(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Write weights as safetensors, atomically (a reader never sees half a file)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    return path


def load_weights(model: nn.Module, path: str | Path, *, name: str | None = None) -> nn.Module:
    """Load safetensors weights (from save_weights or a sandboxed run) into `model`, in place.

    The weights must fit exactly (keys, shapes, dtypes) and be finite; otherwise HarnessError.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise HarnessError(f"weights file {path} must end in .safetensors; use load_checkpoint for .pth files")
    state = read_state_dict(path)
    problem = validate_state_dict(model, state)
    if problem:
        raise HarnessError(f"weights {path} do not fit model {name or type(model).__name__!r}: {problem}")
    model.load_state_dict(state)
    return model


def validate_state_dict(reference: nn.Module | Mapping[str, torch.Tensor], state: object) -> str | None:
    """None when `state` fits `reference` (same keys, shapes, dtypes, all finite); else the reason."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        return f"expected a mapping of names to tensors, got {type(state).__name__}"
    expected = reference.state_dict() if isinstance(reference, nn.Module) else reference
    return _mismatch(expected, state, check_dtypes=True, check_finite=True)


def _mismatch(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    *,
    check_dtypes: bool,
    check_finite: bool,
) -> str | None:
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_first(unexpected)}")
    shared = [key for key in expected if key in state]
    shapes = [
        f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
        for key in shared
        if state[key].shape != expected[key].shape
    ]
    if shapes:
        problems.append(f"shape mismatches (given vs expected) {_first(shapes)}")
    if check_dtypes:
        dtypes = [
            f"{key} {state[key].dtype} vs {expected[key].dtype}"
            for key in shared
            if state[key].dtype != expected[key].dtype
        ]
        if dtypes:
            problems.append(f"dtype mismatches (given vs expected) {_first(dtypes)}")
    if check_finite and not problems:
        bad = [
            key
            for key in shared
            if state[key].is_floating_point() and not bool(torch.isfinite(state[key]).all())
        ]
        if bad:
            problems.append(f"non-finite values (nan or inf) in {_first(bad)}")
        negative = [  # a variance below zero makes BatchNorm's normalisation take a root of it
            key for key in shared if key.endswith("running_var") and bool((state[key] < 0).any())
        ]
        if negative:
            problems.append(f"negative BatchNorm running variance in {_first(negative)}")
    return "; ".join(problems) or None


def _first(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    more = f", ... ({len(items)} in all)" if len(items) > _SHOWN_KEYS else ""
    return f"[{shown}{more}]"
