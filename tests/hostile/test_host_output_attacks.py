"""Attack class 7 of issue 9 through PRISM's own host code: output shaped to make it raise.

An exception of the host's code on a run's output used to be recorded as the validator's fault
(an untyped one paused every other miner's evaluation; a typed ``validator.host_error`` is still
a free retry). Each submission here, after ``hello``, shapes what the host reads:

* its output dir's *tree*: directories nested past Python's recursion limit (``os.walk`` and
  ``shutil.rmtree`` raised ``RecursionError``) or long names past ``PATH_MAX`` (``os.chmod``
  raised ``ENAMETOOLONG``); a retry then crashed again while clearing the run dir;
* probe lines with the right keys and the wrong values (``null``, ``NaN``, a string);
* a forged ``error`` frame whose ``frames`` is not a list, written on the held-out pipe;
* a run-context graph whose parameter entries are not a name and a shape.

Each now ends in a verdict the host reached on its own: the miner's fault, or a run that
succeeds with the bad evidence dropped. None may raise out of ``evaluate``.
"""

from __future__ import annotations

import pytest
from attack_helpers import ATTACK_PRELUDE, PRELUDE, assert_refused, describe

from prism.evaluator.output_tree import MAX_DEPTH

pytestmark = pytest.mark.slow

# What ATTACK_PRELUDE adds to PRELUDE (``_module``, ``_evaluator_module``): evaluate_hostile
# prepends PRELUDE itself.
ROUTES = ATTACK_PRELUDE.replace(PRELUDE, "")

NEST = """
DEPTH, NAME = {depth}, {name!r}


def _nest(root):
    # One mkdir and one open per level, relative to the last dir: no path gets long on this side.
    fd = _os("open")(root, _OS.O_RDONLY | _OS.O_DIRECTORY)
    for _ in range(DEPTH):
        _os("mkdir")(NAME, dir_fd=fd)
        child = _os("open")(NAME, _OS.O_RDONLY | _OS.O_DIRECTORY, dir_fd=fd)
        _os("close")(fd)
        fd = child
    _os("close")(fd)


def build_model(ctx):
    if ctx.checkpoint_dir:  # the training process: its output dir holds the checkpoint dir
        _nest(_os("path").dirname(ctx.checkpoint_dir.rstrip("/")))
    return TinyLM(ctx.vocab_size)
"""


@pytest.mark.parametrize(
    ("depth", "name"),
    [(1500, "a"), (20, "b" * 250), (MAX_DEPTH + 2, "c")],
    ids=["past-the-recursion-limit", "past-path-max", "just-over-the-cap"],
)
def test_an_output_tree_the_host_cannot_walk_is_the_miners(evaluate_hostile, tmp_path, depth, name):
    run = evaluate_hostile(NEST.format(depth=depth, name=name))
    assert_refused(run, "eval.output_tree")
    assert not any((run.run_dir / "sandbox_out").iterdir()), describe(run)  # emptied, nothing read
    # A retry clears the run dir first; the tree is gone, and the clearing copes with any tree.
    evaluate_hostile(NEST.format(depth=depth, name=name))


PROBE_FORGER = """
LINES = {lines!r}
_WRITTEN = []


class Forger(TinyLM):
    def forward(self, tokens):
        if self.training and not _WRITTEN:  # the loop's cwd is the output dir
            _WRITTEN.append(1)
            fd = _os("open")("probe.jsonl", _OS.O_WRONLY | _OS.O_APPEND | _OS.O_CREAT, 0o644)
            _os("write")(fd, LINES.encode())
            _os("close")(fd)
        return super().forward(tokens)


def build_model(ctx):
    return Forger(ctx.vocab_size)
"""

BAD_PROBES = [
    '{"step": null, "tokens_seen": 0, "loss_nats": 1.0, "bpb": 1.0}',
    '{"step": NaN, "tokens_seen": 0, "loss_nats": 1.0, "bpb": 1.0}',
    '{"step": 0, "tokens_seen": "x", "loss_nats": 1.0, "bpb": 1.0}',
    '{"step": 0.5, "tokens_seen": 0, "loss_nats": 1.0, "bpb": 1.0}',
    '{"step": true, "tokens_seen": 0, "loss_nats": 1.0, "bpb": 1.0}',
    '{"step": 0, "tokens_seen": 0, "loss_nats": [1.0], "bpb": 1.0}',
    '{"step": 0, "tokens_seen": 0, "loss_nats": 1.0, "bpb": Infinity}',
]


def test_probe_lines_with_the_wrong_value_types_are_dropped_evidence(evaluate_hostile):
    lines = "\n" + "\n".join(BAD_PROBES) + "\n"
    run = evaluate_hostile(PROBE_FORGER.format(lines=lines))
    assert run.manifest.status.state == "succeeded", describe(run)
    written = (run.run_dir / "sandbox_out" / "probe.jsonl").read_text()
    assert all(line in written for line in BAD_PROBES)  # the forged lines reached the host
    curve = run.manifest.metrics.probe_curve
    assert curve, describe(run)
    assert all(point.loss_nats != 1.0 for point in curve)  # ... and none of them is in its record


PIPE_FORGER = """
PAYLOAD = {payload}


def _pipes():
    for obj in _module("gc").get_objects():
        if type(obj).__name__ == "_Pipes":
            return obj
    return None
"""

ERROR_FRAME = """
def build_model(ctx):
    pipes = _pipes() if _evaluator_module() is not None and ctx.checkpoint_dir is None else None
    if pipes is not None:
        pipes.writer.write({"type": "error", "code": "eval.forged", "fault": "infrastructure",
                            "message": "not mine", "frames": PAYLOAD})
        _OS._exit(4)
    return TinyLM(ctx.vocab_size)
"""


@pytest.mark.parametrize("frames", ['{"file": "x.py"}', "7", '"frames"'], ids=["dict", "int", "str"])
def test_an_error_frame_with_malformed_frames_is_still_the_miners(evaluate_hostile, frames):
    run = evaluate_hostile(ROUTES + PIPE_FORGER.format(payload=frames) + ERROR_FRAME)
    assert_refused(run, "eval.")
    assert run.manifest.status.failure is not None and run.manifest.status.failure.frames == []


GRAPH_FORGER = """
_WRAPPED = []


def _add_entry_to_the_run_graph():
    pipes = _pipes()
    if pipes is None or _WRAPPED:
        return
    _WRAPPED.append(1)
    real, json = pipes.writer.write, _module("json")

    def write(header, payload=b""):
        if header.get("type") == "done" and payload:
            graph = json.loads(payload)
            graph["parameters"] = list(graph.get("parameters") or []) + [PAYLOAD]
            payload = json.dumps(graph, separators=(",", ":")).encode()
        return real(header, payload)

    pipes.writer.write = write


def build_model(ctx):
    if _evaluator_module() is not None and ctx.checkpoint_dir is None:
        _add_entry_to_the_run_graph()
    return TinyLM(ctx.vocab_size)
"""


@pytest.mark.parametrize(
    "entry",
    ['{"name": ["emb.weight"], "shape": [1]}', '{"name": "emb.weight", "shape": 5}', '{"name": "emb.weight", "shape": [True, 32]}'],
    ids=["unhashable-name", "int-shape", "bool-dims"],
)  # fmt: skip
def test_a_run_graph_with_malformed_parameter_entries_is_a_weights_mismatch(evaluate_hostile, entry):
    run = evaluate_hostile(ROUTES + PIPE_FORGER.format(payload=entry) + GRAPH_FORGER)
    assert_refused(run, "identity.weights_mismatch")
