"""Tiny pre-exec step of the sandbox launcher: join the run's cgroups, set rlimits, exec.

The launcher runs this file as ``python -I -S sandbox_exec.py [--cgroup F]... [--rlimit N=V]...
-- argv...`` instead of using ``subprocess``'s ``preexec_fn``: code run between fork and exec in
a multi-threaded host (the evaluator has log-reader and watchdog threads) can deadlock, while a
fresh interpreter cannot. It imports only the standard library and nothing from ``prism`` (it is
started with ``-I -S``), and it replaces itself with ``argv`` so bubblewrap (or, in degraded mode,
the command itself) inherits the groups and limits.
"""

from __future__ import annotations

import os
import resource

_RLIMITS = {
    "as": resource.RLIMIT_AS,
    "core": resource.RLIMIT_CORE,
    "cpu": resource.RLIMIT_CPU,
    "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
}
# RLIMIT_CPU: SIGXCPU at the soft limit (catchable), SIGKILL at the hard one a little later.
_CPU_GRACE_S = 5
_EXIT_SETUP_FAILED = 126


def _set_rlimit(name: str, value: int) -> None:
    kind = _RLIMITS[name]
    _, hard = resource.getrlimit(kind)
    soft_value = value
    hard_value = value + _CPU_GRACE_S if name == "cpu" else value
    if hard != resource.RLIM_INFINITY:  # never try to raise a hard limit we were given
        soft_value = min(soft_value, hard)
        hard_value = min(hard_value, hard)
    resource.setrlimit(kind, (soft_value, hard_value))


def main(args: list[str]) -> int:
    try:
        split = args.index("--")
    except ValueError:
        os.write(2, b"sandbox_exec: missing -- before the command\n")
        return _EXIT_SETUP_FAILED
    options, command = args[:split], args[split + 1 :]
    if not command:
        os.write(2, b"sandbox_exec: empty command\n")
        return _EXIT_SETUP_FAILED
    for flag, value in zip(options[::2], options[1::2], strict=True):
        try:
            if flag == "--cgroup":
                # Joining before exec means every descendant is born inside the group.
                with open(value, "w", encoding="ascii") as procs:
                    procs.write(str(os.getpid()))
            elif flag == "--rlimit":
                name, _, number = value.partition("=")
                _set_rlimit(name, int(number))
            else:
                os.write(2, f"sandbox_exec: unknown option {flag}\n".encode())
                return _EXIT_SETUP_FAILED
        except (OSError, ValueError, KeyError) as exc:
            os.write(2, f"sandbox_exec: {flag} {value} failed: {exc}\n".encode())
            return _EXIT_SETUP_FAILED
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        os.write(2, f"sandbox_exec: cannot execute {command[0]}: {exc}\n".encode())
    return _EXIT_SETUP_FAILED


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
