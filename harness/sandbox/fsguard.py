"""Bounded, iterative walks over folders a sandbox could write: measure them, empty them.

The host must never recurse into what a submission made: a 1,500-deep chain of folders breaks
Python's recursive walkers (`os.walk`, `shutil.rmtree` raise RecursionError) and paths past
PATH_MAX. These work on directory file descriptors with an explicit stack, never follow
symbolic links, and stop counting at a cap instead of running for as long as the tree is large.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class TreeSize:
    """What a walk saw; `complete` is False when it stopped at the entry or depth cap."""

    entries: int
    bytes: int
    depth: int
    complete: bool


def measure(path: str | os.PathLike, *, max_entries: int, max_depth: int) -> TreeSize:
    """Entries (files, folders, links) below `path` and their apparent sizes, within the caps."""
    entries = total = deepest = 0
    try:
        root = os.open(path, _DIR_FLAGS)
    except OSError:
        return TreeSize(0, 0, 0, True)
    stack: list[tuple[int, int]] = [(root, 0)]
    complete = True
    try:
        while stack:
            fd, depth = stack.pop()
            try:
                names = os.listdir(fd)
            except OSError:
                names = []
            for name in names:
                entries += 1
                if entries > max_entries:
                    complete = False
                    break
                try:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError:
                    continue
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
                if stat.S_ISDIR(info.st_mode):
                    if depth + 1 > max_depth:
                        complete = False
                        continue
                    deepest = max(deepest, depth + 1)
                    try:
                        stack.append((os.open(name, _DIR_FLAGS, dir_fd=fd), depth + 1))
                    except OSError:
                        continue
            os.close(fd)
            if not complete and entries > max_entries:
                break
    finally:
        for fd, _ in stack:
            os.close(fd)
    return TreeSize(min(entries, max_entries + 1), total, deepest, complete)


def clear(path: str | os.PathLike) -> int:
    """Remove everything inside `path` (not `path` itself), however deep; the count removed.

    Depth-first with one open descriptor per level, so memory grows with depth, never with
    the path's length. Call it only when nothing can write there any more.
    """
    try:
        root = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return 0
    removed = 0
    # each frame: (descriptor, names still to visit, the name of this folder in its parent)
    stack: list[tuple[int, list[str], str | None]] = [(root, _names(root), None)]
    try:
        while stack:
            fd, names, own_name = stack[-1]
            if names:
                name = names.pop()
                try:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(info.st_mode):
                    if info.st_mode & 0o700 != 0o700:  # a folder the sandbox made chmod 0
                        try:
                            os.chmod(name, (info.st_mode & 0o7777) | 0o700, dir_fd=fd)
                        except OSError:
                            pass
                    try:
                        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        continue
                    stack.append((child, _names(child), name))
                else:
                    try:
                        os.unlink(name, dir_fd=fd)
                        removed += 1
                    except FileNotFoundError:
                        pass
                continue
            stack.pop()
            os.close(fd)
            if own_name is not None and stack:
                try:
                    os.rmdir(own_name, dir_fd=stack[-1][0])
                    removed += 1
                except FileNotFoundError:
                    pass
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return removed


def remove(path: str | os.PathLike) -> None:
    """`path` and everything in it, as `clear` does; nothing when it is already gone."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(info.st_mode):
        clear(path)
        os.rmdir(path)
    else:
        os.unlink(path)


def _names(fd: int) -> list[str]:
    try:
        return os.listdir(fd)
    except OSError:
        return []
