"""Shared test configuration. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Keep torch from oversubscribing the two cores CI has when several test processes run.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")


def pytest_configure(config: pytest.Config) -> None:
    """One PRISM cache per test session (compute calibrations are shared by its tests, and a
    developer's own ~/.cache/prism is never touched)."""
    if "PRISM_CACHE_DIR" not in os.environ:
        import tempfile

        os.environ["PRISM_CACHE_DIR"] = tempfile.mkdtemp(prefix="prism-test-cache-")


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


def prepare_text_corpus(texts: list[str], root: Path, *, shard_tokens: int) -> Path:
    """Real byte-level shards (``prism data prepare`` on a jsonl file) from a list of texts."""
    from prism.data import LocalFileSource, prepare_dataset

    root.mkdir(parents=True, exist_ok=True)
    source = root / "docs.jsonl"
    rows = [{"id": f"doc-{i}", "text": text} for i, text in enumerate(texts)]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    prepare_dataset(
        LocalFileSource(source, fmt="jsonl"), "byte", root / "prepared", shard_tokens=shard_tokens
    )
    return root / "prepared"


@pytest.fixture(scope="session")
def text_corpus_builder():
    """``prepare_text_corpus`` as a fixture, for conftests that cannot import this module."""
    return prepare_text_corpus
