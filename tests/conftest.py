"""Shared test configuration. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

# Keep torch from oversubscribing the two cores CI has when several test processes run.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def outside_targets() -> list[tuple[str, int]]:
    """Addresses outside this machine that containment tests try to reach from the sandbox.

    Only under bubblewrap, whose network namespace holds nothing but loopback, so the attempt
    fails inside the kernel and no packet exists. Without that isolation the list is empty:
    tests never send traffic off this machine. 192.0.2.1 is TEST-NET-1 (RFC 5737), never routed.
    """
    from prism.evaluator.sandbox import probe_isolation

    return [("192.0.2.1", 443)] if probe_isolation().mode == "bwrap" else []


@dataclass
class HostListener:
    """A TCP listener on the host's loopback that records every connection it accepts."""

    port: int
    accepted: list[object] = field(default_factory=list)


@pytest.fixture
def host_listener() -> Iterator[HostListener]:
    """Containment tests aim sandboxed code at this port; nothing may ever reach it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    state = HostListener(port=listener.getsockname()[1])
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                state.accepted.append(listener.accept())
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join()
        listener.close()
