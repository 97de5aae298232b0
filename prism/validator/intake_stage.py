"""The validator's intake stages: new commitments, downloads, intake and the runs they need.

discover (commitments the store has no verdict for) -> fetch (dendrite) -> admit (intake,
verdict, runs queued: with screening, the first cell in stage 1 and the rest held)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prism.chain.commitments import parse_commitment
from prism.manifest import RecipeMode
from prism.profiles import Profile
from prism.scoring import ScoringPolicy
from prism.store import RunKey, Store
from prism.submission.intake import Submission
from prism.validator.chain_stages import ChainView
from prism.validator.state import LoopState

logger = logging.getLogger(__name__)

TRAINING_HOOKS = frozenset({"configure_optimizer", "compute_loss", "train_step", "inference_logits", "infer"})
UNREACHABLE_BACKOFF_BLOCKS = 5


@dataclass(frozen=True)
class Candidate:
    """A committed submission the store has not seen yet."""

    hotkey: str
    uid: int
    sha256: str
    commit_block: int


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


def planned_runs(submission: Submission, profile: Profile) -> list[RunKey]:
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


def screening_cell(runs: list[RunKey], policy: ScoringPolicy) -> RunKey | None:
    """The run that decides whether the others are needed (prism.scoring.screening), if any."""
    if not policy.screens:
        return None
    for key in runs:
        if (key.recipe_mode, key.regime, key.seed) == (
            "reference",
            policy.screening_regime,
            policy.screening_seed,
        ):
            return key
    return None


def _record_rejection(store: Store, candidate: Candidate, code: str, zip_path: Path) -> None:
    """ZIP bytes intake refused: a verdict on the hash, for every hotkey that commits it."""
    store.upsert_submission(hotkey=candidate.hotkey, zip_sha256=candidate.sha256,
                            commit_block=candidate.commit_block, kind="full", uid=candidate.uid)  # fmt: skip
    store.record_intake(candidate.sha256, ok=False, codes=[code], zip_path=zip_path)


def admit(
    store: Store, candidate: Candidate, data: bytes, profile: Profile, policy: ScoringPolicy
) -> int | None:
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
        hotkey=candidate.hotkey, zip_sha256=candidate.sha256, commit_block=candidate.commit_block,
        kind=submission.kind, uid=candidate.uid, target_architecture_id=submission.architecture_id,
        training_fingerprint=submission.training_fingerprint, recipe_fingerprint=submission.recipe_fingerprint,
    )  # fmt: skip
    store.record_intake(candidate.sha256, ok=True, zip_path=zip_path)
    runs = planned_runs(submission, profile)
    if submission.kind == "training_for_arch":  # waits for its family's canonical code (release_variants)
        return store.enqueue_runs(runs, commit_block=candidate.commit_block, hold=True)
    return store.enqueue_runs(runs, commit_block=candidate.commit_block, first=screening_cell(runs, policy))


def intake(results: list[Any], candidates: list[Candidate], store: Store, profile: Profile,
           policy: ScoringPolicy, state: LoopState, block: int) -> dict[str, Any]:  # fmt: skip
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
        queued = admit(store, candidate, result.data, profile, policy)
        if queued is None:
            counts["rejected"] += 1
        else:
            counts["queued_runs"] += queued
    return counts


def register_copies(copies: list[Candidate], store: Store, profile: Profile, policy: ScoringPolicy) -> None:
    """A hash the store already holds (another hotkey committed the same bytes): no download."""
    for candidate in copies:
        admit(store, candidate, store.blob_path(candidate.sha256).read_bytes(), profile, policy)
