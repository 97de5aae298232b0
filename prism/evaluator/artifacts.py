"""Files of a run: reading what a sandbox wrote (untrusted) and writing the host's artifacts.

A sandbox's writable dir is the submission's playground: a name there may be a symlink to a host
file, a FIFO or ``/dev/zero``. :func:`read_untrusted` reads only regular files, without following
symlinks, and never more than a limit. The host's own artifacts (graph, metadata, metrics, loss
curves) are written next to the manifest, outside every writable bind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prism.evaluator.context import PROBE_FILENAME, RUNNER_REPORT_FILENAME, RunnerReport
from prism.evaluator.framing import loads_untrusted
from prism.evaluator.output_tree import chmod_tree

logger = logging.getLogger(__name__)

MAX_PROBE_FILE_BYTES = 256_000_000  # ~2M probe records; a bigger file is truncated, never slurped whole
MAX_REPORT_BYTES = 4_000_000
RUN_LOG = "run.log"
HELDOUT_LOG = "heldout.log"
REPLAY_LOG = "replay.log"
METRICS_FILE = "metrics.json"
GRAPH_FILE = "architecture_graph.json"
RUN_GRAPH_FILE = "architecture_graph.run.json"
METADATA_FILE = "architecture_metadata.json"
PLOT_FILE = "loss_curve.svg"
PLOT_PNG_FILE = "loss_curve.png"
WINDOW_LOSSES_FILE = "heldout_windows.json"
_PROBE_KEYS = ("step", "tokens_seen", "loss_nats", "bpb")
_PROBE_INTEGRAL_KEYS = ("step", "tokens_seen")

_READ_ONLY_FILE = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
_READ_ONLY_DIR = _READ_ONLY_FILE | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


def read_untrusted(path: Path, limit: int, offset: int = 0) -> bytes | None:
    """At most ``limit`` bytes of a regular file a sandboxed process wrote; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        fh.seek(offset)
        return fh.read(limit)


def _probe_value(value: Any, *, integral: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and (not integral or float(value).is_integer())


def parse_probe_lines(text: str) -> list[dict[str, Any]]:
    """The well-formed probe records: a finite number for every key (a whole one for the counters).

    Anything else is skipped, never raised: the probe is the process's evidence, and a line such
    as ``{"step": null, ...}`` must not make the host's summary of it fail.
    """
    records = []
    for line in text.splitlines():
        try:
            rec = loads_untrusted(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and all(
            _probe_value(rec.get(k), integral=k in _PROBE_INTEGRAL_KEYS) for k in _PROBE_KEYS
        ):
            records.append(rec)
    return records


def read_probe_records(sandbox_out: Path) -> list[dict[str, Any]]:
    """Complete JSON lines of probe.jsonl (a half-written last line is skipped; junk is ignored)."""
    data = read_untrusted(sandbox_out / PROBE_FILENAME, MAX_PROBE_FILE_BYTES)
    if not data:
        return []
    return parse_probe_lines(data.decode("utf-8", errors="replace"))


class ProbeTail:
    """Follows probe.jsonl incrementally (each poll reads only what was appended)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.last: dict[str, Any] | None = None

    def poll(self) -> dict[str, Any] | None:
        chunk = read_untrusted(self.path, 1 << 20, self.offset)
        if chunk:
            self.offset += len(chunk)
            *lines, self.partial = (self.partial + chunk).split(b"\n")
            if len(self.partial) > 1 << 16:  # a runaway line is nobody's probe record
                self.partial = b""
            records = parse_probe_lines(b"\n".join(lines).decode("utf-8", errors="replace"))
            if records:
                self.last = records[-1]
        return self.last


def read_runner_report(sandbox_out: Path) -> RunnerReport | None:
    """Rank 0's report; a failing non-zero rank's failure wins when rank 0 has none (evidence)."""
    main = sandbox_out / RUNNER_REPORT_FILENAME
    paths = ([main] if main.is_file() else []) + sorted(sandbox_out.glob("runner_report.rank*.json"))
    parsed: list[RunnerReport] = []
    for path in paths:
        try:
            parsed.append(RunnerReport.model_validate_json(read_untrusted(path, MAX_REPORT_BYTES) or b""))
        except ValueError as exc:
            logger.warning("unreadable runner report %s: %s", path.name, exc)
    if not parsed:
        return None
    head = parsed[0]
    failing = next((r for r in parsed if r.failure is not None), None)
    if failing is not None and head.failure is None:
        head = head.model_copy(update={"ok": False, "failure": failing.failure})
    return head


def make_read_only(root: Path) -> None:
    """Drop write bits so even degraded mode (no bwrap) cannot edit the checked files."""
    chmod_tree(root, file_mode=_READ_ONLY_FILE, dir_mode=_READ_ONLY_DIR)


def make_writable(root: Path) -> None:
    chmod_tree(root, file_mode=stat.S_IRUSR | stat.S_IWUSR, dir_mode=stat.S_IRWXU)


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def downsample(records: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    if len(records) <= limit:
        return records
    stride = math.ceil(len(records) / limit)
    picked = records[::stride]
    if picked[-1] is not records[-1]:
        picked.append(records[-1])
    return picked


def draw_loss_curves(
    root: Path, *, probes: list[dict[str, Any]], heldout: list[Any], title: str, baseline: Any = None
) -> tuple[str | None, str | None]:
    """The SVG (raw probe curve) and the PNG (smoothed, the baseline ``LossCurve`` overlaid when
    given) next to the manifest. A plot is a convenience, never a failure: (svg, png) names or None."""
    if not probes:
        return None, None
    from prism.evaluator.plot import plot_loss_png, plot_run

    written: list[str | None] = []
    for name, draw in (
        (PLOT_FILE, lambda path: plot_run(path, probes=probes, heldout=heldout, title=title)),
        (
            PLOT_PNG_FILE,
            lambda path: plot_loss_png(path, probes=probes, heldout=heldout, baseline=baseline, title=title),
        ),
    ):
        try:
            draw(root / name)
            written.append(name)
        except Exception as exc:  # matplotlib failures must not fail a measured run
            logger.warning("could not draw %s: %s", name, exc)
            written.append(None)
    return written[0], written[1]


__all__ = [
    "GRAPH_FILE",
    "HELDOUT_LOG",
    "MAX_REPORT_BYTES",
    "METADATA_FILE",
    "METRICS_FILE",
    "PLOT_FILE",
    "PLOT_PNG_FILE",
    "REPLAY_LOG",
    "RUN_GRAPH_FILE",
    "RUN_LOG",
    "ProbeTail",
    "downsample",
    "draw_loss_curves",
    "make_read_only",
    "make_writable",
    "read_probe_records",
    "read_runner_report",
    "read_untrusted",
    "write_json",
]


def write_window_losses(
    root: Path, run_id: str, heldout_seed: int, window_bytes: Sequence[int], nats: Sequence[float]
) -> tuple[str, str]:
    """The per-window nats the host summed, beside the manifest (which records their sha256):
    scoring pairs them with other models measured on the same windows."""
    payload = {
        "run_id": run_id,
        "heldout_seed": heldout_seed,
        "window_bytes": [int(b) for b in window_bytes],
        "nats": [float(x) for x in nats],
    }
    data = json.dumps(payload, sort_keys=True).encode()
    (root / WINDOW_LOSSES_FILE).write_bytes(data)
    return WINDOW_LOSSES_FILE, hashlib.sha256(data).hexdigest()
