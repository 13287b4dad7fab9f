"""One-line hints for the mistakes participants make most, read from a failed run's private log.

The dry run prints them under the reason: the log is the participant's own (their dry run shows it
anyway), so nothing here reaches a public page. Each rule looks at the exception's last line in
the traceback the worker wrote, and at what the host knows (the device, the batch format).
"""

from __future__ import annotations

import ast
import re

TRACEBACK_HEAD = "Traceback (most recent call last):"
TAIL_LINES = 12

CUDA_HINT = ("the run's device is the CPU, with no CUDA: put tensors on the net's device, "
             "device = next(net.parameters()).device, instead of .cuda() or 'cuda'")
DICT_HINT = ("the loaders' batches are dicts here (BATCH_FORMAT 'dict'): read batch['image'] and batch['age_group'], "
             "or declare BATCH_FORMAT = 'tuple' at the top of your file for (image, label) batches")
TUPLE_HINT = ("the loaders' batches are (image, label) pairs here (BATCH_FORMAT 'tuple'): unpack them "
              "(image, label = batch), or declare BATCH_FORMAT = 'dict' at the top of your file for dict batches")
UNCHANGED_HINT = ("the returned weights are the original's, unchanged: the model is the original, so F will be 0; "
                  "change net in place or return the unlearned model")

# torch's words when CUDA is asked for where there is none (a CPU build, no driver, no device; in a
# run forked from the warm parent, torch's refusal to initialise CUDA after a fork)
_NO_CUDA = re.compile(r"Found no NVIDIA driver|Torch not compiled with CUDA enabled|No CUDA GPUs are available|"
                      r"Cannot re-initialize CUDA in forked subprocess|"
                      r"CUDA driver initialization failed|torch\.cuda\.is_available\(\) is False|"
                      r"cudaGetDeviceCount|CUDA unknown error")
_INT_KEY = re.compile(r"^KeyError: -?\d+$")  # dict_batch[0]
_STR_INDEX = re.compile(r"^TypeError: (list|tuple) indices must be integers or slices, not str$")  # pair['image']
# `image, label = dict_batch` unpacks its five keys; `image.to(device)` then meets a key's name
_DICT_UNPACKED = re.compile(r"^ValueError: too many values to unpack \(expected [234]\)$|"
                            r"^AttributeError: 'str' object has no attribute '(to|cuda|float|size|shape)'$")


def traceback_tail(log: str, *, lines: int = TAIL_LINES) -> list[str]:
    """The last traceback in a run's log, its last `lines` lines; else the log's last lines."""
    text = log or ""
    start = text.rfind(TRACEBACK_HEAD)
    body = text[start:] if start >= 0 else text
    kept = [line for line in body.splitlines() if line.strip()]
    return kept[-lines:]


def exception_text(log: str) -> str | None:
    """'ValueError: ...': what follows the last frame of the last traceback in the log, if any."""
    text = log or ""
    start = text.rfind(TRACEBACK_HEAD)
    if start < 0:
        return None
    lines = text[start:].splitlines()
    last_frame = max((i for i, line in enumerate(lines) if line.startswith("  File ")), default=0)
    rest = lines[last_frame + 1:]
    while rest and rest[0].startswith((" ", "\t")):  # the frame's source line and its carets
        rest = rest[1:]
    found = "\n".join(line for line in rest if line.strip()).strip()
    return found or None


def failure_hint(log: str, *, device: str, batch_format: str | None) -> str | None:
    """A hint for a failed run from its log, or None. `batch_format`: the batches it got, if known."""
    text = exception_text(log)
    if text is None:
        return None
    line = text.splitlines()[0]
    if not device.startswith("cuda") and _NO_CUDA.search(text):
        return CUDA_HINT
    if batch_format in (None, "dict") and (_INT_KEY.match(line) or (batch_format == "dict" and _DICT_UNPACKED.match(line))):
        return DICT_HINT
    if batch_format in (None, "tuple") and _STR_INDEX.match(line):
        return TUPLE_HINT
    return None


def declared_batch_format(source: str) -> str | None:
    """The file's module-level BATCH_FORMAT = 'dict' | 'tuple', read without running it."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    found = None
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        value = getattr(node, "value", None)
        if any(isinstance(t, ast.Name) and t.id == "BATCH_FORMAT" for t in targets):
            found = value.value if isinstance(value, ast.Constant) and value.value in ("dict", "tuple") else None
    return found
