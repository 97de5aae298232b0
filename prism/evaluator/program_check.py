"""The program check (host side, no torch): the measured function, executed where no submission ran.

The main held-out process sends its inference pass as a program (``graph_program``) right
after ``ready``, before its first held-out input, so the program's constants and arguments hold
nothing learnt from held-out text; a model that adapts while it is evaluated no longer matches
it. Once every batch is committed, the host picks windows and hands program and windows to a
process that has read the trusted weights and never loads the submission (a forked child of the
replay, before its ``go``; ``program_exec``). What that process returns is trusted: it never
ran submission code. It has exited before the replay loads the submission, so what the main
process put into the program (its constants, and the windows it is run on) never reaches code
of the submission.
The first window is the *family window*, drawn from the evaluation's held-out seed, so what is
recorded on it is the same for every validator; it comes on top of ``count`` windows from fresh
OS entropy, which the sandbox cannot predict even where the seed is public (the deviation never
changes an honest score). The check fails, a miner fault, when

* the program cannot be rebuilt or run there (``identity.program_invalid`` / ``_unsupported`` /
  ``_failed``; a process that dies or times out while it runs the program counts as failed: the
  program is the only submission-made input it had);
* its ``log p(target)`` at any position of a drawn window differs from the main process's
  committed ``z - L`` by more than the replay tolerance (``identity.program_mismatch``): the
  graph shown is a decoy, the recorder was patched, the weights in memory are not the file's,
  or the answers depended on state the program does not have;
* on the plain forward path, the family the program has on the public recording batches (the
  ones the claim was recorded on, repeated to the run's length) differs from the claimed one
  (``identity.program_family_mismatch``): the recorder lied, or a Python branch chose another
  path for the recording.

* on the plain forward path with a family window, an op computes from trained weights on the
  family window and is dead on the public batches (``identity.program_hidden_branch``): a branch
  those batches fold away answers on held-out text (docs/security.md, class 9).

The family the program has on the family window is evidence, not a verdict (manifest
``program_window_family_id``, ``program_window_only_weights``): graph folds depend on the values
seen, so an honest model's family can change with the window (a document mask is a constant on
a window inside one document, and reads no weight).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from prism.errors import MinerFault, PrismError
from prism.evaluator.framing import ChannelTimeout, ProtocolError
from prism.evaluator.shipped_constants import MAX_COMMITTED, ShippedConstant

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
    graph: dict[str, Any] | None = None  # the program's graph summary on the family window
    public_graph: dict[str, Any] | None = None  # ... and on the public recording batches
    window_parameters: tuple[str, ...] = ()  # weights its output reads on the family window
    public_parameters: tuple[str, ...] = ()  # ... and on the public batches
    window_only_ops: tuple[str, ...] = ()  # ops computing from weights on the family window only
    constants: tuple[ShippedConstant, ...] = ()  # the program's distinct shipped constants
    refused: dict[str, str] | None = None  # its typed verdict on a program it could not run
    error: PrismError | None = None  # the channel broke (or the process died)

    def parse(self, header: dict[str, Any], payload: bytes, windows: int, seq_len: int) -> None:
        error = header.get("error")
        if isinstance(error, dict):
            self.refused = {"code": str(error.get("code", "")), "message": str(error.get("message", ""))}
            return
        graph, public = header.get("graph"), header.get("public_graph")
        for summary in (graph, public):
            if not isinstance(summary, dict) or not isinstance(summary.get("family_id"), str):
                raise ProtocolError("executed frame lacks the program's graphs")
        self.window_parameters, self.public_parameters = _parameter_lists(header.get("parameters"))
        hidden = header.get("window_only_ops")
        if not isinstance(hidden, list) or not all(isinstance(op, str) for op in hidden):
            raise ProtocolError("executed frame: window_only_ops is not a list of ops")
        self.window_only_ops = tuple(hidden)
        self.constants = _constant_list(header.get("constants"))
        if len(payload) != windows * seq_len * 8:
            raise ProtocolError(f"executed frame has {len(payload)} bytes, expected {windows * seq_len * 8}")
        self.graph, self.public_graph = graph, public
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
    family_window: int | None = None  # windows[0] when it is the family window

    @property
    def family_id(self) -> str | None:
        """The program's family on the family window."""
        return str(self.reply.graph["family_id"]) if self.reply.graph is not None else None

    @property
    def public_family_id(self) -> str | None:
        """The program's family on the public recording batches."""
        return str(self.reply.public_graph["family_id"]) if self.reply.public_graph is not None else None

    @property
    def window_only_weights(self) -> list[str]:
        """Weights read on the family window but not on the public batches: evidence of a branch
        the public batches fold away, or of an honest per-token weight (an inert read hides it)."""
        public = set(self.reply.public_parameters)
        return [name for name in self.reply.window_parameters if name not in public]

    def failure(self, claimed_family: str | None, forward_path: bool) -> MinerFault | None:
        """The miner fault this check found, or None (also None when it could not be sent:
        the process was gone before the submission's program reached it, which is ours)."""
        return (
            self._run_fault() or self._deviation_fault() or self._family_fault(claimed_family, forward_path)
        )

    def _run_fault(self) -> MinerFault | None:
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
        return None

    def _deviation_fault(self) -> MinerFault | None:
        if not self.reply.sent or self.reply.log_probs is None:
            return None
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
        return None

    def _family_fault(self, claimed_family: str | None, forward_path: bool) -> MinerFault | None:
        if claimed_family is None or not self.reply.sent or self.reply.log_probs is None:
            return None
        if forward_path and self.public_family_id != claimed_family:
            return MinerFault(
                f"the recorded inference pass, rebuilt where no submission code ran, has family "
                f"{self.public_family_id} on the public recording batches, but the graph the evaluation recorded "
                f"on them claims {claimed_family}", code="identity.program_family_mismatch",
            )  # fmt: skip
        hidden = self.reply.window_only_ops
        if forward_path and self.family_window is not None and hidden:
            return MinerFault(
                f"on the held-out family window (window {self.family_window}) the recorded inference pass computes "
                f"from trained weights in {len(hidden)} ops that are dead on the public recording batches (first: "
                f"{', '.join(hidden[:3])}): a branch those batches fold away answers on held-out text, so the family "
                "recorded on them is not the function that was scored", code="identity.program_hidden_branch",
            )  # fmt: skip
        return None


