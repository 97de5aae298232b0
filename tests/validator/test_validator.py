"""The validator loop: planning, intake outcomes, and whole validators on the embedded chain.

The integration tests run the real thing: wallets, a LocalChain file, miner processes serving
real ZIPs over signed HTTP, validator processes that fetch, sandbox-train and score them with a
tiny profile, and set weights on the chain.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prism.chain.local import LocalChain, SubnetParams
from prism.chain.wallets import create_wallet, hotkey_ss58
from prism.net.dendrite import FetchResult, FetchStatus
from prism.profiles import load_profile
from prism.scoring import policy_for_profile
from prism.store import RunKey, Store
from prism.submission import load_submission
from prism.validator import (
    INFRA_BACKOFF_S,
    Candidate,
    EvaluationSettings,
    LoopState,
    admit,
    back_off_after_infrastructure_failures,
    build_arg_parser,
    config_from_args,
    dispatch,
    intake,
    planned_runs,
    record_outcome,
    score,
    set_weights,
    sync,
    weights_due,
)
from prism.validator.evaluation import release_in_flight
from prism.workers.tasks import TaskOutcome

REPO = Path(__file__).resolve().parents[2]
TINY_PROFILE = Path(__file__).with_name("tiny_profile.yaml")
NETUID = 3


def test_planned_runs_follow_kind_and_hooks() -> None:
    profile = load_profile("gpu_proxy_eval")
    cells = len(profile.regimes) * len(profile.seeds)
    gpt = load_submission(REPO / "examples" / "gpt")  # full, defines configure_optimizer
    tiny = load_submission(REPO / "examples" / "tiny")  # full, no hooks
    gpt_modes = sorted({k.recipe_mode for k in planned_runs(gpt, profile)})
    assert gpt_modes == ["reference", "submitted"]
    assert len(planned_runs(gpt, profile)) == 2 * cells
    tiny_runs = planned_runs(tiny, profile)
    assert {k.recipe_mode for k in tiny_runs} == {"reference"}
    assert {(k.regime, k.seed) for k in tiny_runs} == {
        (r.name, s) for r in profile.regimes for s in profile.seeds
    }


def test_intake_records_miner_faults_and_backs_off_unreachable(tmp_path: Path) -> None:
    profile = load_profile(str(TINY_PROFILE))
    good = load_submission(REPO / "examples" / "tiny")
    bad_sha = "b" * 64
    candidates = [
        Candidate(hotkey="hk-mismatch", uid=1, sha256=bad_sha, commit_block=10),
        Candidate(hotkey="hk-down", uid=2, sha256="c" * 64, commit_block=11),
        Candidate(hotkey="hk-good", uid=3, sha256=good.zip_sha256, commit_block=12),
    ]
    results = [
        FetchResult(hotkey="hk-mismatch", uid=1, status=FetchStatus.HASH_MISMATCH, expected_sha256=bad_sha,
                    code="net.hash_mismatch", fault="miner", retryable=False),
        FetchResult(hotkey="hk-down", uid=2, status=FetchStatus.UNREACHABLE, expected_sha256="c" * 64,
                    code="net.unreachable", fault="infrastructure", retryable=True),
        FetchResult(hotkey="hk-good", uid=3, status=FetchStatus.OK, expected_sha256=good.zip_sha256,
                    data=good.zip_bytes, sha256=good.zip_sha256),
    ]  # fmt: skip
    state = LoopState()
    with Store.open(tmp_path / "v.sqlite3") as store:
        counts = intake(results, candidates, store, profile, policy_for_profile(profile), state, block=20)
        rows = {row["hotkey"]: row for row in store.submissions()}
        assert counts == {"fetched": 1, "rejected": 0, "unreachable": 1, "miner_fault": 1, "queued_runs": 1}
        assert rows["hk-mismatch"]["intake_ok"] == 0
        assert json.loads(rows["hk-mismatch"]["intake_codes"]) == ["net.hash_mismatch"]
        assert "hk-down" not in rows  # never penalized, only retried later
        assert state.unreachable["hk-down"] > 20
        assert rows["hk-good"]["intake_ok"] == 1
        assert store.blob_path(good.zip_sha256).read_bytes() == good.zip_bytes
        assert [r.state for r in store.runs(good.zip_sha256)] == ["queued"]


def _store_with_one_run(tmp_path: Path) -> tuple[Store, RunKey, EvaluationSettings]:
    profile = load_profile(str(TINY_PROFILE))
    good = load_submission(REPO / "examples" / "tiny")
    store = Store.open(tmp_path / "v.sqlite3")
    admit(store, Candidate(hotkey="hk", uid=1, sha256=good.zip_sha256, commit_block=3), good.zip_bytes, profile,
          policy_for_profile(profile))  # fmt: skip
    (key,) = [run.key for run in store.runs()]
    settings = EvaluationSettings(profile=str(TINY_PROFILE), data_dir=tmp_path, data_fingerprint=None,
                                  runs_dir=tmp_path / "runs", calibration_dir=tmp_path / "calibration",
                                  heldout_seed=None, max_attempts=2, require_beacon=False)  # fmt: skip
    return store, key, settings


def _failed(key: RunKey, state: str, code: str) -> TaskOutcome:
    return TaskOutcome(key=key, state=state, code=code, message="x")  # type: ignore[arg-type]


def test_our_failures_are_retried_then_failed_never_blamed_on_the_miner(tmp_path: Path) -> None:
    store, key, settings = _store_with_one_run(tmp_path)
    state = LoopState()
    with store:
        assert store.claim_next_run() == key
        first = record_outcome(store, _failed(key, "infra_fault", "worker.crashed"), settings, state)
        assert first["infra"] and first["state"] == "queued" and first["code"] == "worker.crashed"
        assert state.infra_streak == 1 and state.evaluation_paused_until > time.monotonic()
        assert store.claim_next_run() == key
        second = record_outcome(store, _failed(key, "infra_fault", "infra.gpu"), settings, state)
        assert (second["state"], second["infra"]) == ("failed", True)
        (row,) = store.runs()
        assert (row.state, row.failure_fault, row.attempts) == ("failed", "infrastructure", 2)
        assert state.last_result_step == 0  # our failures are not results


def test_a_miner_fault_is_a_result_and_not_retried(tmp_path: Path) -> None:
    store, key, settings = _store_with_one_run(tmp_path)
    state = LoopState(step=4)
    with store:
        store.claim_next_run()
        out = record_outcome(store, _failed(key, "miner_fault", "static.forbidden_import"), settings, state)
        assert out["state"] == "failed" and not out["infra"]
        (row,) = store.runs()
        assert (row.state, row.failure_fault) == ("failed", "miner")
        assert state.last_result_step == 4 and state.infra_streak == 0


@pytest.mark.slow
def test_shutdown_kills_the_worker_and_requeues_without_using_an_attempt(tmp_path: Path) -> None:
    from prism.workers import make_slots
    from prism.workers.local import LocalPool

    store, key, settings = _store_with_one_run(tmp_path)
    pool = LocalPool(make_slots("cpu", workers=1), tmp_path / "workers")
    with store:
        assert dispatch(store, pool, settings, None, LoopState(), paused=False) == [
            f"{key.zip_sha256[:12]} tiny/7 reference"
        ]
        (worker,) = [p.pid for p in (r.process for r in pool._running.values())]
        assert release_in_flight(store, pool) == 1
        (row,) = store.runs()
        assert (row.state, row.attempts) == ("queued", 0)
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)


def test_a_run_that_kills_its_validator_every_time_stops_blocking_the_queue(tmp_path: Path) -> None:
    store, key, _ = _store_with_one_run(tmp_path)
    with store:
        for expected in (1, 1, 0):  # claimed and "crashed" (left running) three times
            assert store.claim_next_run() == key
            assert store.requeue_interrupted(max_attempts=3) == expected
        (row,) = store.runs()
        assert (row.state, row.failure_code, row.attempts) == ("failed", "validator.interrupted", 3)


def test_infrastructure_failures_back_off_exponentially() -> None:
    state = LoopState()
    back_off_after_infrastructure_failures(state, True)
    first = state.evaluation_paused_until - time.monotonic()
    back_off_after_infrastructure_failures(state, True)
    second = state.evaluation_paused_until - time.monotonic()
    assert 25 < first <= INFRA_BACKOFF_S and 2 * INFRA_BACKOFF_S - 5 < second <= 2 * INFRA_BACKOFF_S
    back_off_after_infrastructure_failures(state, False)
    assert state.infra_streak == 0


def _store_with_two_submissions(tmp_path: Path) -> tuple[Store, list[RunKey], EvaluationSettings]:
    store, key, settings = _store_with_one_run(tmp_path)
    profile = load_profile(str(TINY_PROFILE))
    other = load_submission(REPO / "examples" / "single_file.py")
    admit(store, Candidate(hotkey="hk2", uid=2, sha256=other.zip_sha256, commit_block=4), other.zip_bytes, profile,
          policy_for_profile(profile))  # fmt: skip
    keys = [key, *(run.key for run in store.runs(other.zip_sha256))]
    assert len(keys) == 2 and keys[0].zip_sha256 != keys[1].zip_sha256
    return store, keys, settings


def test_host_errors_of_one_submission_do_not_pause_the_validator(tmp_path: Path) -> None:
    """A submission that provokes an exception in PRISM's host code (issue 9 class 7) gets its
    retries, like any failure of ours, but no validator-wide pause: that would be a free stall
    of every other miner's evaluation. The same error from a second submission is a bug every
    run hits, and then the loop backs off before it burns every queued run's attempts."""
    store, (first, second), settings = _store_with_two_submissions(tmp_path)
    state = LoopState()
    with store:
        for attempt in (1, 2):
            assert store.claim_next_run() == first
            out = record_outcome(
                store, _failed(first, "infra_fault", "validator.host_error"), settings, state
            )
            assert out["infra"] and out["state"] == ("queued" if attempt == 1 else "failed")
            assert state.evaluation_paused_until == 0.0 and state.infra_streak == 0
        assert store.claim_next_run() == second
        record_outcome(store, _failed(second, "infra_fault", "validator.host_error"), settings, state)
        assert state.infra_streak == 1 and state.evaluation_paused_until > time.monotonic()


