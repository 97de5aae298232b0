"""The validator's queue stages over a real store: screening holds and releases runs, official
profiles wait for the chain beacon, and paired re-measurements are dispatched for what scoring
asks. Manifests are literal (``prism_test_manifests``), written to disk as the evaluator would."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from prism_test_manifests import PROFILE, PROFILE_VERSION, REGIMES, SEEDS, full_grid, grid, sha

from prism.beacon import BEACON_DELAY_BLOCKS
from prism.chain.local import LocalChain, SubnetParams
from prism.manifest import MANIFEST_FILENAME, RunManifest, write_manifest
from prism.scoring import RULES_V2, ScoringPolicy, compute_weights
from prism.scoring.paired import EvalRequest
from prism.store import RunKey, Store
from prism.validator import EvaluationSettings, LoopState, apply_screening, dispatch, refresh_beacons, sync
from prism.workers.slots import DeviceSlot
from prism.workers.tasks import EvaluationTask, TaskOutcome

POLICY = ScoringPolicy(
    **RULES_V2.model_dump(), profile=PROFILE, profile_version=PROFILE_VERSION, required_regimes=REGIMES,
    required_seeds=SEEDS, screening_regime="small", screening_seed=0,
)  # fmt: skip
UIDS = {"alice": 1, "bob": 2, "carol": 3}


def keys(label: str) -> list[RunKey]:
    return [RunKey(zip_sha256=sha(label), profile=PROFILE, profile_version=PROFILE_VERSION, regime=r, seed=s,
                   recipe_mode="reference") for r in REGIMES for s in SEEDS]  # fmt: skip


def first_cell(label: str) -> RunKey:
    return next(k for k in keys(label) if (k.regime, k.seed) == ("small", 0))


def admit(store: Store, label: str, hotkey: str, block: int) -> None:
    store.upsert_submission(hotkey=hotkey, zip_sha256=sha(label), commit_block=block, kind="architecture_only")
    store.record_intake(sha(label), ok=True)
    store.enqueue_runs(keys(label), commit_block=block, first=first_cell(label))


def finish(store: Store, root: Path, manifest: RunManifest) -> None:
    """Record a manifest as the evaluator would have written it."""
    path = write_manifest(manifest, root / manifest.run_id)
    key = RunKey(zip_sha256=manifest.submission.zip_sha256, profile=PROFILE, profile_version=PROFILE_VERSION,
                 regime=manifest.regime.name, seed=manifest.seed, recipe_mode=manifest.recipe_mode)  # fmt: skip
    store.finish_run(key, path, hashlib.sha256(path.read_bytes()).hexdigest())


def make_settings(tmp_path: Path, *, require_beacon: bool) -> EvaluationSettings:
    return EvaluationSettings(profile="p", data_dir=tmp_path, data_fingerprint=None, runs_dir=tmp_path / "r",
                              calibration_dir=tmp_path / "c", heldout_seed=7, max_attempts=3,
                              require_beacon=require_beacon)  # fmt: skip


def claim_all(store: Store) -> list[RunKey]:
    claimed = []
    while (key := store.claim_next_run()) is not None:
        claimed.append(key)
    return claimed


def test_first_cells_run_first_and_screening_decides_the_rest(tmp_path: Path) -> None:
    with Store.open(tmp_path / "state") as store:
        for label, hotkey, block in (("a", "alice", 1), ("b", "bob", 2), ("c", "carol", 3)):
            admit(store, label, hotkey, block)
        # only the first cells are runnable, in commit order
        assert claim_all(store) == [first_cell("a"), first_cell("b"), first_cell("c")]
        leader = full_grid("a", grid((1.0, 1.0), (1.0, 1.0)), family="A", version="A1")
        for manifest in leader:
            if (manifest.regime.name, manifest.seed) == ("small", 0):
                finish(store, tmp_path / "runs", manifest)
        result = compute_weights(store.records_for_scoring(PROFILE, PROFILE_VERSION), POLICY, UIDS, 10)
        assert apply_screening(store, result, POLICY)["released"] == 3  # alice: no leader before her
        for manifest in leader:
            if (manifest.regime.name, manifest.seed) != ("small", 0):
                assert store.claim_next_run() is not None
                finish(store, tmp_path / "runs", manifest)
        bob = full_grid("b", grid((1.2, 0.7), (0.7, 0.7)), family="B", version="B1")  # first cell far behind
        carol = full_grid("c", grid((1.03, 0.9), (0.9, 0.9)), family="C", version="C1")
        finish(store, tmp_path / "runs", next(m for m in bob if (m.regime.name, m.seed) == ("small", 0)))
        finish(store, tmp_path / "runs", next(m for m in carol if (m.regime.name, m.seed) == ("small", 0)))
        result = compute_weights(store.records_for_scoring(PROFILE, PROFILE_VERSION), POLICY, UIDS, 10)
        counts = apply_screening(store, result, POLICY)
        assert counts == {"released": 3, "screened": 3, "unscreened": 0}
        states = {(r.key.zip_sha256, r.key.regime, r.key.seed): r.state for r in store.runs()}
        assert {s for (z, *_), s in states.items() if z == sha("b") and s != "done"} == {"screened"}
        assert sorted(k.zip_sha256 for k in claim_all(store)) == [sha("c")] * 3  # bob's are never run


def test_a_first_cell_failed_by_the_miner_screens_the_rest(tmp_path: Path) -> None:
    with Store.open(tmp_path / "state") as store:
        admit(store, "a", "alice", 1)
        store.claim_next_run()
        failed = full_grid("a", {("small", 0): 1.0}, family="A", version="A1", failure=("model.raises", "miner"))
        finish(store, tmp_path / "runs", failed[0].model_copy(update={"metrics": failed[0].metrics.model_copy(
            update={"heldout_bpb": None})}))  # fmt: skip
        result = compute_weights(store.records_for_scoring(PROFILE, PROFILE_VERSION), POLICY, UIDS, 10)
        assert apply_screening(store, result, POLICY)["screened"] == 3
        assert store.claim_next_run() is None


def test_official_runs_wait_for_the_beacon_block_and_carry_its_hash(tmp_path: Path) -> None:
    now = [1000.0]
    chain = LocalChain.create(tmp_path / "chain.sqlite3", SubnetParams(netuid=1), block_time_s=1.0,
                              clock=lambda: now[0])  # fmt: skip
    with Store.open(tmp_path / "state") as store:
        commit = sync(chain).block
        admit(store, "a", "alice", commit)
        settings = make_settings(tmp_path, require_beacon=True)
        assert refresh_beacons(store, chain, sync(chain)) == 0  # the beacon block does not exist yet
        assert store.claim_next_run(require_beacon=True) is None
        now[0] += BEACON_DELAY_BLOCKS + 1
        assert refresh_beacons(store, chain, sync(chain)) == 1
        expected = chain.block_hash(commit + BEACON_DELAY_BLOCKS)
        pool = RecordingPool()
        assert dispatch(store, pool, settings, None, LoopState(), paused=False)
        (task,) = pool.submitted
        assert task.beacon == (commit + BEACON_DELAY_BLOCKS, expected) and task.heldout_seed is None


class RecordingPool:
    """A pool that accepts tasks without running them: what the dispatch stage hands over."""

    name = "recording"

    def __init__(self, slots: int = 1) -> None:
        self.slots = [DeviceSlot(kind="cpu", index=i, cpus=(0,)) for i in range(slots)]
        self.submitted: list[EvaluationTask] = []

    def free_slots(self) -> list[DeviceSlot]:
        return self.slots[len(self.submitted) :]

    def in_flight(self) -> list[EvaluationTask]:
        return list(self.submitted)

    def submit(self, task: EvaluationTask, slots_needed: int = 1) -> bool:
        self.submitted.append(task)
        return True

    def poll(self) -> list[TaskOutcome]:
        return []

    def shutdown(self) -> list[RunKey]:
        return [t.key for t in self.submitted]


@pytest.mark.parametrize("known", [False, True])
def test_paired_requests_are_dispatched_once_before_new_runs(tmp_path: Path, known: bool) -> None:
    with Store.open(tmp_path / "state") as store:
        admit(store, "a", "alice", 1)
        admit(store, "b", "bob", 2)
        for label, family in (("a", "A"), ("b", "A")):
            store.release_held(sha(label))
            for manifest in full_grid(label, grid((1.0, 1.0), (1.0, 1.0)), family=family, version=label):
                store.claim_next_run()
                finish(store, tmp_path / "runs", manifest)
        admit(store, "c", "carol", 3)  # a queued run competes for the slot
        request = EvalRequest(zip_sha256=sha("b"), recipe_mode="reference", regime="small", seed=0,
                              run_id="b-reference-small-0", model_zip_sha256=sha("a"), model_recipe_mode="reference",
                              model_run_id="a-reference-small-0")  # fmt: skip
        if known:
            store.record_paired_eval(request, profile_key=POLICY.profile_key, window_bytes=(10,), nats=(1.0,))
        result = compute_weights(store.records_for_scoring(PROFILE, PROFILE_VERSION), POLICY, UIDS, 10)
        result = result.model_copy(update={"leaderboard": result.leaderboard.model_copy(update={"comparisons": (
            result.leaderboard.comparisons[0].model_copy(update={"state": "pending", "requests": (request,)}),
        ) if result.leaderboard.comparisons else ()})})  # fmt: skip
        settings = make_settings(tmp_path, require_beacon=False)
        pool = RecordingPool()
        dispatch(store, pool, settings, result, LoopState(), paused=False)
        (task,) = pool.submitted
        if known:  # measured before: the slot goes to carol's first cell
            assert task.paired is None and task.key == first_cell("c")
        else:
            assert task.paired is not None and task.paired.request == request
            assert task.paired.model_manifest_path == tmp_path / "runs" / "a-reference-small-0" / MANIFEST_FILENAME
            assert task.key.zip_sha256 == sha("b") and task.paired.model_zip_path == store.blob_path(sha("a"))


def test_a_training_variant_waits_for_the_canonical_of_its_commit_and_then_trains_on_it(tmp_path: Path) -> None:
    from prism.validator.evaluation import release_variants

    def variant(label: str, hotkey: str, block: int, target: str) -> None:
        store.upsert_submission(hotkey=hotkey, zip_sha256=sha(label), commit_block=block, kind="training_for_arch",
                                target_architecture_id=target)  # fmt: skip
        store.record_intake(sha(label), ok=True)
        store.enqueue_runs([k.model_copy(update={"zip_sha256": sha(label), "recipe_mode": "submitted"})
                            for k in keys(label)], commit_block=block, hold=True)  # fmt: skip

    with Store.open(tmp_path / "state") as store:
        admit(store, "a", "alice", 1)
        variant("v", "bob", 2, "A")
        variant("w", "carol", 2, "Nope")
        store.release_held(sha("a"))  # alice's first cell passed screening
        result = compute_weights(store.records_for_scoring(PROFILE, PROFILE_VERSION), POLICY, UIDS, 10)
        assert release_variants(store, result) == {"variants_released": 0, "variants_without_family": 0}
        assert {k.zip_sha256 for k in claim_all(store)} == {sha("a")}  # the variants' runs wait
        for manifest in full_grid("a", grid((1.0, 1.0), (1.0, 1.0)), family="A", version="A1"):
            finish(store, tmp_path / "runs", manifest)
        result = compute_weights(store.records_for_scoring(PROFILE, PROFILE_VERSION), POLICY, UIDS, 10)
        assert release_variants(store, result) == {"variants_released": 4, "variants_without_family": 4}
        assert store.architecture_zip_of(sha("v")) == sha("a")  # the family's canonical as of block 2
        settings = make_settings(tmp_path, require_beacon=False)
        pool = RecordingPool()
        dispatch(store, pool, settings, result, LoopState(), paused=False)
        (task,) = pool.submitted
        assert task.key.zip_sha256 == sha("v") and task.architecture_zip_path == store.blob_path(sha("a"))
        assert {r.state for r in store.runs(sha("w"))} == {"screened"}  # no such family: it cannot score
