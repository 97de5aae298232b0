"""The PRISM validator: a loop over explicit state.

Each step is a short pipeline of stage functions, each taking what the previous one produced:

    sync (chain view) -> discover (new commitments) -> fetch (dendrite) -> intake + enqueue
      -> evaluate (one queued run, sandboxed) -> score (pure) -> set weights (once per tempo)

Everything the validator learns goes into the store (``prism.store``) before the next stage
runs, so a validator killed at any point restarts from the store: runs that were in flight are
re-queued, finished runs are never repeated, and the weights it sets are a pure function of the
stored results and the block.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from prism import __version__
from prism.chain import Chain, ChainError, ChainRejected, ChainTimeout, Commitment, Metagraph, RateLimited
from prism.chain.commitments import parse_commitment
from prism.chain.weights import FallbackRule, conform_weights, weights_version_key
from prism.errors import OperatorError, PrismError
from prism.manifest import MANIFEST_FILENAME, RecipeMode
from prism.neuron_config import (
    ChainConfig,
    WalletConfig,
    add_common_args,
    chain_config,
    neuron_parser,
    setup_logging,
    wallet_config,
)
from prism.profiles import Profile, load_profile
from prism.scoring import ScoringPolicy, WeightResult, compute_weights, policy_for_profile
from prism.store import DB_FILENAME, RunKey, Store

logger = logging.getLogger(__name__)

# After a set_weights timeout the extrinsic may still land: wait this many blocks before the chain's
# LastUpdate decides whether to send again.
TIMEOUT_SETTLE_BLOCKS = 3


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FetchConfig(_Strict):
    timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=2, ge=0)
    max_concurrency: int = Field(default=8, ge=1)


class WandbConfig(_Strict):
    mode: Literal["off", "offline", "online"] = "off"
    project: str = "prism-validator"
    dir: Path | None = None


class ValidatorConfig(_Strict):
    """Everything the validator needs, built once at the entry point and passed down."""

    netuid: int = Field(ge=0)
    wallet: WalletConfig
    chain: ChainConfig
    state_dir: Path
    profile: str = "gpu_proxy_eval"
    data_dir: Path | None = Field(default=None, description="prepared token shards (prism data prepare)")
    heldout_seed: int | None = Field(
        default=None, description="held-out sampling seed; profile default if unset"
    )
    waive_reasons: tuple[str, ...] = Field(
        default=(), description="ineligibility reasons scoring tolerates (local demo: profile.not_official)"
    )
    max_attempts: int = Field(default=3, ge=1, description="infrastructure retries per run")
    loop_interval_s: float = Field(default=5.0, gt=0)
    fetch: FetchConfig = FetchConfig()
    wandb: WandbConfig = WandbConfig()
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many loop steps (tests)")
    weights_fallback: FallbackRule = Field(
        default="owner", description="when nothing qualifies: owner (burn to the subnet owner's uid) or skip"
    )


# --------------------------------------------------------------------------------------------
# Stage callbacks: logging and optional wandb, fed on each stage's end.


class StageCallback(Protocol):
    def on_stage_end(self, stage: str, payload: dict[str, Any]) -> None: ...


class LoggingCallback:
    def on_stage_end(self, stage: str, payload: dict[str, Any]) -> None:
        if payload:
            logger.info("%s: %s", stage, json.dumps(payload, sort_keys=True, default=str))


class WandbCallback:
    """Logs every stage's numbers to wandb (offline unless configured online)."""

    def __init__(self, config: WandbConfig, *, hotkey: str) -> None:
        import wandb  # optional at run time; only imported when enabled

        self._run = wandb.init(
            project=config.project,
            mode=config.mode,
            dir=str(config.dir) if config.dir else None,
            config={"hotkey": hotkey, "prism": __version__},
            reinit=True,
        )

    def on_stage_end(self, stage: str, payload: dict[str, Any]) -> None:
        numbers = {f"{stage}/{k}": v for k, v in payload.items() if isinstance(v, int | float)}
        if numbers:
            self._run.log(numbers)

    def close(self) -> None:
        self._run.finish()


