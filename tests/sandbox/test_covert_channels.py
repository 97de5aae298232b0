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
