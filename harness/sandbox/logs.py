"""The worker's output, kept per run and capped, so a submission printing megabytes floods nothing.

The worker prints a marker line at each run's start and end; `LogSplitter` cuts the merged
stdout/stderr stream at those markers, in stream order, and keeps each piece as a `CappedLog`:
its first and last bytes, with a note of how much was cut between them.
"""

from __future__ import annotations

import re
import threading

from harness.sandbox.protocol import MARKER

_MARK = MARKER.encode()[:1]  # the record separator that starts every marker
_MARKER_LINE = re.compile(rb"\x1e\[harness\] (run|end) (-?\d+)(?: seed -?\d+)?")  # -1, -2: the host's probes
_LONGEST_MARKER = 80


class CappedLog:
    """Keeps the first half and the last half of `limit` bytes of whatever is written."""

    def __init__(self, limit: int) -> None:
        self.limit = max(int(limit), 2)
        self._head = bytearray()
        self._tail = bytearray()
        self.cut = 0

    def write(self, data: bytes) -> None:
        room = self.limit // 2 - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if not data:
            return
        self._tail += data
        excess = len(self._tail) - (self.limit - self.limit // 2)
        if excess > 0:
            self.cut += excess
            del self._tail[:excess]

    @property
    def size(self) -> int:
        return len(self._head) + len(self._tail) + self.cut

    def text(self) -> str:
        head = self._head.decode("utf-8", errors="replace")
        tail = self._tail.decode("utf-8", errors="replace")
        if self.cut:
            return f"{head}\n[... {self.cut} bytes cut: the log keeps its first and last {self.limit // 2} bytes ...]\n{tail}"
        return head + tail


class LogSplitter:
    """Routes the worker's output to the preamble (key None) or to the run it belongs to.

    Thread-safe: a reader thread feeds it while the host's loop reads finished runs' logs.
    """

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self._logs: dict[int | None, CappedLog] = {}
        self._current: int | None = None
        self._pending = b""
        self._ended: set[int] = set()
        self._cond = threading.Condition()
        self.closed = False

    def feed(self, chunk: bytes) -> None:
        with self._cond:
            data = self._pending + chunk
            self._pending = b""
            while data:
                start = data.find(_MARK)
                if start < 0:
                    self._write(data)
                    break
                self._write(data[:start])
                newline = data.find(b"\n", start)
                if newline < 0:
                    if len(data) - start > _LONGEST_MARKER:
                        self._write(data[start:])
                    else:
                        self._pending = data[start:]
                    break
                match = _MARKER_LINE.fullmatch(data[start:newline])
                if match is None:
                    self._write(data[start : newline + 1])
                elif match.group(1) == b"run":
                    self._current = int(match.group(2))
                else:
                    index = int(match.group(2))
                    self._ended.add(index)
                    # what comes next belongs to the next run's set-up; after a probe, to the preamble
                    self._current = index + 1 if index >= 0 else None
                    self._cond.notify_all()
                data = data[newline + 1 :]

    def close(self) -> None:
        with self._cond:
            if self._pending:
                self._write(self._pending)
                self._pending = b""
            self.closed = True
            self._cond.notify_all()

    def wait_for_end(self, index: int, *, timeout: float) -> bool:
        """Wait until run `index`'s end marker went through (or the stream closed)."""
        with self._cond:
            return self._cond.wait_for(lambda: index in self._ended or self.closed, timeout=timeout)

    def _write(self, data: bytes) -> None:
        if data:
            log = self._logs.get(self._current)
            if log is None:
                limit = self.limit if self._current is not None else max(self.limit // 4, 2)
                log = self._logs[self._current] = CappedLog(limit)
            log.write(data)

    def text(self, index: int | None) -> str:
        with self._cond:
            log = self._logs.get(index)
            return log.text() if log is not None else ""

    def last_line(self, index: int | None) -> str:
        """The last non-empty line of a piece: a dying worker's best one-line explanation."""
        for line in reversed(self.text(index).split("\n")):
            if line.strip():
                return line.strip()
        return ""