# --------------------------------------------------------------------------------------------
# Stage data objects.


@dataclass(frozen=True)
class ChainView:
    block: int
    metagraph: Metagraph
    commitments: dict[str, Commitment]


@dataclass(frozen=True)
class Candidate:
    """A committed submission the store has not seen yet."""

    hotkey: str
    uid: int
    sha256: str
    commit_block: int


@dataclass
class LoopState:
    """What the loop carries from one step to the next (all of it derivable from the store)."""

    step: int = 0
    last_weights_block: int | None = None
    last_result_step: int = 0  # the step that last finished (or failed) a run
    infra_streak: int = 0  # consecutive runs that failed on our side
    evaluation_paused_until: float = 0.0  # time.monotonic() before which no run is claimed
    last_weights_step: int | None = None  # the step that last set weights, since start-up
    weights_retry_block: int | None = None  # no weight set before this block (after a refusal)
    unreachable: dict[str, int] = field(default_factory=dict)  # hotkey -> block of last failed fetch


# --------------------------------------------------------------------------------------------
# Stages.


def sync(chain: Chain) -> ChainView:
    """One metagraph read (neurons, LastUpdate, hyperparameters) and one commitments read per step;
    every later stage of the step uses this view."""
    metagraph = chain.metagraph()
    return ChainView(block=metagraph.block, metagraph=metagraph, commitments=chain.commitments())


def discover(view: ChainView, known: Callable[[str, str], bool], state: LoopState) -> list[Candidate]:
    """Registered hotkeys whose latest commitment the store has no verdict for yet."""
    by_hotkey = view.metagraph.by_hotkey()
    found: list[Candidate] = []
    for hotkey, commitment in sorted(view.commitments.items()):
        neuron = by_hotkey.get(hotkey)
        parsed = parse_commitment(commitment.data)
        if neuron is None or not parsed.ok or known(hotkey, parsed.sha256 or ""):
            continue
        retry_after = state.unreachable.get(hotkey)
        if retry_after is not None and view.block < retry_after:
            continue
        found.append(Candidate(hotkey, neuron.uid, parsed.sha256 or "", commitment.block))
    return found


def fetch(candidates: list[Candidate], view: ChainView, dendrite_factory: Callable[[], Any]) -> list[Any]:
    """Download every candidate concurrently (bounded, with timeouts); results in input order."""
    if not candidates:
        return []
    by_hotkey = view.metagraph.by_hotkey()
    targets = [(by_hotkey[c.hotkey], c.sha256) for c in candidates]

    async def _fetch_all() -> list[Any]:
        async with dendrite_factory() as dendrite:
            return await dendrite.fetch_many(targets)

    return asyncio.run(_fetch_all())


def planned_runs(submission: Any, profile: Profile) -> list[RunKey]:
    """The evaluation cells a submission needs under ``profile``.

    Architecture competitors (``full``, ``architecture_only``) get reference-recipe runs at every
    regime and seed. Training competitors get submitted-recipe runs: every ``training_for_arch``,
    and a ``full`` submission that defines at least one training hook (without hooks its recipe
    is metadata only, and its reference runs already measure it).
    """
    cells = [(r.name, s) for r in profile.regimes for s in profile.seeds]
    modes: list[RecipeMode] = []
    if submission.kind in ("full", "architecture_only"):
        modes.append("reference")
    hooks = set(submission.hooks) & TRAINING_HOOKS
    if submission.kind == "training_for_arch" or (submission.kind == "full" and hooks):
        modes.append("submitted")
    return [
        RunKey(
            zip_sha256=submission.zip_sha256,
            profile=profile.name,
            profile_version=profile.version,
            regime=regime,
            seed=seed,
            recipe_mode=mode,
        )
        for mode in modes
        for regime, seed in cells
    ]