def test_a_host_error_neither_pauses_nor_clears_an_outage_streak(tmp_path: Path) -> None:
    store, (first, _), settings = _store_with_two_submissions(tmp_path)
    state = LoopState()
    with store:
        assert store.claim_next_run() == first
        record_outcome(store, _failed(first, "infra_fault", "worker.crashed"), settings, state)
        paused_until = state.evaluation_paused_until
        claimed = store.claim_next_run()
        assert claimed is not None
        record_outcome(store, _failed(claimed, "infra_fault", "validator.host_error"), settings, state)
        assert (state.infra_streak, state.evaluation_paused_until) == (1, paused_until)
        claimed = store.claim_next_run()
        assert claimed is not None
        record_outcome(store, _failed(claimed, "miner_fault", "eval.crashed"), settings, state)
        assert state.infra_streak == 0 and state.host_error_submissions == set()


def test_weights_follow_the_chains_tempo_and_rate_limit(tmp_path: Path) -> None:
    now = [1000.0]
    chain = LocalChain.create(tmp_path / "c.sqlite3", SubnetParams(netuid=NETUID, tempo=5, weights_rate_limit=2,
                              commitment_rate_limit=1), block_time_s=1.0, clock=lambda: now[0])  # fmt: skip
    wallet = create_wallet("val", "default", tmp_path / "w")
    miner = create_wallet("miner", "default", tmp_path / "w")
    chain.register_wallet(wallet, stake=10.0, validator_permit=True)
    uid = chain.register_wallet(miner, stake=1.0)
    hotkey, state = hotkey_ss58(wallet), LoopState()
    assert weights_due(sync(chain), hotkey, state)  # never set: due now
    chain.set_weights(wallet, {uid: 1.0}, 1)
    now[0] += 4  # 4 blocks later: inside the tempo
    assert not weights_due(sync(chain), hotkey, state)
    now[0] += 1  # a full tempo since the last set
    assert weights_due(sync(chain), hotkey, state)
    state.weights_retry_block = sync(chain).block + 3  # backing off after a refusal
    assert not weights_due(sync(chain), hotkey, state)


