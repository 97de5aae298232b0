"""Typed errors shared by every stage.

Every failure PRISM reports carries a stable ``code`` (dotted, e.g. ``zip.traversal``) and a
``fault`` that decides what happens next:

* ``miner``: the submission is at fault. The run is recorded and scored zero; it is never retried.
* ``infrastructure``: our side failed (a crashed sandbox, a full disk, an unreachable chain).
  The work is retried later and the miner is never penalized.
* ``operator``: the person running PRISM gave bad input (a flag, a config file, a data dir).
  The command stops with a clear message.
"""

from __future__ import annotations

from typing import Literal

Fault = Literal["miner", "infrastructure", "operator"]


class PrismError(Exception):
    """Base class: a stable code, a fault class and a message a person can act on."""

    fault: Fault = "infrastructure"
    default_code: str = "prism.error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "fault": self.fault, "message": self.message}

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class MinerFault(PrismError):
    """The submission is at fault: scored zero, recorded, not retried."""

    fault: Fault = "miner"
    default_code = "miner.fault"


class InfrastructureFault(PrismError):
    """Our side failed: retried later, never penalized."""

    fault: Fault = "infrastructure"
    default_code = "infra.fault"


class HostError(InfrastructureFault):
    """PRISM's own host code raised while it handled what a sandboxed process produced.

    Ours, but possibly provoked by that submission: retried like any infrastructure failure, and
    it pauses the validator only when it recurs across submissions (prism.validator.evaluation).
    """

    default_code = "validator.host_error"


class OperatorError(PrismError):
    """Bad input from the person running PRISM (flags, config, data directories)."""

    fault: Fault = "operator"
    default_code = "operator.error"


class NotImplementedYet(PrismError, NotImplementedError):
    """A part of the design that is not built yet. Raised loudly, never silently skipped."""

    fault: Fault = "infrastructure"
    default_code = "prism.not_implemented"