def _record_rejection(store: Store, candidate: Candidate, code: str, zip_path: Path) -> None:
    """ZIP bytes intake refused: a verdict on the hash, for every hotkey that commits it."""
    store.upsert_submission(hotkey=candidate.hotkey, zip_sha256=candidate.sha256,
                            commit_block=candidate.commit_block, kind="full", uid=candidate.uid)  # fmt: skip
    store.record_intake(candidate.sha256, ok=False, codes=[code], zip_path=zip_path)


def admit(store: Store, candidate: Candidate, data: bytes, profile: Profile) -> int | None:
    """Store the ZIP, run intake, record the verdict and queue the runs it needs.

    Returns how many runs were newly queued, or None when intake rejected the ZIP.
    """
    from prism.submission import SubmissionError, load_submission_bytes

    zip_path = store.put_blob(data, expected_sha256=candidate.sha256)
    try:
        submission = load_submission_bytes(data)
    except SubmissionError as exc:
        _record_rejection(store, candidate, exc.code, zip_path)
        logger.info("intake rejected %s from %s: %s", candidate.sha256[:12], candidate.hotkey[:10], exc)
        return None
    store.upsert_submission(
        hotkey=candidate.hotkey,
        zip_sha256=candidate.sha256,
        commit_block=candidate.commit_block,
        kind=submission.kind,
        uid=candidate.uid,
        target_architecture_id=submission.architecture_id,
        training_fingerprint=submission.training_fingerprint,
    )
    store.record_intake(candidate.sha256, ok=True, zip_path=zip_path)
    return store.enqueue_runs(planned_runs(submission, profile))


def intake(results: list[Any], candidates: list[Candidate], store: Store, profile: Profile, state: LoopState,
           block: int) -> dict[str, Any]:  # fmt: skip
    """Admit every fetched ZIP; record miner faults; back off from miners that did not answer."""
    counts = {"fetched": 0, "rejected": 0, "unreachable": 0, "miner_fault": 0, "queued_runs": 0}
    for candidate, result in zip(candidates, results, strict=True):
        if not result.ok:
            if result.is_miner_fault:
                counts["miner_fault"] += 1  # this hotkey served bad bytes; the hash itself is not judged
                store.record_fetch_failure(hotkey=candidate.hotkey, zip_sha256=candidate.sha256,
                                           commit_block=candidate.commit_block, uid=candidate.uid,
                                           code=result.code or "net.fetch_failed")  # fmt: skip
            else:  # unreachable or not serving yet: try again a few blocks later, never penalized
                counts["unreachable"] += 1
                state.unreachable[candidate.hotkey] = block + UNREACHABLE_BACKOFF_BLOCKS
            logger.info("fetch %s from %s: %s (%s)", candidate.sha256[:12], candidate.hotkey[:10],
                        result.status, result.message)  # fmt: skip
            continue
        counts["fetched"] += 1
        state.unreachable.pop(candidate.hotkey, None)
        queued = admit(store, candidate, result.data, profile)
        if queued is None:
            counts["rejected"] += 1
        else:
            counts["queued_runs"] += queued
    return counts


@dataclass(frozen=True)
class EvaluationSettings:
    profile: Profile
    data_dir: Path
    runs_dir: Path
    heldout_seed: int | None
    max_attempts: int