def _parameter_lists(value: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ProtocolError("executed frame lacks the weights the program reads")
    lists = []
    for key in ("window", "public"):
        names = value.get(key)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ProtocolError(f"executed frame: parameters.{key} is not a list of names")
        lists.append(tuple(names))
    return lists[0], lists[1]


def _constant_list(value: Any) -> tuple[ShippedConstant, ...]:
    if not isinstance(value, list) or len(value) > MAX_COMMITTED + 1:
        raise ProtocolError("executed frame: constants is not a bounded list")
    found = []
    for entry in value:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], str)
        ):
            raise ProtocolError("executed frame: a constant is not [digest, dtype, shape]")
        shape = entry[2]
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise ProtocolError("executed frame: a constant's shape is not a list of sizes")
        found.append(ShippedConstant(node=-1, dtype=entry[1], shape=tuple(shape), digest=entry[0]))
    return tuple(found)


def family_window(n_windows: int, seed: int) -> int:
    """The held-out window the program's family is recorded on: a function of the evaluation's
    held-out seed alone, so every honest validator records the same one."""
    digest = hashlib.sha256(f"prism-program-family-window:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % n_windows


def draw_windows(
    n_windows: int, count: int, first: int | None = None, rng: np.random.Generator | None = None
) -> list[int]:
    """``first`` (the family window) if given, then ``count`` other windows drawn from fresh OS
    entropy, in order (fewer when there are not that many)."""
    generator = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    others = [w for w in range(n_windows) if w != first]
    picked = generator.choice(len(others), size=min(count, len(others)), replace=False)
    return ([] if first is None else [first]) + sorted(others[int(i)] for i in picked)


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
    process: HeldoutProcess,
    main: SessionOutcome,
    windows: np.ndarray,
    count: int,
    tolerance: float,
    family_seed: int | None = None,
) -> ProgramCheck:
    """Execute the main session's program in ``process`` (before go) on the family window of
    ``family_seed`` (none for a re-measurement) and ``count`` windows from OS entropy."""
    started = time.monotonic()
    first = family_window(windows.shape[0], family_seed) if family_seed is not None else None
    check = ProgramCheck(windows=draw_windows(windows.shape[0], count, first), tolerance=tolerance)
    check.family_window = first
    assert main.program is not None
    check.reply = process.execute(main.program, windows[check.windows])
    if check.reply.log_probs is not None:
        check.max_deviation, check.worst, check.mean_shift = deviation(
            main, check.windows, check.reply.log_probs
        )
    check.seconds = time.monotonic() - started
    return check


__all__ = [
    "REFUSAL_PREFIXES",
    "ProgramCheck",
    "ProgramReply",
    "check_program",
    "deviation",
    "draw_windows",
    "family_window",
]
