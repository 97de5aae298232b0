"""Filesystem, network and environment containment under bubblewrap, with raw python scripts."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from prism.evaluator.sandbox import Bind, python_binds


def test_sandbox_identity_hosts_and_private_tmp(run_script, tmp_path, monkeypatch):
    monkeypatch.setenv("PRISM_TEST_HOST_SECRET", "wallet-password")
    (Path("/tmp") / f"prism-host-marker-{os.getpid()}").write_text("host tmp", encoding="utf-8")
    try:
        result, log = run_script(
            """
            import os, socket
            print("HOSTNAME", socket.gethostname())
            print("RESOLVE", socket.gethostbyname("sandbox"), socket.gethostbyname("localhost"))
            print("TMP", sorted(os.listdir("/tmp")))
            print("SECRET", os.environ.get("PRISM_TEST_HOST_SECRET"))
            print("HOME", os.environ["HOME"], "CWD", os.getcwd())
            import prism.evaluator.interface  # prism is importable inside
            print("UID-CAPS", open("/proc/self/status").read().split("CapEff:")[1].split()[0])
            """
        )
    finally:
        (Path("/tmp") / f"prism-host-marker-{os.getpid()}").unlink()
    assert result.exit_code == 0, log
    assert "HOSTNAME sandbox" in log
    assert "RESOLVE 127.0.0.1 127.0.0.1" in log
    # /tmp is a fresh tmpfs, not the host's: it holds only the mount points of binds that live
    # under /tmp on the host (a checkout under /tmp binds its prism package there), never the
    # host's files.
    mount_points = sorted({b.target.parts[2] for b in python_binds() if b.target.parts[1:2] == ("tmp",)})
    assert f"TMP {mount_points}" in log
    assert "SECRET None" in log  # the host environment does not leak
    assert "HOME /tmp CWD /tmp" in log
    assert "UID-CAPS 0000000000000000" in log  # every capability dropped


def test_network_only_private_loopback(run_script, outside_targets, host_listener):
    """Connecting to a host listener on 127.0.0.1 and to outside addresses both fail."""
    targets = [("127.0.0.1", host_listener.port), *outside_targets]
    result, log = run_script(
        f"""
        import socket
        for host, port in {targets!r}:
            try:
                socket.create_connection((host, port), timeout=2).close()
                print("CONNECTED", host)
            except OSError as exc:
                print("BLOCKED", host, type(exc).__name__)
        # Loopback inside the sandbox works (torchrun --standalone needs it).
        server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
        socket.create_connection(server.getsockname()).close()
        print("OWN-LOOPBACK-OK")
        """
    )
    assert result.exit_code == 0, log
    assert "CONNECTED" not in log
    assert log.count("BLOCKED") == len(targets)
    assert "OWN-LOOPBACK-OK" in log
    assert host_listener.accepted == []  # the host listener never saw a connection


def test_writes_only_reach_writable_binds(run_script, tmp_path):
    victim = tmp_path / "host" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("original", encoding="utf-8")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    (readonly / "data.txt").write_text("data", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    result, log = run_script(
        f"""
        import os
        targets = ["{victim}", "{victim.parent}/new.txt", "/ro/data.txt", "/ro/new.txt",
                   "/usr/evil", "/etc/evil", "/evil", "/work/main/prism/evil.py"]
        for path in targets:
            try:
                with open(path, "w") as handle:
                    handle.write("pwned")
                print("WROTE", path)
            except OSError as exc:
                print("DENIED", path, exc.errno)
        with open("/out/result.txt", "w") as handle:
            handle.write("allowed")
        os.system("echo pwned > {victim}; touch {victim.parent}/shell.txt")
        print("DONE")
        """,
        binds=[Bind(src=readonly, dest=Path("/ro")), Bind(src=out, dest=Path("/out"), writable=True)],
    )
    assert result.exit_code == 0, log
    assert "WROTE" not in log
    assert log.count("DENIED") == 8
    assert victim.read_text(encoding="utf-8") == "original"
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]
    assert (readonly / "data.txt").read_text(encoding="utf-8") == "data"
    assert sorted(p.name for p in readonly.iterdir()) == ["data.txt"]
    assert (out / "result.txt").read_text(encoding="utf-8") == "allowed"


def test_host_files_outside_binds_are_invisible(run_script, tmp_path):
    secret = tmp_path / "secrets" / "hotkey.json"
    secret.parent.mkdir()
    secret.write_text('{"secretPhrase": "do not leak"}', encoding="utf-8")
    result, log = run_script(
        f"""
        import os
        for path in ["{secret}", "/root/.bittensor", "/etc/shadow", "/etc/passwd", "/work/main/.git/config",
                     "/proc/1/environ"]:
            try:
                with open(path) as handle:
                    print("READ", path, handle.read()[:40].replace(chr(10), " "))
            except OSError as exc:
                print("DENIED", path, type(exc).__name__)
        print("ROOT", sorted(os.listdir("/")))
        """
    )
    assert result.exit_code == 0, log
    assert "do not leak" not in log
    assert f"DENIED {secret}" in log
    assert "DENIED /root/.bittensor" in log
    assert "DENIED /etc/shadow" in log
    assert "DENIED /work/main/.git/config" in log
    # /etc/passwd is the sandbox's synthetic one, not the host's
    assert "READ /etc/passwd root:x:0:0:root:/tmp:/bin/sh" in log
    # pid 1 is the sandbox's own init: its environment is the sandbox's, never the host's
    assert "wallet" not in log.lower()


def test_os_system_escape_attempts_do_nothing_to_host(run_script, tmp_path):
    target = tmp_path / "escape"
    target.mkdir()
    result, log = run_script(
        f"""
        import os, subprocess
        rc = os.system("touch {target}/pwned; mkdir -p {target}/dir; cp /etc/hostname {target}/copied")
        print("SYSTEM-RC", rc)
        proc = subprocess.run(["sh", "-c", "ls {target} 2>&1; id -u; echo hi > /proc/sys/kernel/hostname"],
                              capture_output=True, text=True)
        print("SUBPROCESS", proc.returncode, proc.stdout.strip(), proc.stderr.strip()[:80])
        """
    )
    assert result.exit_code == 0, log
    assert "SYSTEM-RC" in log and "SUBPROCESS" in log
    # The host path lies under /tmp, so inside the sandbox these writes land in its private tmpfs
    # (which vanishes with it); the host directory never changes.
    assert list(target.iterdir()) == []
    assert socket.gethostname() != "hi"