def evaluate_next(store: Store, settings: EvaluationSettings, evaluate: Callable[..., list[Any]],
                  in_flight: threading.Event) -> dict[str, Any]:  # fmt: skip
    """Claim one queued run, evaluate it in the sandbox and record the outcome. {} when idle.

    A miner fault (intake, or a failed manifest blaming the submission) is a result. Anything
    else that goes wrong is ours: the run is retried up to ``max_attempts`` claims and the
    outcome says ``infra`` so the loop backs off. A shutdown signal kills the sandbox and puts the
    run back in the queue without using an attempt.
    """
    from prism.submission import SubmissionError

    key = store.claim_next_run()
    if key is None:
        return {}
    logger.info("evaluating %s %s/%s seed %d (%s)", key.zip_sha256[:12], key.profile, key.regime, key.seed,
                key.recipe_mode)  # fmt: skip
    started = time.monotonic()
    in_flight.set()
    try:
        # attempt=0: the run directory is keyed by what is measured, so a manifest written before a
        # crash is reused, and an infrastructure-failed one is recomputed in place.
        manifests = evaluate(
            store.blob_path(key.zip_sha256),
            profile=settings.profile,
            data_dir=settings.data_dir,
            out_dir=settings.runs_dir,
            recipe_mode=key.recipe_mode,
            regimes=[key.regime],
            seeds=[key.seed],
            heldout_seed=settings.heldout_seed,
            attempt=0,
            progress=False,
            calibration_dir=settings.runs_dir.parent / "calibration",  # this validator's own hardware
        )
        manifest = manifests[0]
        path = settings.runs_dir / manifest.run_id / MANIFEST_FILENAME
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except KeyboardInterrupt:
        store.release_run(key)
        raise
    except SubmissionError as exc:
        store.fail_run(key, code=exc.code, fault="miner", message=exc.message, retry=False)
        return {"run": key.regime, "state": "failed", "code": exc.code}
    except Exception as exc:  # ours, whatever it is: never the miner's fault, never a crash loop
        code = exc.code if isinstance(exc, PrismError) else "validator.evaluate_crashed"
        logger.exception("evaluation of %s failed on our side", key.zip_sha256[:12])
        state = store.fail_run(key, code=code, fault="infrastructure", message=str(exc), retry=True,
                               max_attempts=settings.max_attempts)  # fmt: skip
        return {"run": key.regime, "state": state, "code": code, "infra": True}
    finally:
        in_flight.clear()
    failure = manifest.status.failure
    if failure is not None and failure.fault == "infrastructure":
        state = store.fail_run(key, code=failure.code, fault="infrastructure", message=failure.message,
                               retry=True, max_attempts=settings.max_attempts)  # fmt: skip
        return {"run": key.regime, "state": state, "code": failure.code, "infra": True}
    store.finish_run(key, path, digest)
    if manifest.submission.family_id and manifest.submission.version_id:
        store.set_identity(key.zip_sha256, family_id=manifest.submission.family_id,
                           version_id=manifest.submission.version_id)  # fmt: skip
    return {
        "run": manifest.run_id,
        "state": manifest.status.state,
        "heldout_bpb": manifest.metrics.heldout_bpb,
        "seconds": round(time.monotonic() - started, 1),
    }


def score(store: Store, policy: ScoringPolicy, view: ChainView) -> WeightResult:
    records = store.records_for_scoring(policy.profile, policy.profile_version)
    result = compute_weights(records, policy, view.metagraph.hotkey_to_uid, view.block)
    store.record_standings(result.leaderboard)
    store.record_ownership_events(result.events)
    return result


def weights_due(view: ChainView, hotkey: str, state: LoopState) -> bool:
    """Once per tempo and never inside the weights rate limit, judged by the chain's ``LastUpdate`` in
    this step's metagraph (so a restart, a timed-out call that landed anyway, or a reused state
    directory cannot fool it), and not while backing off after a refusal."""
    if state.weights_retry_block is not None and view.block < state.weights_retry_block:
        return False
    params = view.metagraph.hyperparams
    since = view.metagraph.blocks_since_last_update(hotkey)
    return since is None or since >= max(params.tempo, params.weights_rate_limit, 1)


