"""Whose fault a failure is: one rule for every sandboxed phase (host side, pure).

Each sandboxed process says ``hello`` over its pipe *before* it imports submission code. The
rule:

* before ``hello`` nothing of the submission has run, so any failure is ours (infrastructure,
  retried, never held against the miner);
* after ``hello`` every failure is the miner's, whatever the process reports about itself,
  **unless the host itself observed the cause**: the launcher failed (bubblewrap could not
  start), the host's own data supply failed, or a host-side device check failed.

What a process reports (its failure code, message and stack frames) is evidence: it becomes the
failure's code and message only when the code is one a submission may own, and it never decides
the fault. Host-side checks that fail (budgets, compute, commitments, replay, identity) are miner
faults with the host's own code. A host shutdown never produces a verdict: the run is abandoned
unrecorded and re-queued by the caller.

One more case has no process to blame: PRISM's own host code raising while it handles what a
process produced (a decoder, a check, the manifest). Such an exception may be the submission's
doing or plain a bug of ours, so it is neither the miner's fault nor an outage:
``host_errors_typed`` turns it into ``HostError`` (``validator.host_error``, infrastructure),
which is retried like any failure of ours but does not on its own pause the validator
(``prism.validator.evaluation``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prism.errors import HostError, PrismError
from prism.evaluator.sandbox import SandboxResult
from prism.manifest import Failure, Frame

#: Codes a process may report for itself after hello (anything else is shown as eval.crashed).
MINER_CODE_PREFIXES = ("eval.", "hook.", "graph.", "budget.", "checkpoint.", "identity.")


@dataclass(frozen=True)
class Observation:
    """What the host knows about one sandboxed phase, with the process's own claim as evidence."""

    phase: str  # "train" | "heldout" | "replay"
    hello: bool
    sandbox: SandboxResult | None = None
    launch_error: PrismError | None = None  # observed: the launcher failed
    data_error: str | None = None  # observed: our data supply failed
    device_failed: str | None = None  # observed: a host-side device check failed
    host_check: PrismError | None = None  # a host-side check of the process's output failed
    channel_error: PrismError | None = None  # the protocol broke (timeout, closed, malformed)
    claimed: dict[str, Any] | None = None  # the process's own failure report (evidence)
    missing: str | None = None  # an output the host needed is not there


def _infra(obs: Observation, code: str, message: str, observed: str) -> Failure:
    return Failure(code=code, fault="infrastructure", message=message, phase=obs.phase, observed=observed)


def _miner(obs: Observation, code: str, message: str, frames: list[Frame] | None = None) -> Failure:
    return Failure(code=code, fault="miner", message=message, phase=obs.phase, frames=frames or [])


def _frames(claimed: dict[str, Any]) -> list[Frame]:
    frames: list[Frame] = []
    listed = claimed.get("frames")
    if not isinstance(listed, list):
        return frames  # a claim without a list of frames has lost its evidence, nothing more
    for raw in listed[:16]:
        try:
            frames.append(Frame.model_validate(raw))
        except ValueError:
            continue  # a malformed frame is only lost evidence
    return frames


def _from_claim(obs: Observation, claimed: dict[str, Any]) -> Failure:
    code = str(claimed.get("code") or "")
    message = str(claimed.get("message") or "")[:4000]
    if not code.startswith(MINER_CODE_PREFIXES):
        message = f"the process reported {code or 'a failure'!r}: {message}"
        code = "eval.crashed"
    return _miner(obs, code, message + " (reported by the sandboxed process)", _frames(claimed))


def _observed_infra(obs: Observation) -> Failure | None:
    if obs.launch_error is not None:
        return _infra(obs, "sandbox.setup_failed", obs.launch_error.message, "the sandbox launcher failed")
    if obs.data_error is not None:
        return _infra(obs, "data.feed_failed", obs.data_error, "the host's training data supply failed")
    if obs.device_failed is not None:
        return _infra(obs, "device.unhealthy", obs.device_failed, "the host's device check failed")
    return None


def _ended_badly(obs: Observation) -> bool:
    result = obs.sandbox
    sandbox_bad = result is not None and (
        result.timed_out
        or result.memory_exceeded
        or result.exit_code not in (0, None)
        or result.signal is not None
    )
    return sandbox_bad or any(
        x is not None for x in (obs.host_check, obs.channel_error, obs.claimed, obs.missing)
    )


def _after_hello(obs: Observation) -> Failure:
    result = obs.sandbox
    if result is not None and result.timed_out:
        return _miner(
            obs,
            "eval.timeout",
            f"the {obs.phase} process exceeded the wall-clock limit ({result.wall_s:.0f}s)",
        )
    if result is not None and result.memory_exceeded:
        return _miner(obs, "eval.memory_exceeded", f"the {obs.phase} process exceeded the memory limit")
    if obs.host_check is not None:
        return _miner(obs, obs.host_check.code, obs.host_check.message)
    if obs.claimed is not None:
        return _from_claim(obs, obs.claimed)
    if obs.channel_error is not None:
        return _miner(
            obs, "eval.protocol", f"the {obs.phase} process broke the protocol: {obs.channel_error.message}"
        )
    if result is not None and result.failure_code() is not None:
        code = "eval." + str(result.failure_code()).removeprefix("sandbox.")
        tail = result.log_tail[-500:]
        return _miner(
            obs,
            code,
            f"the {obs.phase} process ended with exit code {result.exit_code}, signal {result.signal}: {tail}",
        )
    return _miner(
        obs, "eval.missing_outputs", f"the {obs.phase} process ended without {obs.missing or 'its outputs'}"
    )


def decide(obs: Observation) -> Failure | None:
    """The failure of one phase, or None when it succeeded."""
    observed = _observed_infra(obs)
    if observed is not None:
        return observed
    if not _ended_badly(obs):
        return None
    if not obs.hello:
        detail = (
            obs.channel_error.message
            if obs.channel_error
            else (obs.sandbox.log_tail[-500:] if obs.sandbox else "")
        )
        return _infra(
            obs,
            "sandbox.failed_before_hello",
            f"the {obs.phase} process failed before it loaded the submission: {detail}",
            "no hello: no submission code had run",
        )
    return _after_hello(obs)


def first_failure(*failures: Failure | None) -> Failure | None:
    return next((f for f in failures if f is not None), None)


@contextmanager
def host_errors_typed(what: str) -> Iterator[None]:
    """Within the block, an exception that is neither a typed PRISM error nor an ``OSError`` (the
    machine's trouble: a full disk, a missing file) is re-raised as ``HostError`` naming ``what``."""
    try:
        yield
    except (PrismError, OSError):
        raise
    except Exception as exc:
        raise HostError(f"{what}: PRISM's host code raised {type(exc).__name__}: {exc}"[:2000]) from exc


__all__ = [
    "MINER_CODE_PREFIXES",
    "Observation",
    "decide",
    "first_failure",
    "host_errors_typed",
]
