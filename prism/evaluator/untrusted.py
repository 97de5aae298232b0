"""The one wrapper through which PRISM code inside a sandbox calls submission code.

:func:`call_submission` runs a submission callable and turns anything it raises into a typed
:class:`SubmissionCodeError` (a miner fault) carrying the miner's own stack frames: the frames
whose file lies under the submission root, with paths relative to it, innermost last. Those
frames are shown to the miner (manifest failure, CLI) so an error points at the line.

Nothing here is a verdict: the process that runs this has imported submission code, so the host
treats every report it gets from such a process as evidence (``prism.evaluator.verdicts``).
"""

from __future__ import annotations

import linecache
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from prism.errors import MinerFault, PrismError

MAX_FRAMES = 16
MAX_MESSAGE_CHARS = 2000
_ROOT: list[Path] = []


def set_submission_root(root: Path) -> None:
    """Where the submission's files live (frames outside it are PRISM's, torch's or Python's)."""
    _ROOT[:] = [Path(root).resolve()]


class SubmissionCodeError(MinerFault):
    """Submission code raised. ``frames`` are the miner's own frames, innermost last."""

    def __init__(self, message: str, *, code: str, frames: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message, code=code)
        self.frames = frames or []

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "frames": self.frames}


def _relative(filename: str) -> str | None:
    if not _ROOT:
        return None
    try:
        return Path(filename).resolve().relative_to(_ROOT[0]).as_posix()
    except (ValueError, OSError):
        return None


def miner_frames(tb: TracebackType | None) -> list[dict[str, Any]]:
    """The traceback's frames that belong to the submission, innermost last."""
    frames: list[dict[str, Any]] = []
    for summary in traceback.extract_tb(tb):
        rel = _relative(summary.filename)
        if rel is None:
            continue
        line = summary.lineno or 0
        code = (summary.line or linecache.getline(summary.filename, line)).strip() or None
        frames.append({"file": rel, "line": line, "function": summary.name, "code": code})
    return frames[-MAX_FRAMES:]


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def as_submission_error(code: str, what: str, exc: BaseException) -> SubmissionCodeError:
    frames = miner_frames(exc.__traceback__)
    where = f" at {frames[-1]['file']}:{frames[-1]['line']}" if frames else ""
    return SubmissionCodeError(f"{what} raised {_describe(exc)}{where}", code=code, frames=frames)


def call_submission(code: str, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call submission code; anything it raises is the submission's fault, with a stable code.

    A ``PrismError`` raised from inside (e.g. a nested wrapper's verdict on a hook's return value)
    passes through unchanged. ``KeyboardInterrupt`` is never swallowed.
    """
    try:
        return fn(*args, **kwargs)
    except PrismError:
        raise
    except Exception as exc:
        raise as_submission_error(code, what, exc) from exc


def format_frames(frames: list[dict[str, Any]]) -> str:
    """Frames as a short traceback, the last (where it failed) marked with '>'."""
    lines = []
    for i, frame in enumerate(frames):
        mark = ">" if i == len(frames) - 1 else " "
        lines.append(f"{mark} {frame['file']}:{frame['line']} in {frame['function']}")
        if frame.get("code"):
            lines.append(f"      {frame['code']}")
    return "\n".join(lines)


__all__ = [
    "SubmissionCodeError",
    "as_submission_error",
    "call_submission",
    "format_frames",
    "miner_frames",
    "set_submission_root",
]
