"""A seccomp filter for the sandbox (`bwrap --seccomp FD`), built with libseccomp through ctypes.

As root, bubblewrap makes no user namespace, so `--disable-userns` does not apply; this filter
takes away the kernel surface a submission never needs and an escape usually does: new
namespaces of any kind (user namespaces above all), mounts, ptrace and reading or writing other
processes' memory, BPF, perf, keyrings, kernel modules, io_uring, userfaultfd and the like. The
calls fail with EPERM (clone3 with ENOSYS, so the C library falls back to clone, whose flags the
filter can inspect). The rest of the system call table stays allowed: PyTorch needs it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import tempfile

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7

# Every namespace flag clone/unshare take (CLONE_NEWTIME, NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
# NEWUSER, NEWPID, NEWNET).
NAMESPACE_FLAGS = (0x00000080, 0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)

DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "mount", "umount2", "pivot_root", "chroot", "setns", "unshare",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
    "acct", "quotactl", "swapon", "swapoff", "reboot", "syslog", "vhangup",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
    "personality", "uselib", "nfsservctl",
)


class SeccompUnavailable(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp is not installed ({exc}); apt-get install libseccomp2") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)  # SCMP_ACT_ERRNO(code)


def available() -> tuple[bool, str]:
    try:
        _lib()
    except SeccompUnavailable as exc:
        return False, str(exc)
    return True, ""


@functools.lru_cache(maxsize=1)
def filter_program() -> bytes:
    """The compiled BPF program (what bwrap's --seccomp reads from its descriptor)."""
    lib = _lib()
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        deny = _errno_action(errno.EPERM)
        for name in DENIED:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                continue  # not on this architecture
            _check(lib.seccomp_rule_add(ctx, deny, number, 0), name)
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0:
            _check(lib.seccomp_rule_add(ctx, _errno_action(errno.ENOSYS), clone3, 0), "clone3")
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        for flag in NAMESPACE_FLAGS:  # clone(flags, ...) with any namespace flag set
            compare = _ArgCmp(0, SCMP_CMP_MASKED_EQ, flag, flag)
            _check(lib.seccomp_rule_add_array(ctx, deny, clone, 1, ctypes.byref(compare)), f"clone flag {flag:#x}")
        with tempfile.TemporaryFile() as handle:
            _check(lib.seccomp_export_bpf(ctx, handle.fileno()), "export")
            handle.seek(0)
            return handle.read()
    finally:
        lib.seccomp_release(ctx)


def _check(code: int, what: str) -> None:
    if code < 0:
        raise SeccompUnavailable(f"libseccomp refused the rule for {what} (error {code})")


def filter_fd() -> int:
    """A readable descriptor holding the program, positioned at its start (for pass_fds)."""
    fd = os.memfd_create("harness-seccomp", os.MFD_CLOEXEC) if hasattr(os, "memfd_create") else None
    if fd is None:
        handle = tempfile.TemporaryFile()
        fd = os.dup(handle.fileno())
        handle.close()
    os.write(fd, filter_program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
