"""A seccomp filter for the sandbox: no covert channels through shared inodes (host side, stdlib).

Two sandboxes that run at the same time share the inodes of everything bound into both (the
submission files, ``/usr``, the Python installation). File locks and inotify watches live on the
inode, whatever the mount and pid namespaces, so without this filter one sandboxed process can
signal another: a held-out process could hand its windows to a concurrently running replay, or to
another submission's process that relays them (a measured attack, ``tests/hostile/``).

The filter, loaded by bubblewrap (``--seccomp FD``) for the whole sandboxed tree:

* ``flock`` and the lock and lease commands of ``fcntl`` (``F_GETLK``, ``F_SETLK``, ``F_SETLKW``,
  their ``F_OFD_`` forms, ``F_SETLEASE``, ``F_GETLEASE``, ``F_NOTIFY``) return success **without
  doing anything**: code that locks its own cache files (``torch.compile``) keeps working, and no
  lock is ever visible to another process;
* ``inotify_init``, ``inotify_init1`` and ``fanotify_init`` fail with ``ENOSYS``;
* the page cache is neither observable nor evictable from inside: ``mincore``, ``cachestat``,
  ``preadv2`` and ``pwritev2`` (whose ``RWF_NOWAIT`` reports whether a page is cached) fail with
  ``ENOSYS`` (glibc then falls back to ``preadv``); ``fadvise64``, ``readahead`` and the
  ``MADV_COLD`` / ``MADV_PAGEOUT`` advice of ``madvise`` succeed without doing anything. The page
  cache outlives a process, so without this a held-out process could leave bits in it for the
  replay that runs after it (a measured attack, ``tests/hostile/``);
* a system call of another ABI (x32, or 32-bit ``int 0x80`` on x86-64) fails with ``EPERM``.

Everything else is allowed: the sandbox's namespaces, read-only mounts and limits do the rest.
Timing channels between concurrent processes (CPU, caches) remain; docs/security.md says what
they can carry.
"""

from __future__ import annotations

import os
import platform
import struct
from dataclasses import dataclass

# Classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
_ENOSYS, _EPERM = 38, 1
_X32_BIT = 0x40000000
_ARG1 = 16 + 8  # seccomp_data.args[1], low 32 bits (little-endian)
_ARG2 = 16 + 16  # seccomp_data.args[2]
_FCNTL_CHANNELS = (5, 6, 7, 36, 37, 38, 1024, 1025, 1026)  # F_GETLK .. F_NOTIFY
_MADV_EVICT = (20, 21)  # MADV_COLD, MADV_PAGEOUT


@dataclass(frozen=True)
class _Abi:
    audit_arch: int
    fcntl: int
    madvise: int
    fake: tuple[int, ...]  # syscalls that succeed without effect
    refuse: tuple[int, ...]  # syscalls that fail with ENOSYS
    x32: bool = False


_ABIS = {
    # fake: flock, fadvise64, readahead; refuse: inotify_init, inotify_init1, fanotify_init,
    # mincore, preadv2, pwritev2, cachestat
    "x86_64": _Abi(0xC000003E, fcntl=72, madvise=28, fake=(73, 221, 187),
                   refuse=(253, 294, 300, 27, 327, 328, 451), x32=True),
    "aarch64": _Abi(0xC00000B7, fcntl=25, madvise=233, fake=(32, 223, 213),
                    refuse=(26, 262, 232, 286, 287, 451)),
}  # fmt: skip


class _Program:
    """A tiny assembler: jumps name their target label, resolved into BPF's relative offsets."""

    def __init__(self) -> None:
        self.code: list[tuple[int, str | int, str | int, int]] = []
        self.labels: dict[str, int] = {}

    def emit(self, op: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.code.append((op, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = b""
        for index, (op, jt, jf, k) in enumerate(self.code):
            offsets = [self.labels[j] - index - 1 if isinstance(j, str) else j for j in (jt, jf)]
            out += struct.pack("=HBBI", op, offsets[0], offsets[1], k)
        return out


def filter_program(machine: str | None = None) -> bytes | None:
    """The filter as ``struct sock_filter[]`` bytes for this machine; None for an unknown ABI."""
    abi = _ABIS.get(machine or platform.machine())
    if abi is None:
        return None
    p = _Program()
    p.emit(_LD_W_ABS, 4)  # seccomp_data.arch
    p.emit(_JEQ_K, abi.audit_arch, 0, "deny")
    p.emit(_LD_W_ABS, 0)  # seccomp_data.nr
    if abi.x32:
        p.emit(_JGE_K, _X32_BIT, "deny", 0)
    for nr in abi.fake:
        p.emit(_JEQ_K, nr, "fake", 0)
    for nr in abi.refuse:
        p.emit(_JEQ_K, nr, "enosys", 0)
    p.emit(_JEQ_K, abi.madvise, "madvise", 0)
    p.emit(_JEQ_K, abi.fcntl, 0, "allow")
    p.emit(_LD_W_ABS, _ARG1)
    for cmd in _FCNTL_CHANNELS:
        p.emit(_JEQ_K, cmd, "fake", 0)
    p.emit(_RET_K, _ALLOW)
    p.label("madvise")
    p.emit(_LD_W_ABS, _ARG2)
    for advice in _MADV_EVICT:
        p.emit(_JEQ_K, advice, "fake", 0)
    p.label("allow")
    p.emit(_RET_K, _ALLOW)
    p.label("fake")
    p.emit(_RET_K, _ERRNO | 0)  # returns 0: "done", and nothing was done
    p.label("enosys")
    p.emit(_RET_K, _ERRNO | _ENOSYS)
    p.label("deny")
    p.emit(_RET_K, _ERRNO | _EPERM)
    return p.assemble()


def filter_fd() -> int | None:
    """A readable fd holding the program, positioned at its start (bwrap reads it to EOF)."""
    program = filter_program()
    if program is None:
        return None
    fd = os.memfd_create("prism-seccomp", 0)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


__all__ = ["filter_fd", "filter_program"]
