"""The validator loop: build the parts from the config, then step until stopped.

Each step is a short pipeline of stage functions over explicit state:

    sync (one chain view) -> discover -> fetch -> intake (runs queued or held)
      -> beacons -> collect (pool outcomes) -> score (pure, when something changed)
      -> screening (held runs released or screened) -> dispatch (free slots)
      -> set weights (once per tempo) -> status

No stage waits for a run: runs execute in a pool of workers (``prism.workers``) and are
collected when they end, so weights are set on time while long runs are in flight. Everything
the validator learns is in the store before the next stage runs, so a validator killed at any
point restarts from the store: runs in flight are re-queued (their workers died with it),
finished runs are never repeated, and the weights are a pure function of the stored results,
the chain and the block.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prism.chain import Chain, ChainError
from prism.errors import OperatorError, PrismError
from prism.profiles import Profile, load_profile
from prism.scoring import ScoringPolicy, WeightResult, compute_weights, policy_for_profile
from prism.store import DB_FILENAME, Store
from prism.validator.callbacks import LoggingCallback, StageCallback, WandbCallback
from prism.validator.chain_stages import ChainView, refresh_beacons, set_weights, sync, weights_due
from prism.validator.config import ValidatorConfig, build_arg_parser, config_from_args
from prism.validator.evaluation import (
    EvaluationSettings,
    Pool,
    apply_screening,
    dispatch,
    outstanding_paired,
    record_outcome,
    release_in_flight,
    release_variants,
)
from prism.validator.intake_stage import discover, fetch, intake, register_copies
from prism.validator.state import LoopState
from prism.validator.status import EvaluationStats, InFlight, ValidatorStatus, write_status

logger = logging.getLogger(__name__)


@dataclass
class ValidatorParts:
    """Everything the loop talks to, built once from the config (tests build their own)."""

    config: ValidatorConfig
    chain: Chain
    wallet: Any
    hotkey: str
    store: Store
    profile: Profile
    data_dir: Path
    pool: Pool
    dendrite_factory: Callable[[], Any]
    callbacks: list[StageCallback] = field(default_factory=list)
    last_result: WeightResult | None = None

    @property
    def settings(self) -> EvaluationSettings:
        config = self.config
        return EvaluationSettings(
            profile=config.profile, data_dir=self.data_dir, data_fingerprint=None, runs_dir=config.state_dir / "runs",
            calibration_dir=config.state_dir / "calibration", heldout_seed=config.heldout_seed,
            max_attempts=config.max_attempts, require_beacon=self.profile.official,
            slots_per_run=self.profile.nproc_per_node,  # a torchrun of N processes takes N slots
        )  # fmt: skip

    def policy_at(self, block: int) -> ScoringPolicy:
        """The rules active at ``block`` joined with the profile (rules change at activation blocks)."""
        return policy_for_profile(
            self.profile, block=block, waived_reasons=frozenset(self.config.waive_reasons)
        )


def _emit(parts: ValidatorParts, stage: str, payload: dict[str, Any]) -> None:
    for callback in parts.callbacks:
        callback.on_stage_end(stage, payload)


def score(store: Store, policy: ScoringPolicy, view: ChainView) -> WeightResult:
    records = store.records_for_scoring(policy.profile, policy.profile_version)
    result = compute_weights(records, policy, view.metagraph.hotkey_to_uid, view.block)
    store.record_standings(result.leaderboard)
    store.record_ownership_events(result.events)
    return result


def _intake_stages(parts: ValidatorParts, view: ChainView, policy: ScoringPolicy, state: LoopState) -> bool:
    """New commitments, downloaded and admitted. True when the store learnt something."""
    store = parts.store
    known = {
        (row["hotkey"], row["zip_sha256"]) for row in store.submissions() if row["intake_ok"] is not None
    }
    candidates = discover(view, lambda hotkey, sha: (hotkey, sha) in known, state)
    copies = [c for c in candidates if store.blob_path(c.sha256).exists()]
    fresh = [c for c in candidates if c not in copies]
    results = fetch(fresh, view, parts.dendrite_factory)
    _emit(parts, "fetch", intake(results, fresh, store, parts.profile, policy, state, view.block))
    register_copies(copies, store, parts.profile, policy)
    learnt = refresh_beacons(store, parts.chain, view) if parts.profile.official else 0
    return bool(candidates) or bool(learnt)


def _collect(parts: ValidatorParts, state: LoopState) -> bool:
    outcomes = parts.pool.poll()
    for outcome in outcomes:
        _emit(parts, "evaluate", record_outcome(parts.store, outcome, parts.settings, state))
    return bool(outcomes)


def _weights(parts: ValidatorParts, view: ChainView, state: LoopState, result: WeightResult) -> None:
    try:
        if weights_due(view, parts.hotkey, state):
            outcome = set_weights(parts.chain, parts.wallet, result, parts.store, view, state,
                                  parts.config.weights_fallback)  # fmt: skip
            if outcome.get("set") and state.first_weights_at is None:
                state.first_weights_at = time.monotonic()
            _emit(parts, "weights", outcome)
    except PrismError as exc:  # a timeout, an unreachable node: the chain's LastUpdate decides next step
        logger.warning("set_weights failed (%s); the chain is re-read before any retry", exc)


def step(parts: ValidatorParts, state: LoopState, stop: threading.Event) -> LoopState:
    """One pass over the pipeline. Chain and network trouble skips the stage, never the loop."""
    state.step += 1
    try:
        view = sync(parts.chain)
    except PrismError as exc:
        logger.warning("chain sync failed (%s); retrying next step", exc)
        return state
    policy = parts.policy_at(view.block)
    changed = _intake_stages(parts, view, policy, state)
    changed = _collect(parts, state) or changed
    due = weights_due(view, parts.hotkey, state)
    if changed or due or parts.last_result is None:
        parts.last_result = score(parts.store, policy, view)
        screening = apply_screening(parts.store, parts.last_result, policy)
        screening |= release_variants(parts.store, parts.last_result)
        _emit(parts, "score", {"families": len(parts.last_result.leaderboard.families),
                               "scored_uids": len(parts.last_result.weights), **screening})  # fmt: skip
    if not stop.is_set():
        paused = time.monotonic() < state.evaluation_paused_until
        started = dispatch(parts.store, parts.pool, parts.settings, parts.last_result, state, paused=paused)
        _emit(parts, "dispatch", {"started": len(started)} if started else {})
    state.max_concurrent = max(state.max_concurrent, len(parts.pool.in_flight()))
    _weights(parts, view, state, parts.last_result)
    write_status(parts.config.state_dir, build_status(parts, view, state))
    return state


def build_status(parts: ValidatorParts, view: ChainView, state: LoopState) -> ValidatorStatus:
    by_state: dict[str, int] = {}
    for run in parts.store.runs():
        by_state[run.state] = by_state.get(run.state, 0) + 1
    last = parts.store.last_weights()
    seconds = state.run_seconds
    in_flight = [
        InFlight(label=t.label, slots=[f"{s.kind}:{s.index}" for s in t.slots])
        for t in parts.pool.in_flight()
    ]
    return ValidatorStatus(
        hotkey=parts.hotkey, block=view.block, step=state.step, submissions=len(parts.store.submissions()),
        runs=by_state, pending_runs=sum(by_state.get(s, 0) for s in ("held", "queued", "running")),
        pending_paired=outstanding_paired(parts.store, parts.pool, parts.last_result, parts.settings, state),
        evaluation=EvaluationStats(
            backend=parts.pool.name, slots=len(parts.pool.slots),
            in_flight=in_flight, finished_runs=len(seconds),
            mean_run_s=sum(seconds) / len(seconds) if seconds else None, max_concurrent=state.max_concurrent,
            paired=parts.store.paired_eval_counts(),
        ),
        last_weights_block=last[0] if last else None,
        last_weights={str(uid): w for uid, w in (last[1] if last else {}).items()},
        # True once weights were set after the latest result: the chain reflects every result.
        weights_current=state.last_weights_step is not None and state.last_weights_step >= state.last_result_step,
        seconds_to_first_weights=state.first_weights_at - state.started_at if state.first_weights_at else None,
        updated_at=time.time(),
    )  # fmt: skip


# --- building the parts -------------------------------------------------------------------------


def build_pool(config: ValidatorConfig, profile: Profile, data_dir: Path) -> Pool:
    evaluation = config.evaluation
    if evaluation.backend == "ray":
        from prism.workers.ray_pool import RayPool

        if not evaluation.ray_address:
            raise OperatorError("--evaluation.backend ray needs --evaluation.ray_address HOST:PORT",
                                code="config.ray_address")  # fmt: skip
        return RayPool.connect(evaluation.ray_address, device=profile.device, data_dir=data_dir,
                               workers=evaluation.workers)  # fmt: skip
    from prism.workers import make_slots
    from prism.workers.local import LocalPool

    slots = make_slots(profile.device, workers=evaluation.workers, devices=evaluation.devices)
    if profile.nproc_per_node > len(slots):
        raise OperatorError(f"profile {profile.key} runs {profile.nproc_per_node} processes per run, more than "
                            f"the {len(slots)} evaluation slots: raise --evaluation.workers", code="config.slots")  # fmt: skip
    return LocalPool(slots, config.state_dir / "workers")


def build_parts(config: ValidatorConfig) -> ValidatorParts:
    """Open the chain, wallet, store, data and pool the config names; fail early with clear errors."""
    from prism.chain import open_chain
    from prism.chain.wallets import hotkey_ss58, load_wallet
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
    dendrite_config = DendriteConfig(timeout_s=config.fetch.timeout_s, retries=config.fetch.retries,
                                     max_concurrency=config.fetch.max_concurrency)  # fmt: skip
    callbacks: list[StageCallback] = [LoggingCallback()]
    if config.wandb.mode != "off":
        callbacks.append(WandbCallback(config.wandb, hotkey=hotkey))
    return ValidatorParts(
        config=config, chain=chain, wallet=wallet, hotkey=hotkey, store=store, profile=profile, data_dir=data_dir,
        pool=build_pool(config, profile, data_dir), dendrite_factory=lambda: Dendrite(wallet, dendrite_config),
        callbacks=callbacks,
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


# --- running ------------------------------------------------------------------------------------


def run(
    config: ValidatorConfig, *, parts: ValidatorParts | None = None, stop: threading.Event | None = None
) -> int:
    """Run the validator until stopped (SIGTERM/SIGINT) or ``config.max_steps``."""
    stop = stop or threading.Event()
    parts = parts or build_parts(config)
    reap_stale_sandboxes()  # sandboxes a killed predecessor left behind would hold CPU and memory
    requeued = parts.store.requeue_interrupted(max_attempts=config.max_attempts)
    last = parts.store.last_weights()
    state = LoopState(last_weights_block=last[0] if last else None, started_at=time.monotonic())
    logger.info("validator %s on netuid %d, profile %s, %s pool of %d slots (%d runs re-queued)", parts.hotkey,
                config.netuid, parts.profile.key, parts.pool.name, len(parts.pool.slots), requeued)  # fmt: skip
    try:
        while not stop.is_set():
            state = step(parts, state, stop)
            if config.max_steps is not None and state.step >= config.max_steps:
                break
            stop.wait(config.loop_interval_s)
    except KeyboardInterrupt:
        logger.info("stopped at once (second signal)")
    finally:
        released = release_in_flight(parts.store, parts.pool)
        if released:
            logger.info("%d runs in flight were stopped and put back in the queue", released)
        for callback in parts.callbacks:
            callback.close()
        parts.store.close()
    return 0


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM / SIGINT end the loop after the current stage (no stage waits for a run: in-flight
    runs are killed and re-queued on the way out). A second signal stops at once."""

    def _handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        logger.info("signal %d: stopping after the current stage", signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handler)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``neurons/validator.py`` and ``python -m prism.validator``."""
    from prism.neuron_config import setup_logging

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
        install_stop_handlers(stop)
        return run(config, parts=parts, stop=stop)
    except PrismError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
