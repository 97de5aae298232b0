"""Two sandboxes that run at the same time cannot signal each other through shared inodes.

File locks and inotify watches live on the inode, whatever the namespaces, and every sandbox
binds the same files (the submission, /usr, the Python installation). The seccomp filter makes
lock calls succeed without effect and inotify unavailable (prism/evaluator/seccomp.py).
"""

from __future__ import annotations

import struct
import sys

from prism.evaluator.sandbox import Bind, SandboxSpec, python_binds, start_sandboxed
from prism.evaluator.seccomp import filter_program

SENDER = """
import ctypes, fcntl, os, struct, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
for bit, offset in enumerate((3, 11, 42)):                      # a 3-bit message, as record locks
    fcntl.fcntl(fd, fcntl.F_SETLK, struct.pack("hhqqi", fcntl.F_RDLCK, 0, offset, 1, 0))
fcntl.flock(fd, fcntl.LOCK_SH)                                   # and as a BSD lock
libc = ctypes.CDLL(None, use_errno=True)
print("inotify", libc.inotify_init1(0), ctypes.get_errno(), flush=True)
open(sys.argv[2], "w").write("locked")
time.sleep(6)
"""

RECEIVER = """
import fcntl, os, struct, sys, time
while not os.path.exists(sys.argv[2]):
    time.sleep(0.05)
fd = os.open(sys.argv[1], os.O_RDONLY)
seen = []
for offset in range(64):
    reply = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, offset, 1, 0))
    kind = struct.unpack("hhqqi", reply)[0]
    if kind != fcntl.F_WRLCK:                # the filter leaves the request unanswered
        seen.append(offset)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("flock free", flush=True)
except BlockingIOError:
    print("flock held by another process", flush=True)
print("seen", seen, flush=True)
"""


def test_locks_and_inotify_carry_nothing_between_concurrent_sandboxes(
    bwrap_isolation, small_limits, tmp_path
):
    shared = tmp_path / "shared" / "model.py"  # stands for any file both sandboxes bind
    shared.parent.mkdir()
    shared.write_text("x" * 100)
    flag = tmp_path / "flag" / "ready"  # written by the sender through a writable bind
    flag.parent.mkdir()
    binds = [*python_binds(), Bind(src=shared.parent), Bind(src=flag.parent, writable=True)]

    def start(script: str, log: str):
        spec = SandboxSpec(
            argv=[sys.executable, "-c", script, str(shared), str(flag)], binds=binds, limits=small_limits
        )
        return start_sandboxed(spec, log_path=tmp_path / log, isolation=bwrap_isolation)

    sender, receiver = start(SENDER, "sender.log"), start(RECEIVER, "receiver.log")
    assert receiver.wait().exit_code == 0 and sender.wait().exit_code == 0
    received = (tmp_path / "receiver.log").read_text()
    assert "seen []" in received and "flock free" in received, received
    assert "inotify -1 38" in (tmp_path / "sender.log").read_text()  # ENOSYS


def test_the_filter_program_is_valid_bpf():
    for machine in ("x86_64", "aarch64"):
        program = filter_program(machine)
        assert program is not None and len(program) % 8 == 0
        instructions = [struct.unpack("=HBBI", program[i : i + 8]) for i in range(0, len(program), 8)]
        assert instructions[0] == (0x20, 0, 0, 4)  # load the architecture first
        for index, (op, jt, jf, _) in enumerate(instructions):
            if op in (0x15, 0x35):  # every jump lands inside the program
                assert index + 1 + max(jt, jf) < len(instructions)
        assert instructions[-1][0] == 0x06  # ends with a return
    assert filter_program("sparc") is None


PAGE_CACHE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
addr = libc.mmap(None, size, 1, 1, fd, 0)                        # PROT_READ, MAP_SHARED
vec = ctypes.create_string_buffer(size // 4096 + 1)
print("mincore", libc.mincore(ctypes.c_void_p(0), 4096, vec), ctypes.get_errno(), flush=True)
try:
    os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
    print("nowait allowed", flush=True)
except OSError as exc:
    print("nowait", exc.errno, flush=True)
print("fadvise", os.posix_fadvise(fd, 0, size, os.POSIX_FADV_DONTNEED), flush=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
print("pageout", libc.madvise(addr, size, 21), flush=True)      # MADV_PAGEOUT
"""


def _cached(path) -> bool:
    """Is the first page of ``path`` in the page cache? (RWF_NOWAIT fails on an uncached page)."""
    import os

    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_the_page_cache_is_neither_observable_nor_evictable_inside(bwrap_isolation, small_limits, tmp_path):
    shared = tmp_path / "shared" / "big.bin"  # stands for a large file every sandbox binds
    shared.parent.mkdir()
    shared.write_bytes(b"\1" * (1 << 20))
    shared.read_bytes()
    assert _cached(shared)
    spec = SandboxSpec(argv=[sys.executable, "-c", PAGE_CACHE, str(shared)],
                       binds=[*python_binds(), Bind(src=shared.parent)], limits=small_limits)  # fmt: skip
    assert start_sandboxed(spec, log_path=tmp_path / "pc.log", isolation=bwrap_isolation).wait().exit_code == 0
    out = (tmp_path / "pc.log").read_text()
    # ENOSYS (glibc turns a refused preadv2 with flags into EOPNOTSUPP): nothing to observe with
    assert "mincore -1 38" in out and ("nowait 38" in out or "nowait 95" in out), out
    assert "fadvise None" in out and "pageout 0" in out, out  # "done", and nothing was done:
    assert _cached(shared)  # the pages the sandbox asked to drop are still cached
