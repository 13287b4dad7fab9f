"""Public reasons: what a run's process says about its failure, reduced to the harness's templates.

A run's report is written by the submission's own process, so its reason text is a channel from
inside the sandbox (which holds the private retain and forget data) to the public leaderboard.
The host keeps only what fits the worker's templates: a known exception type, the participant's
file name, line numbers that exist in that file and function names that the file defines. Anything
else becomes the status's plain description; the full text stays in the private log.
"""

from __future__ import annotations

import builtins
import re

# Exception types a public reason may name besides Python's own: the libraries a submission uses.
LIBRARY_EXCEPTIONS = frozenset({
    "OutOfMemoryError", "AcceleratorError", "LinAlgError", "DeferredCudaCallError", "CUDAError",
    "UnpicklingError", "EmptyDataError", "ParserError", "NotFittedError", "ConvergenceWarning",
})
BUILTIN_EXCEPTIONS = frozenset(name for name, value in vars(builtins).items()
                               if isinstance(value, type) and issubclass(value, BaseException))
_FRAME = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+)(?: in (?P<function>[\w<>]+))?$")
_ELIDED = re.compile(r"^\(\d+ more\)$")  # frames a deep chain leaves out between its two ends
_EXCEPTION = re.compile(r"^(?P<type>\w+)(?P<exit> \(called sys\.exit\))?(?: at (?P<frames>.+))?$")
_PREFIXES = ("importing {file} failed: ", "the model's weights cannot be read: ")
_FIXED = (
    "{file}: unlearning is not defined; define def unlearning(net, retain_loader, forget_loader, val_loader)",
    "{file}: unlearning is not callable; define def unlearning(net, retain_loader, forget_loader, val_loader)",
    "{file}: BATCH_FORMAT must be 'dict' or 'tuple'",
)


def public_reason(reason: str | None, *, file: str, source: str, fallback: str) -> str:
    """`reason` if it is one of the templates filled with facts of `source`, else `fallback`."""
    if not reason:
        return fallback
    if reason in (template.format(file=file) for template in _FIXED):
        return reason
    rest, prefix = reason, ""
    for template in _PREFIXES:
        head = template.format(file=file)
        if reason.startswith(head):
            prefix, rest = head, reason[len(head):]
            break
    kept = _exception(rest, file=file, source=source)
    return prefix + kept if kept is not None else fallback


def _exception(text: str, *, file: str, source: str) -> str | None:
    match = _EXCEPTION.match(text)
    if match is None or match["type"] not in BUILTIN_EXCEPTIONS | LIBRARY_EXCEPTIONS:
        return None
    if match["exit"] and match["type"] != "SystemExit":
        return None
    if match["frames"] is None:
        return text
    lines = source.count("\n") + 1
    defined = set(re.findall(r"^\s*(?:async\s+)?def\s+(\w+)", source, flags=re.MULTILINE)) | {"<module>", "<lambda>"}
    frames = match["frames"].split(" -> ")
    for position, frame in enumerate(frames):
        if 0 < position < len(frames) - 1 and _ELIDED.match(frame):
            continue
        parts = _FRAME.match(frame)
        if parts is None or parts["file"] != file or not 1 <= int(parts["line"]) <= lines:
            return None
        if parts["function"] is not None and parts["function"] not in defined:
            return None
    return text