def test_a_refused_set_backs_off_a_tempo_on_the_embedded_chain(tmp_path: Path) -> None:
    chain = LocalChain.create(tmp_path / "c.sqlite3", SubnetParams(netuid=NETUID, tempo=5), block_time_s=1.0,
                              clock=lambda: 1000.0)  # fmt: skip
    wallet = create_wallet("val", "default", tmp_path / "w")
    chain.register_wallet(wallet, stake=10.0, validator_permit=False)  # no permit: the chain refuses
    uid = chain.register_wallet(create_wallet("miner", "default", tmp_path / "w"))
    state = LoopState()
    with Store.open(tmp_path / "v.sqlite3") as store:
        view = sync(chain)
        result = score(store, policy_for_profile(load_profile(str(TINY_PROFILE))), view)
        scored = result.model_copy(update={"weights": {uid: 1.0}})
        outcome = set_weights(chain, wallet, scored, store, view, state)
        assert outcome == {"set": 0, "reason": "chain.not_permitted", "retry_block": view.block + 5}
        assert not weights_due(sync(chain), hotkey_ss58(wallet), state)
        # Nothing qualifies and the embedded chain has no subnet owner: nothing is set.
        assert set_weights(chain, wallet, result, store, view, LoopState())["set"] == 0


def test_a_hotkey_serving_bad_bytes_does_not_taint_the_honest_committer(tmp_path: Path) -> None:
    profile = load_profile(str(TINY_PROFILE))
    good = load_submission(REPO / "examples" / "tiny")
    honest = Candidate(hotkey="hk-honest", uid=1, sha256=good.zip_sha256, commit_block=10)
    copier = Candidate(hotkey="hk-copier", uid=2, sha256=good.zip_sha256, commit_block=12)
    results = [
        FetchResult(hotkey="hk-honest", uid=1, status=FetchStatus.OK, expected_sha256=good.zip_sha256,
                    data=good.zip_bytes, sha256=good.zip_sha256),
        FetchResult(hotkey="hk-copier", uid=2, status=FetchStatus.HASH_MISMATCH, expected_sha256=good.zip_sha256,
                    code="net.hash_mismatch", fault="miner", retryable=False),
    ]  # fmt: skip
    with Store.open(tmp_path / "v.sqlite3") as store:
        intake(results, [honest, copier], store, profile, policy_for_profile(profile), LoopState(), block=20)
        rows = {row["hotkey"]: row for row in store.submissions()}
        assert rows["hk-honest"]["intake_ok"] == 1
        assert rows["hk-copier"]["intake_ok"] == 0


