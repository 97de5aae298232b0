"""Shared test configuration. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import os

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
