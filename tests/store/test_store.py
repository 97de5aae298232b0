"""Validator state: queue semantics, blobs, manifests for scoring, migrations, future schemas."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest
from prism_test_manifests import PROFILE, PROFILE_VERSION, REGIMES, SEEDS, full_grid, grid, sha

from prism.errors import InfrastructureFault, OperatorError
from prism.manifest import write_manifest
from prism.scoring import ScoringPolicy, compute_weights
from prism.store import DB_FILENAME, SCHEMA_VERSION, RunKey, Store


def key(label: str, regime: str = "small", seed: int = 0, mode: str = "reference") -> RunKey:
    return RunKey(
        zip_sha256=sha(label), profile=PROFILE, profile_version=PROFILE_VERSION, regime=regime, seed=seed,
        recipe_mode=mode,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path):
    with Store.open(tmp_path / "state") as opened:
        yield opened


def test_open_creates_wal_database_at_current_schema(tmp_path: Path) -> None:
    with Store.open(tmp_path / "state") as store:
        assert (tmp_path / "state" / DB_FILENAME).exists()
        assert store.schema_version == SCHEMA_VERSION == 3
        assert store.integrity_ok()
    conn = sqlite3.connect(tmp_path / "state" / DB_FILENAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_queue_lifecycle(store: Store) -> None:
    store.upsert_submission(hotkey="alice", zip_sha256=sha("a"), commit_block=10, kind="full")
    keys = [key("a", r, s) for r in REGIMES for s in SEEDS]
    assert store.enqueue_runs(keys) == 4
    assert store.enqueue_runs(keys) == 0  # idempotent
    first = store.claim_next_run()
    assert first == keys[0]
    assert (
        store.fail_run(first, code="sandbox.crashed", fault="infrastructure", message="x", retry=True)
        == "queued"
    )
    second = store.claim_next_run()
    assert second == keys[0]  # oldest first: the retried run comes back before the others
    store.finish_run(second, "m.json", sha("m"))
    store.finish_run(second, "m.json", sha("m"))  # replay after a crash: same result, no-op
    with pytest.raises(InfrastructureFault) as conflict:
        store.finish_run(second, "m.json", sha("other"))
    assert conflict.value.code == "store.result_conflict"
    third = store.claim_next_run()
    assert store.fail_run(third, code="model.raises", fault="miner", message="x", retry=False) == "failed"
    running = store.claim_next_run()
    assert running is not None
    assert store.requeue_interrupted() == 1
    states = {row.key: (row.state, row.attempts) for row in store.runs(sha("a"))}
    assert states[keys[0]] == ("done", 2)
    assert states[third] == ("failed", 1)
    assert states[running] == ("queued", 1)
    with pytest.raises(InfrastructureFault):
        store.finish_run(key("never"), "m.json", sha("m"))


def test_retries_stop_after_max_attempts(store: Store) -> None:
    store.enqueue_runs([key("a")])
    for attempt in range(1, 4):
        claimed = store.claim_next_run()
        state = store.fail_run(
            claimed, code="infra.x", fault="infrastructure", message="", retry=True, max_attempts=3
        )
        assert state == ("queued" if attempt < 3 else "failed")
    assert store.claim_next_run() is None


def test_upsert_keeps_earliest_commit_block(store: Store) -> None:
    first = store.upsert_submission(hotkey="alice", zip_sha256=sha("a"), commit_block=20, kind="full")
    again = store.upsert_submission(hotkey="alice", zip_sha256=sha("a"), commit_block=10, kind="full", uid=3)
    store.upsert_submission(hotkey="alice", zip_sha256=sha("a"), commit_block=30, kind="full")
    rows = store.submissions()
    assert first == again and len(rows) == 1
    assert (rows[0]["commit_block"], rows[0]["uid"]) == (10, 3)


def test_put_blob_is_content_addressed_atomic_and_checked(store: Store) -> None:
    data = b"PK\x03\x04 not really a zip" * 10
    digest = hashlib.sha256(data).hexdigest()
    path = store.put_blob(data, expected_sha256=digest)
    assert path == store.root / "blobs" / digest[:2] / f"{digest}.zip"
    assert path.read_bytes() == data and store.put_blob(data) == path
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(InfrastructureFault) as mismatch:
        store.put_blob(data, expected_sha256=sha("other"))
    assert mismatch.value.code == "store.blob_mismatch"


def _fill(store: Store, tmp_path: Path) -> None:
    """Two architecture submissions with complete reference runs, recorded as a validator would."""
    for label, hotkey, block, bpb in (("a", "alice", 10, 1.3), ("b", "bob", 11, 1.2)):
        store.upsert_submission(
            hotkey=hotkey, zip_sha256=sha(label), commit_block=block, kind="architecture_only"
        )
        store.record_intake(sha(label), ok=True)
        manifests = full_grid(label, grid((bpb, bpb), (bpb, bpb)), family=label.upper(), version=f"{label}1")
        store.enqueue_runs([key(label, m.regime.name, m.seed) for m in manifests])
        for manifest in manifests:
            claimed = store.claim_next_run()
            assert claimed == key(label, manifest.regime.name, manifest.seed)
            path = write_manifest(manifest, tmp_path / "runs" / manifest.run_id)
            store.finish_run(claimed, path, hashlib.sha256(path.read_bytes()).hexdigest())


def test_records_for_scoring_loads_manifests_and_skips_tampered(store: Store, tmp_path: Path) -> None:
    _fill(store, tmp_path)
    store.upsert_submission(
        hotkey="carol", zip_sha256=sha("c"), commit_block=12, kind="full"
    )  # no intake yet
    records = store.records_for_scoring(PROFILE, PROFILE_VERSION)
    assert [(r.hotkey, r.family_id, r.version_id, len(r.runs)) for r in records] == [
        ("alice", "A", "a1", 4),
        ("bob", "B", "b1", 4),
    ]
    assert store.records_for_scoring("other_profile", 1)[1].runs == ()
    policy = ScoringPolicy(
        profile=PROFILE, profile_version=PROFILE_VERSION, required_regimes=REGIMES, required_seeds=SEEDS
    )
    assert compute_weights(records, policy, {"alice": 0, "bob": 1}, 20).weights == {1: 1.0}
    tampered = tmp_path / "runs" / "b-reference-small-0" / "prism_run_manifest.v1.json"
    tampered.write_text(tampered.read_text().replace("1.2", "0.2"))
    records = store.records_for_scoring(PROFILE, PROFILE_VERSION)
    assert len(records[1].runs) == 3
    assert compute_weights(records, policy, {"alice": 0, "bob": 1}, 20).weights == {0: 1.0}


def test_outputs_weights_events_standings(store: Store, tmp_path: Path) -> None:
    _fill(store, tmp_path)
    policy = ScoringPolicy(
        profile=PROFILE, profile_version=PROFILE_VERSION, required_regimes=REGIMES, required_seeds=SEEDS
    )
    result = compute_weights(store.records_for_scoring(PROFILE, PROFILE_VERSION), policy, {"bob": 4}, 30)
    store.record_standings(result.leaderboard)
    store.record_standings(result.leaderboard)  # a snapshot, replaced not appended
    assert store.record_ownership_events(result.events) == len(result.events) > 0
    assert store.record_ownership_events(result.events) == 0
    assert store.ownership_events() == list(result.events)
    store.record_weights(30, result.weights, profile_key=policy.profile_key, rules_version=policy.version)
    store.record_weights(31, {1: 0.25, 4: 0.75})
    assert store.last_weights() == (31, {1: 0.25, 4: 0.75})
    assert store.weight_set(30)["profile_key"] == "test_proxy@1"
    standings = store.standings()
    assert [(f["family_id"], f["leader"]) for f in standings["families"]] == [("B", 1), ("A", 0)]
    assert len(standings["versions"]) == 2 and standings["variants"] == []


def test_v1_database_is_migrated_keeping_data(tmp_path: Path) -> None:
    with Store.open(tmp_path / "old", migrate_to=1) as old:
        assert old.schema_version == 1
        old._conn.execute(  # the v1 columns only
            "INSERT INTO submissions (hotkey, zip_sha256, commit_block, kind, created_at) VALUES (?, ?, 1, 'full', 0)",
            ("alice", sha("a")),
        )
        old._conn.execute(  # a v1 weight set has no profile_key column yet
            "INSERT INTO weight_sets (block, weights, created_at) VALUES (5, ?, 0)", (json.dumps({"3": 1.0}),)
        )
        assert "profile_key" not in {r[1] for r in old._conn.execute("PRAGMA table_info(weight_sets)")}
    with Store.open(tmp_path / "old") as new:
        assert new.schema_version == SCHEMA_VERSION
        assert new.last_weights() == (5, {3: 1.0})
        assert new.weight_set(5)["profile_key"] == ""
        assert len(new.submissions()) == 1
        indexes = {r[1] for r in new._conn.execute("PRAGMA index_list(runs)")}
        assert "runs_by_state" in indexes


def test_database_from_the_future_is_refused(tmp_path: Path) -> None:
    Store.open(tmp_path / "db").close()
    conn = sqlite3.connect(tmp_path / "db" / DB_FILENAME)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(OperatorError) as refused:
        Store.open(tmp_path / "db")
    assert refused.value.code == "store.future_schema"
    assert "99" in str(refused.value) and "upgrade PRISM" in str(refused.value)


def test_garbage_file_is_a_clear_operator_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OperatorError) as refused:
        Store.open(bad)
    assert refused.value.code == "store.corrupt"
