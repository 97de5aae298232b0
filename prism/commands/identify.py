"""``prism identify PATH``: a submission's identity and its fit at every regime, without training.

    prism identify examples/gpt [--profile P] [--regime R ...] [--json] [--timeout S] [--threads N]

Prints the family id and version id (recorded at the profile's canonical context, as the
evaluator records them), and per regime the parameter and layer counts against the budget plus
one CPU forward and backward at the regime's full context. ``prism check --build`` runs the same
checks after intake. The submission runs only inside the sandbox
(:mod:`prism.evaluator.identify`); its reply is evidence that this side checks against the
profile. Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prism.evaluator.identify import (
    REPLY_FILENAME,
    IdentifyReply,
    IdentifySpec,
    RegimeMeasure,
    RegimeRequest,
    StageFailure,
)
from prism.evaluator.output_tree import confine_output, remove_tree
from prism.profiles import PROFILE_NAMES, Profile, load_profile
from prism.submission import Problem, Submission, load_submission

if TYPE_CHECKING:
    from prism.evaluator.sandbox import SandboxLimits, SandboxResult

DEFAULT_TIMEOUT_S = 600.0
_MAX_REPLY_BYTES = 1_000_000
_LOG_TAIL_LINES = 20
#: What each failed stage means for a run, in the codes ``prism eval`` uses where it has one.
STAGE_CODES: dict[str, str] = {
    "import": "eval.import_failed",
    "build": "eval.build_failed",
    "graph": "graph.forward_failed",
    "forward": "identify.forward_failed",
    "logits": "eval.bad_logits",
    "backward": "identify.backward_failed",
    "nonfinite": "identify.nonfinite",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegimeIdentity(_Strict):
    name: str
    vocab_size: int
    sequence_length: int
    max_parameters: int
    max_layers: int
    parameter_count: int | None = None
    weights_elements: int | None = None
    layer_count: int | None = None
    loss: float | None = None
    build_s: float | None = None
    forward_s: float | None = None
    backward_s: float | None = None
    ok: bool = False


class IdentifyReport(_Strict):
    """What ``prism identify --json`` prints."""

    ok: bool
    profile: str
    kind: str
    architecture_id: str | None
    family_id: str | None = None
    version_id: str | None = None
    canonical_parameters: int | None = None
    flops_per_token: float | None = None
    regimes: list[RegimeIdentity] = Field(default_factory=list)
    problems: list[Problem] = Field(default_factory=list)
    isolation: str | None = None
    wall_s: float = 0.0


# ---------------------------------------------------------------------------------------------
# the request


def vocab_size(tokenizer: str) -> int:
    from prism.data.tokenizers import ByteTokenizer, Gpt2Tokenizer

    sizes = {"byte": ByteTokenizer.vocab_size, "gpt2": Gpt2Tokenizer.vocab_size}
    return sizes[tokenizer]


def regime_requests(profile: Profile, names: list[str] | None) -> list[RegimeRequest]:
    regimes = [profile.regime(name) for name in names] if names else list(profile.regimes)
    vocab = vocab_size(profile.tokenizer)
    return [
        RegimeRequest(
            name=regime.name,
            context={
                "vocab_size": vocab,
                "sequence_length": regime.sequence_length,
                "max_layers": regime.max_layers,
                "max_parameters": regime.max_parameters,
                "seed": profile.seeds[0],
                "train_tokens": regime.train_tokens,
            },
        )
        for regime in regimes
    ]


def _limits(profile: Profile, timeout_s: float, threads: int) -> SandboxLimits:
    from prism.evaluator.sandbox import SandboxLimits

    return SandboxLimits(
        wall_s=timeout_s,
        memory_bytes=profile.limits.memory_bytes,
        pids=profile.limits.pids,
        cpu_s=int(timeout_s * threads) + 60,
        fsize_bytes=64_000_000,
        nofile=profile.limits.nofile,
        log_bytes=1_000_000,
        device="cpu",
    )


# ---------------------------------------------------------------------------------------------
# running it


def _read_reply(path: Path) -> IdentifyReply | None:
    """The process's reply, if it wrote a well-formed one of sane size to a regular file.

    The sandbox could leave a symlink (to a host file) or a FIFO (to block us) in its place:
    the file is opened without following links or blocking, and must be a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, _MAX_REPLY_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_REPLY_BYTES:
        return None
    try:
        return IdentifyReply.model_validate_json(data)
    except ValidationError:
        return None