def set_weights(chain: Chain, wallet: Any, result: WeightResult, store: Store, view: ChainView,
                state: LoopState, fallback: FallbackRule = "owner") -> dict[str, Any]:  # fmt: skip
    """Fit the scored weights to the subnet's rules (``prism.chain.weights``) and set them. A refusal
    backs off (a tempo; the rate limit's window when rate-limited); a timeout is re-judged by the
    chain's ``LastUpdate`` a few blocks later. Timeouts and connection errors propagate."""
    conformed = conform_weights(dict(result.weights), view.metagraph, fallback=fallback)
    if not conformed.weights:
        return {"set": 0, "reason": conformed.note or "nothing scored"}
    version = weights_version_key(view.metagraph.hyperparams)
    params = view.metagraph.hyperparams
    try:
        block = chain.set_weights(wallet, conformed.weights, version)
    except RateLimited as exc:
        state.weights_retry_block = view.block + max(params.weights_rate_limit, 1)
        logger.warning(
            "set_weights rate-limited (%s); not retrying before block %d", exc, state.weights_retry_block
        )
        return {"set": 0, "reason": exc.code}
    except ChainTimeout:
        state.weights_retry_block = view.block + TIMEOUT_SETTLE_BLOCKS
        raise
    except (ChainRejected, OperatorError) as exc:  # a verdict of the chain (or our own setup)
        state.weights_retry_block = view.block + max(params.tempo, 1)
        logger.warning("set_weights rejected by the chain (%s); backing off until block %d (one tempo)",
                       exc, state.weights_retry_block)  # fmt: skip
        return {"set": 0, "reason": exc.code, "retry_block": state.weights_retry_block}
    state.weights_retry_block = None
    store.record_weights(block, conformed.weights, profile_key=result.leaderboard.profile_key,
                         rules_version=result.leaderboard.rules_version)  # fmt: skip
    state.last_weights_block = block
    state.last_weights_step = state.step
    logger.info("weights set at block %d (%s, version_key %d, %s): %s", block, conformed.rule, version,
                "commit-reveal" if params.commit_reveal else "plain", conformed.note or len(conformed.weights))  # fmt: skip
    return {"set": 1, "block": block, "uids": len(conformed.weights), "rule": conformed.rule}


# --------------------------------------------------------------------------------------------
# The loop.


@dataclass
class ValidatorParts:
    """Everything the loop talks to, built once from the config (tests inject their own)."""

    config: ValidatorConfig
    chain: Chain
    wallet: Any
    hotkey: str
    store: Store
    profile: Profile
    policy: ScoringPolicy
    data_dir: Path
    evaluate: Callable[..., list[Any]]
    dendrite_factory: Callable[[], Any]
    callbacks: list[StageCallback] = field(default_factory=list)
    in_flight: threading.Event = field(default_factory=threading.Event)  # an evaluation is running


def _emit(parts: ValidatorParts, stage: str, payload: dict[str, Any]) -> None:
    for callback in parts.callbacks:
        callback.on_stage_end(stage, payload)


def step(parts: ValidatorParts, state: LoopState, stop: threading.Event) -> LoopState:
    """One pass over the pipeline. Chain and network trouble skips the stage, never the loop."""
    state.step += 1
    try:
        view = sync(parts.chain)
    except PrismError as exc:
        logger.warning("chain sync failed (%s); retrying next step", exc)
        return state
    known = {
        (row["hotkey"], row["zip_sha256"])
        for row in parts.store.submissions()
        if row["intake_ok"] is not None
    }
    candidates = discover(view, lambda hotkey, sha: (hotkey, sha) in known, state)
    copies = [c for c in candidates if parts.store.blob_path(c.sha256).exists()]
    fresh = [c for c in candidates if c not in copies]
    results = fetch(fresh, view, parts.dendrite_factory)
    _emit(parts, "fetch", intake(results, fresh, parts.store, parts.profile, state, view.block))
    _register_copies(copies, parts.store, parts.profile)
    if not stop.is_set() and time.monotonic() >= state.evaluation_paused_until:
        outcome = evaluate_next(parts.store, _settings(parts), parts.evaluate, parts.in_flight)
        if outcome:
            state.last_result_step = state.step
            _back_off_after_infrastructure_failures(state, bool(outcome.get("infra")))
        _emit(parts, "evaluate", outcome)
    result = score(parts.store, parts.policy, view)
    _emit(parts, "score", {"families": len(result.leaderboard.families), "scored_uids": len(result.weights)})
    try:
        if weights_due(view, parts.hotkey, state):
            _emit(parts, "weights", set_weights(parts.chain, parts.wallet, result, parts.store, view, state,
                                                parts.config.weights_fallback))  # fmt: skip
    except PrismError as exc:  # a timeout, an unreachable node: the chain's LastUpdate decides next step
        logger.warning("set_weights failed (%s); the chain is re-read before any retry", exc)
    write_status(parts.config.state_dir, _status(parts, view, state))
    return state


