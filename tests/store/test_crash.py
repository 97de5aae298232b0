"""SIGKILL a writer at random points, over and over: the store stays consistent and complete.

The writer prints an ``ack`` line only after a write's transaction committed, so every acked write
must be present exactly once after any crash; unacked ones may or may not be there.
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prism.store import Store

ITEMS = 30

WRITER = r"""
import hashlib, os, sys
from pathlib import Path
from prism.store import RunKey, Store

root, items = Path(sys.argv[1]), int(sys.argv[2])
store = Store.open(root)
store.requeue_interrupted()
last = store.last_weights()
start = 0 if last is None else last[0] + 1
print("ready", flush=True)

def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()

for i in range(start, items):
    blob = store.put_blob(f"zip-{i}".encode() * 50)
    print(f"ack blob {blob.name}", flush=True)
    store.upsert_submission(hotkey=f"hk{i % 4}", zip_sha256=sha(f"sub-{i}"), commit_block=i, kind="full")
    print(f"ack submission {i}", flush=True)
    keys = [RunKey(zip_sha256=sha(f"sub-{i}"), profile="p", profile_version=1, regime=r, seed=0,
                   recipe_mode="reference") for r in ("small", "large")]
    store.enqueue_runs(keys)
    print(f"ack enqueue {i}", flush=True)
    while (key := store.claim_next_run()) is not None:
        manifest = root / "manifests" / f"{key.zip_sha256}-{key.regime}.json"
        manifest.parent.mkdir(exist_ok=True)
        data = f"{key.zip_sha256} {key.regime}".encode()
        tmp = manifest.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, manifest)
        store.finish_run(key, manifest, hashlib.sha256(data).hexdigest())
        print(f"ack run {key.zip_sha256} {key.regime}", flush=True)
    store.record_weights(i, {i % 7: 1.0})
    print(f"ack weights {i}", flush=True)
print("finished", flush=True)
"""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _run_writer(script: Path, root: Path, kill_after: float | None) -> list[str]:
    """Start the writer; SIGKILL it ``kill_after`` seconds after it is ready (None: let it finish)."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), str(ITEMS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    if kill_after is not None and first.startswith("ready"):
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    # Read the rest through the same buffered file object readline used: communicate() reads the
    # raw fd and would lose lines readline had already buffered (e.g. "finished" right after "ready").
    out = proc.stdout.read()
    err = proc.stderr.read() if proc.stderr else ""
    proc.wait(timeout=60)
    if kill_after is None:
        assert proc.returncode == 0, err
    return [first, *out.splitlines()]


def _check_consistent(root: Path, acks: list[str]) -> None:
    with Store.open(root) as store:
        assert store.integrity_ok()
        store.requeue_interrupted()
        runs = store.runs()
        assert all(r.state in ("queued", "done") for r in runs)
        assert len({r.key for r in runs}) == len(runs)
        subs = store.submissions()
        assert len({(s["hotkey"], s["zip_sha256"]) for s in subs}) == len(subs)
        for run in runs:
            if run.state == "done":  # a recorded result always points at its intact manifest
                data = Path(run.manifest_path or "").read_bytes()
                assert hashlib.sha256(data).hexdigest() == run.manifest_sha256
        by_sha = {}
        for run in runs:
            by_sha.setdefault(run.key.zip_sha256, []).append(run)
        weights = {
            int(row[0]): row[1] for row in store._conn.execute("SELECT block, weights FROM weight_sets")
        }
        assert not list((root / "blobs").glob("*/.tmp-*"))  # start-up recovery removed partial blobs
        for blob in (root / "blobs").glob("*/*.zip"):
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.stem
        for line in acks:
            parts = line.split()
            if not parts or parts[0] != "ack":
                continue
            what, rest = parts[1], parts[2:]
            if what == "blob":
                assert (root / "blobs" / rest[0][:2] / rest[0]).exists()
            elif what == "submission":
                i = int(rest[0])
                assert [s["commit_block"] for s in subs if s["zip_sha256"] == _sha(f"sub-{i}")] == [i]
            elif what == "enqueue":
                assert len(by_sha[_sha(f"sub-{int(rest[0])}")]) == 2
            elif what == "run":
                done = [r for r in by_sha[rest[0]] if r.key.regime == rest[1]]
                assert len(done) == 1 and done[0].state == "done"
            elif what == "weights":
                i = int(rest[0])
                assert weights[i] == f'{{"{i % 7}": 1.0}}'


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    generation = 0
    root = tmp_path / f"state-{generation}"
    rng = random.Random(20261123)
    all_acks: list[str] = []
    kills = interrupted = acked = 0
    deadline = time.monotonic() + 20
    while kills < 10 and time.monotonic() < deadline:
        acks = _run_writer(script, root, kill_after=rng.uniform(0.0, 0.15))
        all_acks += acks
        _check_consistent(root, all_acks)  # every ack of every earlier life must still hold
        kills += 1
        acked += sum(1 for a in acks if a.startswith("ack"))
        if "finished" in acks:  # the writer beat the kill: start a fresh store so kills land mid-work
            generation += 1
            root, all_acks = tmp_path / f"state-{generation}", []
        else:
            interrupted += 1
    assert kills >= 3 and interrupted >= 1
    assert acked > 0
    final = _run_writer(script, root, kill_after=None)
    assert final[-1] == "finished"
    all_acks += final
    _check_consistent(root, all_acks)
    with Store.open(root) as store:
        assert len(store.submissions()) == ITEMS
        assert sum(1 for r in store.runs() if r.state == "done") == 2 * ITEMS
        assert store.last_weights() == (ITEMS - 1, {(ITEMS - 1) % 7: 1.0})
        assert store.record_ownership_events([]) == 0