def _sandboxed(
    submission: Submission, spec_fields: dict[str, Any], limits: SandboxLimits, work: Path
) -> tuple[SandboxResult, IdentifyReply | None, Problem | None]:
    """Run the identify process; its result, its reply, and the problem with its output tree."""
    from prism.evaluator import sandbox as sb

    submission_dir, spec_dir, out_dir = work / "submission", work / "spec", work / "out"
    submission.write_to(submission_dir)
    spec_dir.mkdir()
    out_dir.mkdir()
    spec = IdentifySpec(
        submission_dir=str(submission_dir),
        architecture_entrypoint=submission.architecture_entrypoint,
        training_entrypoint=submission.training_entrypoint,
        reply_path=str(out_dir / REPLY_FILENAME),
        **spec_fields,
    )
    spec_path = spec_dir / "identify_spec.json"
    spec_path.write_text(spec.model_dump_json(indent=2), encoding="utf-8")
    sandbox_spec = sb.SandboxSpec(
        argv=[sys.executable, "-m", "prism.evaluator.identify", "--spec", str(spec_path)],
        binds=[
            *sb.python_binds(),
            sb.Bind(src=submission_dir),
            sb.Bind(src=spec_dir),
            sb.Bind(src=out_dir, writable=True),
        ],
        env={"OMP_NUM_THREADS": str(spec.torch_threads), "PYTHONHASHSEED": "0"},
        limits=limits,
    )
    result = sb.run_sandboxed(sandbox_spec, log_path=work / "identify.log")
    tree_fault = confine_output(out_dir)  # a tree over the limits is emptied: no reply
    if tree_fault is not None:
        return result, None, Problem("identify.output_tree", tree_fault.message)
    return result, _read_reply(out_dir / REPLY_FILENAME), None


def identify(
    submission: Submission,
    profile: Profile,
    *,
    regimes: list[str] | None = None,
    build: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    threads: int = 1,
) -> IdentifyReport:
    """Measure ``submission`` in a sandbox and judge the measurement against ``profile``."""
    requests = regime_requests(profile, regimes)
    spec_fields = {
        "canonical_context": profile.canonical_context.model_dump() | {"seed": profile.seeds[0]},
        "regimes": requests,
        "build": build,
        "torch_threads": threads,
    }
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="prism-identify-"))
    try:
        result, reply, tree_problem = _sandboxed(
            submission, spec_fields, _limits(profile, timeout_s, threads), work
        )
    finally:
        remove_tree(work)  # the sandbox's out dir is the submission's: any depth, any modes
    report = assess(submission, profile, requests, reply, result, tree_problem)
    report.wall_s = time.perf_counter() - started
    return report


# ---------------------------------------------------------------------------------------------
# judging the reply


def _stage_problem(failure: StageFailure, where: str) -> Problem:
    last = failure.frames[-1] if failure.frames else None
    trace = "".join(f"\n    {f.file}:{f.line} in {f.function}: {f.text}" for f in failure.frames)
    return Problem(
        STAGE_CODES[failure.stage],
        f"{where}: {failure.error}{trace}",
        last.file if last else None,
        last.line if last else None,
    )


def _budget_problems(measure: RegimeMeasure, request: RegimeRequest) -> list[Problem]:
    budget, layers = request.context["max_parameters"], request.context["max_layers"]
    params, state, depth = measure.parameter_count, measure.weights_elements, measure.layer_count
    where = f"regime {request.name}"
    problems = []
    if params is not None and params > budget:
        message = f"{where}: {params:,} parameters, above max_parameters={budget:,}"
        problems.append(Problem("eval.too_many_parameters", message))
    elif state is not None and state > budget:
        message = (
            f"{where}: the model's state (parameters and buffers) holds {state:,} elements, above "
            f"max_parameters={budget:,}; the trained weights file is counted this way"
        )
        problems.append(Problem("identify.weights_over_budget", message))
    if depth is not None and depth > layers:
        problems.append(
            Problem("eval.too_many_layers", f"{where}: {depth} layers, above max_layers={layers}")
        )
    return problems


def _regime_identity(
    measure: RegimeMeasure, request: RegimeRequest, problems: list[Problem]
) -> RegimeIdentity:
    fields = measure.model_dump(exclude={"name", "failure"})
    context = request.context
    return RegimeIdentity(
        name=request.name,
        vocab_size=context["vocab_size"],
        sequence_length=context["sequence_length"],
        max_parameters=context["max_parameters"],
        max_layers=context["max_layers"],
        ok=not problems,
        **fields,
    )


def _sandbox_problem(result: SandboxResult) -> Problem:
    if result.timed_out:
        return Problem(
            "identify.timeout", f"the identify process ran past {result.wall_s:.0f} s and was killed"
        )
    if result.memory_exceeded:
        return Problem("identify.memory_exceeded", "the identify process ran out of its memory limit")
    tail = "\n".join(result.log_tail.strip().splitlines()[-_LOG_TAIL_LINES:])
    return Problem(
        "identify.no_reply",
        f"the identify process exited ({result.exit_code}, signal {result.signal}) without a readable reply"
        + (f"; log tail:\n{tail}" if tail else ""),
    )


