"""The program check (host side, no torch): the measured function, executed where no submission ran.

The main held-out process sends its inference pass as a program (``graph_program``) after it
has committed every batch. The host then draws windows (fresh OS entropy: the draw never changes
an honest score) and hands program and windows to a process that has read the trusted weights but
not yet loaded the submission (the replay, before ``go``; ``program_exec``). What that process
returns is trusted: it never ran submission code. The check fails, a miner fault, when

* the program cannot be rebuilt or run there (``identity.program_invalid`` / ``_unsupported`` /
  ``_failed``; a process that dies or times out while it runs the program counts as failed: the
  program is the only submission-made input it had);
* its ``log p(target)`` at any position of a drawn window differs from the main process's
  committed ``z - L`` by more than the replay tolerance (``identity.program_mismatch``): the
  graph shown is a decoy, the recorder was patched, the weights in memory are not the file's,
  or the answers depended on state the program does not have;
* on the plain forward path, the family id derived there differs from the one the main process
  claimed for the canonical context (``identity.program_family_mismatch``).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from prism.errors import MinerFault, PrismError
from prism.evaluator.framing import ChannelTimeout, ProtocolError

if TYPE_CHECKING:
    from prism.evaluator.heldout_host import HeldoutProcess, SessionOutcome

#: Codes the checking process may give a program it refused (anything else: program_failed).
REFUSAL_PREFIXES = ("identity.", "graph.")
#: The mean of (committed - program) over every checked position may be at most this fraction
#: of the per-position tolerance: honest drift has no sign (it is 0 on CPU), a lie for gain has.
MEAN_SHIFT_FRACTION = 0.1


@dataclass
class ProgramReply:
    """What a process that had not loaded the submission said about a program (trusted)."""

    sent: bool = False
    log_probs: np.ndarray | None = None  # (K, T)
    graph: dict[str, Any] | None = None  # the program's architecture summary, derived there
    refused: dict[str, str] | None = None  # its typed verdict on a program it could not run
    error: PrismError | None = None  # the channel broke (or the process died)

    def parse(self, header: dict[str, Any], payload: bytes, windows: int, seq_len: int) -> None:
        error, graph = header.get("error"), header.get("graph")
        if isinstance(error, dict):
            self.refused = {"code": str(error.get("code", "")), "message": str(error.get("message", ""))}
            return
        if not isinstance(graph, dict) or not isinstance(graph.get("family_id"), str):
            raise ProtocolError("executed frame lacks the program's graph")
        if len(payload) != windows * seq_len * 8:
            raise ProtocolError(f"executed frame has {len(payload)} bytes, expected {windows * seq_len * 8}")
        self.graph = graph
        self.log_probs = np.frombuffer(payload, dtype="<f8").reshape(windows, seq_len)


@dataclass
class ProgramCheck:
    windows: list[int] = field(default_factory=list)
    reply: ProgramReply = field(default_factory=ProgramReply)
    tolerance: float = 0.0
    max_deviation: float = 0.0
    worst: tuple[int, int] | None = None  # (window, position) of the largest deviation
    mean_shift: float = 0.0  # mean of committed - program log p: > 0 means the committed was kinder
    seconds: float = 0.0

    @property
    def family_id(self) -> str | None:
        return str(self.reply.graph["family_id"]) if self.reply.graph is not None else None

    def failure(self, claimed_family: str | None, forward_path: bool) -> MinerFault | None:
        """The miner fault this check found, or None (also None when it could not be sent:
        the process was gone before the submission's program reached it, which is ours)."""
        reply = self.reply
        if isinstance(reply.error, ChannelTimeout):  # the main evaluation used the time the checks needed
            return MinerFault(
                "the evaluation left no time to check its recorded inference pass (wall-clock limit)",
                code="eval.timeout",
            )
        if not reply.sent:
            return None
        if reply.refused is not None:
            code = reply.refused["code"]
            code = code if code.startswith(REFUSAL_PREFIXES) else "identity.program_failed"
            return MinerFault(
                f"the recorded inference pass could not be checked: {reply.refused['message']}", code=code
            )
        if reply.error is not None or reply.log_probs is None:
            detail = reply.error.message if reply.error is not None else "no answer"
            return MinerFault(
                f"the process executing the recorded inference pass failed ({detail}); the program was the "
                "submission's", code="identity.program_failed",
            )  # fmt: skip
        if self.max_deviation > self.tolerance:
            window, position = self.worst or (-1, -1)
            return MinerFault(
                f"the recorded inference pass, run on the trained weights where no submission code ran, gives "
                f"log-probabilities {self.max_deviation:.3g} nats away from what the evaluation committed (tolerance "
                f"{self.tolerance:.3g}; window {window}, position {position}): the graph shown is not the model that "
                "answered, or the model's weights or state changed after loading", code="identity.program_mismatch",
            )  # fmt: skip
        if self.mean_shift > MEAN_SHIFT_FRACTION * self.tolerance:
            return MinerFault(
                f"the evaluation's committed log-probabilities are on average {self.mean_shift:.3g} nats above what "
                f"the recorded inference pass gives on the trained weights (bound {MEAN_SHIFT_FRACTION * self.tolerance:.3g})",
                code="identity.program_mismatch",
            )
        if forward_path and claimed_family is not None and self.family_id != claimed_family:
            return MinerFault(
                f"the model that answered has family {self.family_id} (derived where no submission code ran), but "
                f"the graph recorded at the canonical context claims {claimed_family}",
                code="identity.program_family_mismatch",
            )
        return None


def draw_windows(n_windows: int, count: int, rng: np.random.Generator | None = None) -> list[int]:
    generator = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    return sorted(int(w) for w in generator.choice(n_windows, size=min(count, n_windows), replace=False))


def deviation(
    main: SessionOutcome, chosen: list[int], log_probs: np.ndarray
) -> tuple[float, tuple[int, int] | None, float]:
    """Largest |committed z - L  -  program log p| over every position of the chosen windows,
    where, and the mean signed difference (committed minus program)."""
    assert main.lse is not None and main.target_logit is not None
    committed = main.target_logit[chosen] - main.lse[chosen]  # (K, T)
    signed = committed - log_probs
    if not np.isfinite(signed).all():
        return float("inf"), (chosen[0], 0), float("inf")
    gaps = np.abs(signed)
    k, t = np.unravel_index(int(np.argmax(gaps)), gaps.shape)
    return float(gaps[k, t]), (chosen[int(k)], int(t)), float(signed.mean())


def check_program(
    process: HeldoutProcess, main: SessionOutcome, windows: np.ndarray, count: int, tolerance: float
) -> ProgramCheck:
    """Execute the main session's program on ``count`` drawn windows in ``process`` (before go)."""
    started = time.monotonic()
    check = ProgramCheck(windows=draw_windows(windows.shape[0], count), tolerance=tolerance)
    assert main.program is not None
    check.reply = process.execute(main.program, windows[check.windows])
    if check.reply.log_probs is not None:
        check.max_deviation, check.worst, check.mean_shift = deviation(
            main, check.windows, check.reply.log_probs
        )
    check.seconds = time.monotonic() - started
    return check


__all__ = ["REFUSAL_PREFIXES", "ProgramCheck", "ProgramReply", "check_program", "deviation", "draw_windows"]