def _back_off_after_infrastructure_failures(state: LoopState, infra: bool) -> None:
    """Consecutive failures on our side (GPU gone, disk full) pause evaluation with exponential
    backoff, so an outage does not burn every queued run's attempts in seconds."""
    state.infra_streak = state.infra_streak + 1 if infra else 0
    if infra:
        delay = min(INFRA_BACKOFF_S * 2 ** (state.infra_streak - 1), INFRA_BACKOFF_MAX_S)
        state.evaluation_paused_until = time.monotonic() + delay
        logger.warning(
            "infrastructure failure #%d in a row: pausing evaluation for %.0f s", state.infra_streak, delay
        )


def _register_copies(copies: list[Candidate], store: Store, profile: Profile) -> None:
    """A hash the store already holds (another hotkey committed the same bytes): no download."""
    for candidate in copies:
        admit(store, candidate, store.blob_path(candidate.sha256).read_bytes(), profile)


def _settings(parts: ValidatorParts) -> EvaluationSettings:
    return EvaluationSettings(
        profile=parts.profile,
        data_dir=parts.data_dir,
        runs_dir=parts.config.state_dir / "runs",
        heldout_seed=parts.config.heldout_seed,
        max_attempts=parts.config.max_attempts,
    )


def _status(parts: ValidatorParts, view: ChainView, state: LoopState) -> dict[str, Any]:
    runs = parts.store.runs()
    by_state: dict[str, int] = {}
    for run in runs:
        by_state[run.state] = by_state.get(run.state, 0) + 1
    last = parts.store.last_weights()
    return {
        "hotkey": parts.hotkey,
        "block": view.block,
        "step": state.step,
        "submissions": len(parts.store.submissions()),
        "runs": by_state,
        "pending_runs": by_state.get("queued", 0) + by_state.get("running", 0),
        "last_weights_block": last[0] if last else None,
        "last_weights": {str(uid): w for uid, w in (last[1] if last else {}).items()},
        # True once weights were set after the latest result: the chain reflects every result.
        "weights_current": state.last_weights_step is not None
        and state.last_weights_step >= state.last_result_step,
        "updated_at": time.time(),
    }


def build_parts(config: ValidatorConfig) -> ValidatorParts:
    """Open the chain, wallet, store and data the config names; fail early with clear errors."""
    from prism.chain import open_chain
    from prism.chain.wallets import hotkey_ss58, load_wallet
    from prism.evaluator.host import evaluate
    from prism.net.dendrite import Dendrite, DendriteConfig

    wallet = load_wallet(config.wallet.name, config.wallet.hotkey, config.wallet.path)
    hotkey = hotkey_ss58(wallet)
    chain = open_chain(config.chain.kind, netuid=config.netuid, path=config.chain.path,
                       network=config.chain.network, endpoint=config.chain.endpoint,
                       read_timeout_s=config.chain.read_timeout_s,
                       write_timeout_s=config.chain.write_timeout_s)  # fmt: skip
    _check_registration(chain, hotkey, config.netuid)
    profile = load_profile(config.profile)
    data_dir = _resolve_data_dir(config, profile)
    store = Store.open(config.state_dir / DB_FILENAME)
    policy = policy_for_profile(profile, waived_reasons=frozenset(config.waive_reasons))
    dendrite_config = DendriteConfig(timeout_s=config.fetch.timeout_s, retries=config.fetch.retries,
                                     max_concurrency=config.fetch.max_concurrency)  # fmt: skip
    callbacks: list[StageCallback] = [LoggingCallback()]
    if config.wandb.mode != "off":
        callbacks.append(WandbCallback(config.wandb, hotkey=hotkey))
    return ValidatorParts(
        config=config, chain=chain, wallet=wallet, hotkey=hotkey, store=store, profile=profile,
        policy=policy, data_dir=data_dir, evaluate=evaluate,
        dendrite_factory=lambda: Dendrite(wallet, dendrite_config), callbacks=callbacks,
    )  # fmt: skip


