"""Trusted evaluation of a model: forget-set confidences, retain/test/forget accuracy, and the
test-set losses the simple MIA lens reads (harness.scoring.lenses).

Runs outside the sandbox on weights already validated. It is on the scoring hot path (once per
run and per reference), so it feeds tensors straight from the arrays in large batches, without
gradients or a DataLoader, in channels-last layout on CPUs, and copies only the forget and test
sets' logits back from the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from harness.errors import HarnessError
from harness.learn.models import channels_last_on_cpu
from harness.scoring.lenses import losses_from_confidences
from harness.scoring.metric import logit_scaled_confidence


@dataclass(frozen=True)
class Evaluation:
    forget_confs: np.ndarray  # float64 [S] logit-scaled confidence, in the forget split's stored order
    retain_acc: float  # fractions in [0, 1]
    test_acc: float
    forget_acc: float
    test_losses: np.ndarray | None = None  # float64 [T] cross-entropy per test example (the simple MIA's)


def evaluate(
    model: nn.Module,
    *,
    forget: Mapping[str, np.ndarray],
    retain: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    device: str | torch.device,
    batch_size: int = 256,
) -> Evaluation:
    """Evaluate `model` (moved to `device`, in eval mode, its mode restored afterwards)."""
    with _inference(model, device) as memory_format:
        logits, forget_acc = _run(model, forget, device, batch_size, memory_format, keep_logits=True)
        _, retain_acc = _run(model, retain, device, batch_size, memory_format, keep_logits=False)
        test_logits, test_acc = _run(model, test, device, batch_size, memory_format, keep_logits=True)
    confs = logit_scaled_confidence(logits, np.asarray(forget["age_group"]))
    test_losses = None
    if len(test_logits) and test.get("age_group") is not None:
        # the forget set's losses are softplus(-conf) of its confidences; the test set's the same way
        test_losses = losses_from_confidences(logit_scaled_confidence(test_logits, np.asarray(test["age_group"])))
    return Evaluation(
        forget_confs=np.asarray(confs, dtype=np.float64),
        retain_acc=retain_acc,
        test_acc=test_acc,
        forget_acc=forget_acc,
        test_losses=test_losses,
    )


def predict_logits(
    model: nn.Module, images: np.ndarray, *, device: str | torch.device, batch_size: int = 256
) -> np.ndarray:
    """float32 [n, classes] logits of `model` in eval mode, in the order of `images`."""
    with _inference(model, device) as memory_format:
        logits, _ = _run(model, {"image": images}, device, batch_size, memory_format, keep_logits=True)
    return logits


@contextlib.contextmanager
def _inference(model: nn.Module, device: str | torch.device) -> Iterator[torch.memory_format]:
    """The model on `device`, in eval mode and the fastest layout, without autograd; restored after."""
    was_training = model.training
    model.to(device).eval()
    try:
        with channels_last_on_cpu(model, device) as memory_format, torch.inference_mode():
            yield memory_format
    finally:
        model.train(was_training)


def _run(
    model: nn.Module,
    arrays: Mapping[str, np.ndarray],
    device: str | torch.device,
    batch_size: int,
    memory_format: torch.memory_format,
    *,
    keep_logits: bool,
) -> tuple[np.ndarray | None, float]:
    """One pass over a split: the logits (when kept) and the accuracy (nan without labels or images)."""
    if batch_size < 1:
        raise HarnessError(f"evaluation batch_size must be >= 1, got {batch_size}")
    images = np.asarray(arrays["image"])
    if images.ndim != 4:
        raise HarnessError(f"evaluation needs images [n, C, H, W], got shape {images.shape}")
    labels = arrays.get("age_group")
    if labels is not None and len(labels) != len(images):
        raise HarnessError(f"evaluation got {len(images)} images but {len(labels)} labels; pass one split's arrays")
    device = torch.device(device)
    source = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    targets = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    chunks: list[torch.Tensor] = []
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(images), batch_size):
        batch = source[start : start + batch_size].to(device, non_blocking=True)
        out = model(batch.contiguous(memory_format=memory_format))
        if targets is not None:
            correct += (out.argmax(dim=1) == targets[start : start + batch_size]).sum()
        if keep_logits:
            chunks.append(out.float())
    logits = None
    if keep_logits:
        logits = torch.cat(chunks).cpu().numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
    accuracy = float(correct.item()) / len(images) if targets is not None and len(images) else float("nan")
    return logits, accuracy