def test_relative_paths_in_flags_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = build_arg_parser().parse_args(["--netuid", "1", "--neuron.state_dir", "state", "--chain", "local",
                                          "--chain.path", "chain.sqlite3", "--data", "shards"])  # fmt: skip
    config = config_from_args(args)
    assert config.state_dir == tmp_path / "state"
    assert config.chain.path == tmp_path / "chain.sqlite3"
    assert config.data_dir == tmp_path / "shards"


# --------------------------------------------------------------------------------------------
# Whole validators on the embedded chain.


def _flags(chain_path: Path, wallets: Path, name: str) -> list[str]:
    return ["--netuid", str(NETUID), "--wallet.name", name, "--wallet.hotkey", "default",
            "--wallet.path", str(wallets), "--chain", "local", "--chain.path", str(chain_path)]  # fmt: skip


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _status(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None


def _run_states(state_dir: Path) -> list[str]:
    db = state_dir / "validator.sqlite3"
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        try:
            return [row[0] for row in conn.execute("SELECT state FROM runs")]
        except sqlite3.OperationalError:
            return []


def _wait(predicate, timeout_s: float, what: str, procs: list[subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        for proc in procs:
            if proc.poll() is not None:
                tail = "\n".join(p.read_text()[-3000:] for p in sorted(logs.glob("*.log")))
                pytest.fail(f"a neuron exited ({proc.returncode}) while waiting for {what}\n{tail}")
        time.sleep(0.5)
    tail = "\n".join(p.read_text()[-3000:] for p in sorted(logs.glob("*.log")))
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def _finished(state_dir: Path, submissions: int) -> bool:
    status = _status(state_dir)
    if not status or status["submissions"] < submissions or status["pending_runs"]:
        return False
    # weights set after the last run finished, so they reflect every result
    return status["weights_current"] and bool(status["last_weights"])


@pytest.mark.slow
def test_killed_validator_and_second_validator_set_identical_weights(tmp_path: Path) -> None:
    """SIGKILL with two runs in flight + restart loses and duplicates nothing; a validator with two
    workers and one with a single worker set the same weights."""
    from prism.data import ensure_offline_corpus

    wallets, logs = tmp_path / "wallets", tmp_path / "logs"
    logs.mkdir()
    chain_path = tmp_path / "chain.sqlite3"
    chain = LocalChain.create(chain_path, SubnetParams(netuid=NETUID, tempo=6, weights_rate_limit=2,
                                                       commitment_rate_limit=2), block_time_s=0.5)  # fmt: skip
    names = {"val-a": True, "val-b": True, "miner-tiny": False, "miner-single": False}
    for name, is_validator in names.items():
        wallet = create_wallet(name, "default", wallets)
        chain.register_wallet(wallet, stake=100.0 if is_validator else 1.0, validator_permit=is_validator)
    data_dir = tmp_path / "data"
    ensure_offline_corpus(data_dir, tokenizer="byte")

    submissions = {
        "miner-tiny": REPO / "examples" / "tiny",
        "miner-single": REPO / "examples" / "single_file.py",
    }
    procs = []
    for name, path in submissions.items():
        argv = [sys.executable, "-m", "prism.miner", *_flags(chain_path, wallets, name), "--submission", str(path),
                "--axon.ip", "127.0.0.1", "--axon.port", "0", "--sync_interval", "1"]  # fmt: skip
        procs.append(_spawn(argv, logs / f"{name}.log"))

    def validator(name: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "prism.validator", *_flags(chain_path, wallets, name),
                "--neuron.state_dir", str(tmp_path / name), "--profile", str(TINY_PROFILE),
                "--data", str(data_dir), "--scoring.waive", "profile.not_official",
                "--loop_interval", "0.5", "--wandb.off",
                "--evaluation.workers", "2" if name == "val-a" else "1"]  # fmt: skip
        return _spawn(argv, logs / f"{name}.log")

    try:
        val_a, val_b = validator("val-a"), validator("val-b")
        procs += [val_a, val_b]
        # Kill validator A while both its workers train (two sandboxed runs in flight).
        _wait(lambda: _run_states(tmp_path / "val-a").count("running") == 2, 240, "val-a to run two at once",
              procs, logs)  # fmt: skip
        os.killpg(val_a.pid, signal.SIGKILL)
        val_a.wait()
        procs.remove(val_a)
        val_a = validator("val-a")
        procs.append(val_a)
        for name in ("val-a", "val-b"):
            _wait(lambda n=name: _finished(tmp_path / n, 2), 420, f"{name} to finish", procs, logs)

        results = {}
        for name in ("val-a", "val-b"):
            with Store.open(tmp_path / name / "validator.sqlite3") as store:
                runs = store.runs()
                keys = [r.key for r in runs]
                assert len(keys) == len(set(keys)), "a run was duplicated"
                assert all(r.state == "done" for r in runs), [(r.key.regime, r.state) for r in runs]
                assert all(r.manifest_path and Path(r.manifest_path).exists() for r in runs)
                results[name] = (sorted((k.zip_sha256, k.recipe_mode) for k in keys), store.last_weights())
        (keys_a, (_, weights_a)), (keys_b, (_, weights_b)) = results["val-a"], results["val-b"]
        assert keys_a == keys_b and len(keys_a) == 2
        assert weights_a == weights_b and weights_a, (weights_a, weights_b)
        # the weights reached the chain: both validators' rows name the same uids
        on_chain = LocalChain(chain_path, NETUID).weights()
        hotkeys = {name: hotkey_ss58(create_wallet(name, "default", wallets)) for name in ("val-a", "val-b")}
        assert on_chain[hotkeys["val-a"]].weights == on_chain[hotkeys["val-b"]].weights
        restarted_attempts = [r.attempts for r in Store.open(tmp_path / "val-a" / "validator.sqlite3").runs()]
        assert restarted_attempts == [2, 2]  # both killed runs were re-queued once and finished
    finally:
        for proc in procs:
            _stop(proc)
    # Nothing survives: neither neurons nor a sandbox orphaned by the SIGKILL (the restarted
    # validator reaps sandboxes whose owner died).
    assert subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True).returncode == 1


def test_wandb_callback_logs_stage_numbers_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prism.validator import WandbCallback, WandbConfig

    monkeypatch.setenv("WANDB_SILENT", "true")
    callback = WandbCallback(WandbConfig(mode="offline", dir=tmp_path), hotkey="hk")
    callback.on_stage_end("evaluate", {"heldout_bpb": 3.5, "run": "run-x"})
    callback.close()
    # wandb's service process writes the offline file; finish() can return a moment before the
    # last record is on disk, so wait for it (bounded) rather than read once.
    deadline = time.monotonic() + 20
    while True:
        logged = list(tmp_path.rglob("*.wandb"))
        if any(b"heldout_bpb" in path.read_bytes() for path in logged) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert logged, "wandb wrote no offline run file"
    assert any(b"heldout_bpb" in path.read_bytes() for path in logged), [
        (str(p.relative_to(tmp_path)), p.stat().st_size) for p in tmp_path.rglob("*") if p.is_file()
    ]


@pytest.mark.slow
def test_weights_are_set_every_tempo_while_a_long_run_is_in_flight(tmp_path: Path) -> None:
    """No stage waits for a run: with the only worker busy for a minute, weights keep coming."""
    import shutil

    from prism.data import ensure_offline_corpus

    wallets, logs = tmp_path / "wallets", tmp_path / "logs"
    logs.mkdir()
    chain_path = tmp_path / "chain.sqlite3"
    chain = LocalChain.create(chain_path, SubnetParams(netuid=NETUID, tempo=4, weights_rate_limit=2,
                                                       commitment_rate_limit=2), block_time_s=0.5)  # fmt: skip
    for name, is_validator in {"val": True, "miner-fast": False, "miner-slow": False}.items():
        chain.register_wallet(create_wallet(name, "default", wallets), stake=100.0 if is_validator else 1.0,
                              validator_permit=is_validator)  # fmt: skip
    data_dir = tmp_path / "data"
    ensure_offline_corpus(data_dir, tokenizer="byte")
    slow = shutil.copytree(REPO / "examples" / "tiny", tmp_path / "slow")
    model = slow / "src" / "model.py"
    model.write_text("import time\n" + model.read_text().replace(
        "def build_model(ctx):\n", "def build_model(ctx):\n    time.sleep(90)  # a long run\n"))  # fmt: skip

    def miner(name: str, path: Path) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "prism.miner", *_flags(chain_path, wallets, name), "--submission", str(path),
                "--axon.ip", "127.0.0.1", "--axon.port", "0", "--sync_interval", "1"]  # fmt: skip
        return _spawn(argv, logs / f"{name}.log")

    state_dir = tmp_path / "val"
    procs = [miner("miner-fast", REPO / "examples" / "tiny")]
    procs.append(_spawn([sys.executable, "-m", "prism.validator", *_flags(chain_path, wallets, "val"),
                         "--neuron.state_dir", str(state_dir), "--profile", str(TINY_PROFILE), "--data", str(data_dir),
                         "--scoring.waive", "profile.not_official", "--loop_interval", "0.5", "--wandb.off"],
                        logs / "val.log"))  # fmt: skip
    try:
        _wait(lambda: _finished(state_dir, 1), 240, "the first weights", procs, logs)
        procs.append(miner("miner-slow", slow))
        _wait(lambda: "running" in _run_states(state_dir), 120, "the slow run to start", procs, logs)
        hotkey = hotkey_ss58(create_wallet("val", "default", wallets))
        seen: set[int] = set()
        deadline, reader = time.monotonic() + 20, LocalChain(chain_path, NETUID)  # 40 blocks = 10 tempos
        while time.monotonic() < deadline:
            seen.add(reader.weights()[hotkey].block)
            time.sleep(0.5)
        reader.close()
        assert "running" in _run_states(state_dir)  # the slow run is still in flight
        assert len(seen) >= 3, seen  # and weights were set again and again meanwhile
    finally:
        for proc in procs:
            _stop(proc)