def _check_registration(chain: Chain, hotkey: str, netuid: int) -> None:
    """An unregistered hotkey stops the validator; a chain that cannot be read now does not (the
    loop's sync retries it every step)."""
    try:
        neuron = chain.metagraph().neuron(hotkey)
    except ChainError as exc:
        logger.warning("cannot check the registration now (%s); the loop retries the chain", exc)
        return
    if neuron is None:
        raise OperatorError(
            f"hotkey {hotkey} is not registered on subnet {netuid}; register it first",
            code="validator.not_registered",
        )
    if not neuron.validator_permit:
        logger.warning("hotkey %s has no validator permit: miners may refuse its requests", hotkey)


def _resolve_data_dir(config: ValidatorConfig, profile: Profile) -> Path:
    from prism.data import ensure_offline_corpus, verify_data_dir

    if config.data_dir is not None:
        verify_data_dir(config.data_dir)
        return config.data_dir
    if profile.official:
        raise OperatorError(
            f"profile {profile.name} needs prepared FineWeb-Edu shards: pass --data DIR "
            "(see docs/validator.md, `prism data prepare`)",
            code="validator.no_data",
        )
    target = config.state_dir / "data" / f"offline-{profile.tokenizer}"
    ensure_offline_corpus(target, tokenizer=profile.tokenizer)
    return target


def reap_stale_sandboxes() -> None:
    from prism.evaluator.sandbox import reap_stale_sandboxes as reap

    reaped = reap()
    if reaped:
        logger.info("removed %d sandboxes left behind by a dead process", len(reaped))


def run(
    config: ValidatorConfig, *, parts: ValidatorParts | None = None, stop: threading.Event | None = None
) -> int:
    """Run the validator until stopped (SIGTERM/SIGINT) or ``config.max_steps``."""
    stop = stop or threading.Event()
    parts = parts or build_parts(config)
    reap_stale_sandboxes()  # sandboxes a killed predecessor left behind would hold CPU and memory
    requeued = parts.store.requeue_interrupted(max_attempts=config.max_attempts)
    last = parts.store.last_weights()
    state = LoopState(last_weights_block=last[0] if last else None)
    logger.info("validator %s on netuid %d, profile %s (%d runs re-queued)", parts.hotkey, config.netuid,
                parts.profile.key, requeued)  # fmt: skip
    try:
        while not stop.is_set():
            state = step(parts, state, stop)
            if config.max_steps is not None and state.step >= config.max_steps:
                break
            runnable = time.monotonic() >= state.evaluation_paused_until
            if not runnable or not any(run.state == "queued" for run in parts.store.runs()):
                stop.wait(config.loop_interval_s)  # idle or backing off: poll the chain again later
    except KeyboardInterrupt:
        logger.info("stopped during an evaluation; its run is back in the queue")
    finally:
        for callback in parts.callbacks:
            close = getattr(callback, "close", None)
            if close is not None:
                close()
        parts.store.close()
    return 0


INFRA_BACKOFF_S = 30.0
INFRA_BACKOFF_MAX_S = 900.0
TRAINING_HOOKS = frozenset({"configure_optimizer", "compute_loss", "train_step", "inference_logits", "infer"})
UNREACHABLE_BACKOFF_BLOCKS = 5