def assess(
    submission: Submission,
    profile: Profile,
    requests: list[RegimeRequest],
    reply: IdentifyReply | None,
    result: SandboxResult,
    tree_problem: Problem | None = None,
) -> IdentifyReport:
    """Turn the sandbox's evidence into a verdict: every problem, and what was measured."""
    report = IdentifyReport(
        ok=False,
        profile=profile.key,
        kind=submission.kind,
        architecture_id=submission.architecture_id,
        isolation=result.isolation.mode,
    )
    problems: list[Problem] = []
    if tree_problem is not None:  # the host emptied the output dir: the reply went with it
        problems.append(tree_problem)
    elif reply is None:
        problems.append(_sandbox_problem(result))
    elif reply.import_failure is not None:
        problems.append(_stage_problem(reply.import_failure, "importing the submission"))
    elif [m.name for m in reply.regimes] != [r.name for r in requests]:
        problems.append(Problem("identify.no_reply", "the reply does not answer the regimes asked for"))
    else:
        problems.extend(_canonical(report, reply, submission, profile))
        for measure, request in zip(reply.regimes, requests, strict=True):
            found = _budget_problems(measure, request)
            if measure.failure is not None:
                found.append(_stage_problem(measure.failure, f"regime {request.name}"))
            problems.extend(found)
            report.regimes.append(_regime_identity(measure, request, found))
    report.problems = problems
    report.ok = not problems
    return report


def _canonical(
    report: IdentifyReport, reply: IdentifyReply, submission: Submission, profile: Profile
) -> list[Problem]:
    canonical = reply.canonical
    if canonical is None:
        return [Problem("identify.no_reply", "the reply holds no canonical measurement")]
    report.family_id, report.version_id = canonical.family_id, canonical.version_id
    report.canonical_parameters, report.flops_per_token = canonical.parameter_count, canonical.flops_per_token
    if canonical.failure is not None:
        where = f"at the canonical context ({profile.canonical_context.sequence_length} tokens)"
        return [_stage_problem(canonical.failure, where)]
    return family_problems(submission, canonical.family_id)


def family_problems(submission: Submission, family_id: str | None) -> list[Problem]:
    """A ``training_for_arch`` must build the family it names (``prism eval`` checks the same)."""
    if submission.kind != "training_for_arch" or family_id is None or family_id == submission.architecture_id:
        return []
    return [
        Problem(
            "eval.family_mismatch",
            f"prism.yaml names architecture_id {submission.architecture_id!r}, but the model builds family "
            f"{family_id!r}; a training_for_arch must train the family it names (set architecture_id: {family_id} "
            "if that is the family you mean)",
            submission.manifest_file,
            None,
        )
    ]


# ---------------------------------------------------------------------------------------------
# command line


def add_identify_options(parser: argparse.ArgumentParser) -> None:
    """The options ``prism identify`` and ``prism check --build`` share."""
    parser.add_argument(
        "--profile",
        default="local_cpu_smoke",
        help=f"evaluation profile whose regimes to check: {', '.join(PROFILE_NAMES)} or a .yaml path "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--regime", action="append", default=None, help="regime name (repeatable; default: every regime)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="wall-clock limit in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads in the sandbox (default: %(default)s)"
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "identify",
        help="family id, version id, parameters and layers at every regime, in seconds, without training",
        description="Build the submission in the sandbox: its family and version id at the canonical "
        "context, and at every regime of the profile its parameter and layer counts against the budget "
        "plus one CPU forward and backward at the regime's full context.",
    )
    parser.add_argument("path", type=Path, help="submission: a .zip, a single .py or a project directory")
    add_identify_options(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run_identify)


def run_identify(args: argparse.Namespace) -> int:
    submission = load_submission(args.path)  # a rejected submission raises: `prism check` shows why
    report = identify(
        submission,
        load_profile(args.profile),
        regimes=args.regime,
        timeout_s=args.timeout,
        threads=args.threads,
    )
    if args.json:
        print(json.dumps(report.model_dump(mode="json"), indent=2, sort_keys=True))
    else:
        print_identify(report, str(args.path))
    return 0 if report.ok else 1


def _fmt_seconds(*values: float | None) -> str:
    known = [v for v in values if v is not None]
    return f"{sum(known):.2f}" if known else "-"


def print_identify(report: IdentifyReport, label: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    verdict = "[bold green]OK[/]" if report.ok else "[bold red]PROBLEMS[/]"
    console.print(f"{label}: {verdict}  ({report.profile}, {report.kind}, {report.wall_s:.1f} s)")
    head = Table(show_header=False, box=None, pad_edge=False)
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    head.add_row("family id", report.family_id or "-")
    head.add_row("version id", report.version_id or "-")
    if report.architecture_id is not None:
        head.add_row("architecture_id", report.architecture_id)
    head.add_row(
        "canonical parameters", f"{report.canonical_parameters:,}" if report.canonical_parameters else "-"
    )
    console.print(head)
    table = Table(title="regimes", title_justify="left")
    for column in ("regime", "V x T", "parameters / budget", "layers / max", "fwd+bwd s", "ok"):
        table.add_column(column)
    for r in report.regimes:
        params = f"{r.parameter_count:,}" if r.parameter_count is not None else "-"
        layers = str(r.layer_count) if r.layer_count is not None else "-"
        table.add_row(
            r.name, f"{r.vocab_size} x {r.sequence_length}", f"{params} / {r.max_parameters:,}",
            f"{layers} / {r.max_layers}", _fmt_seconds(r.forward_s, r.backward_s), "yes" if r.ok else "[red]no[/]",
        )  # fmt: skip
    console.print(table)
    for problem in report.problems:
        print(problem)