def install_stop_handlers(stop: threading.Event, in_flight: threading.Event) -> None:
    """SIGTERM / SIGINT stop the loop. Between stages it ends after the current one; during an
    evaluation the sandbox is killed at once and the run goes back to the queue (a training run
    can take hours, longer than any service manager waits)."""

    def _handler(signum: int, _frame: object) -> None:
        already = stop.is_set()
        stop.set()
        if already or in_flight.is_set():
            raise KeyboardInterrupt
        logger.info("signal %d: stopping after the current stage", signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handler)


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    """A small JSON status file (atomic) for operators and ``prism localnet`` to watch."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / "status.json.tmp"
    tmp.write_text(json.dumps(status, indent=2, sort_keys=True, default=str), encoding="utf-8")
    tmp.replace(state_dir / "status.json")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = neuron_parser("neurons/validator.py", "PRISM validator")
    add_common_args(parser)
    parser.add_argument("--neuron.state_dir", dest="state_dir", default="~/.prism/validator",
                        help="store, fetched ZIPs, run manifests and artifacts")  # fmt: skip
    parser.add_argument(
        "--profile", default="gpu_proxy_eval", help="evaluation profile (see docs/evaluator.md)"
    )
    parser.add_argument("--data", dest="data_dir", default=None,
                        help="prepared token shards (prism data prepare); unset: the offline corpus, "
                        "non-official profiles only")  # fmt: skip
    parser.add_argument("--heldout_seed", type=int, default=None,
                        help="seed of this validator's held-out windows; unset: the profile's")  # fmt: skip
    parser.add_argument("--scoring.waive", dest="waive", action="append", default=[],
                        help="ineligibility reason to tolerate (local demos: profile.not_official)")  # fmt: skip
    parser.add_argument("--max_attempts", type=int, default=3, help="infrastructure retries per run")
    parser.add_argument("--loop_interval", type=float, default=5.0, help="seconds between idle steps")
    parser.add_argument(
        "--max_steps", type=int, default=None, help="stop after N loop steps; unset: run until stopped"
    )
    parser.add_argument("--weights.fallback", dest="weights_fallback", choices=("owner", "skip"), default="owner",
                        help="when no miner qualifies: owner sets all weight on the subnet owner's uid "
                        "(burns this validator's share of miner emission), skip sets no weights")  # fmt: skip
    parser.add_argument("--fetch.timeout", dest="fetch_timeout", type=float, default=30.0,
                        help="seconds per download attempt from a miner")  # fmt: skip
    parser.add_argument("--fetch.concurrency", dest="fetch_concurrency", type=int, default=8,
                        help="miners downloaded from at once")  # fmt: skip
    parser.add_argument("--wandb.off", dest="wandb_off", action="store_true", help="disable wandb logging")
    parser.add_argument("--wandb.mode", dest="wandb_mode", choices=("offline", "online"), default="offline",
                        help="wandb mode when enabled")  # fmt: skip
    parser.add_argument(
        "--wandb.project", dest="wandb_project", default="prism-validator", help="wandb project"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> ValidatorConfig:
    state_dir = Path(args.state_dir).expanduser().resolve()  # manifests are stored by absolute path
    return ValidatorConfig(
        netuid=args.netuid,
        wallet=wallet_config(args),
        chain=chain_config(args),
        state_dir=state_dir,
        profile=args.profile,
        data_dir=Path(args.data_dir).expanduser().resolve() if args.data_dir else None,
        heldout_seed=args.heldout_seed,
        waive_reasons=tuple(args.waive),
        max_attempts=args.max_attempts,
        loop_interval_s=args.loop_interval,
        max_steps=args.max_steps,
        weights_fallback=args.weights_fallback,
        fetch=FetchConfig(timeout_s=args.fetch_timeout, max_concurrency=args.fetch_concurrency),
        wandb=WandbConfig(
            mode="off" if args.wandb_off else args.wandb_mode, project=args.wandb_project, dir=state_dir
        ),
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``neurons/validator.py`` and ``python -m prism.validator``."""
    args = build_arg_parser().parse_args(argv)
    setup_logging(args.logging_debug)
    try:
        config = config_from_args(args)
    except ValueError as exc:  # pydantic validation of the flags
        print(f"error: invalid flags: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    try:
        parts = build_parts(config)
        install_stop_handlers(stop, parts.in_flight)
        return run(config, parts=parts, stop=stop)
    except PrismError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
