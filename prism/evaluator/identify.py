"""``python -m prism.evaluator.identify --spec SPEC``: what a submission builds, measured in the sandbox.

Runs INSIDE the sandbox only (it imports submission code); ``prism identify`` and
``prism check --build`` start it through :func:`prism.evaluator.sandbox.run_sandboxed` with the
submission bound read-only and read its reply as evidence. Without training, it:

1. imports the submission (:func:`prism.evaluator.loading.load_submission_modules`);
2. builds the model at the profile's canonical context and records its architecture graph
   (:func:`prism.evaluator.graph.record_architecture`): family id, version id, FLOPs per token;
3. at every requested regime, builds the model with that regime's context, counts parameters,
   layers and every tensor of its state (what a trained weights file would hold), and runs one
   forward and one backward on CPU at the regime's full context (B = 2, T = the regime's
   sequence length), which is where hard-coded shapes and budget overruns show.

Failures are recorded per stage, with the submission's own stack frames (paths relative to the
submission), and never stop the other regimes. The reply is written to ``spec.reply_path``.
The models here (spec and reply) are torch-free so the host can import them.
"""

from __future__ import annotations

import argparse
import gc
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

REPLY_SCHEMA = "prism.identify.v1"
REPLY_FILENAME = "identify_reply.json"
FORWARD_BATCH = 2
_MAX_MESSAGE = 2_000
_MAX_FRAMES = 12

Stage = Literal["build", "graph", "forward", "logits", "backward", "nonfinite"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegimeRequest(_Strict):
    name: str
    context: dict[str, int] = Field(
        description="vocab_size, sequence_length, max_layers, max_parameters, seed"
    )


class IdentifySpec(_Strict):
    """What the host asks for (written read-only into the sandbox)."""

    submission_dir: str
    architecture_entrypoint: str
    training_entrypoint: str | None = None
    canonical_context: dict[str, int]
    regimes: list[RegimeRequest]
    build: bool = Field(default=True, description="forward and backward at every regime")
    reply_path: str
    torch_threads: int = Field(default=1, ge=1)


class Frame(_Strict):
    file: str = Field(description="path relative to the submission")
    line: int
    function: str
    text: str


class StageFailure(_Strict):
    stage: Stage | Literal["import"]
    error: str = Field(max_length=_MAX_MESSAGE + 100)
    frames: list[Frame] = Field(default_factory=list, max_length=_MAX_FRAMES)


class CanonicalMeasure(_Strict):
    family_id: str | None = None
    version_id: str | None = None
    parameter_count: int | None = Field(default=None, ge=0)
    flops_per_token: float | None = Field(default=None, ge=0)
    seconds: float = Field(default=0.0, ge=0)
    failure: StageFailure | None = None


class RegimeMeasure(_Strict):
    name: str
    parameter_count: int | None = Field(default=None, ge=0)
    weights_elements: int | None = Field(default=None, ge=0, description="every state tensor, storages once")
    layer_count: int | None = Field(default=None, ge=0)
    loss: float | None = None
    build_s: float | None = Field(default=None, ge=0)
    forward_s: float | None = Field(default=None, ge=0)
    backward_s: float | None = Field(default=None, ge=0)
    failure: StageFailure | None = None


class IdentifyReply(_Strict):
    """What the process says it measured. Evidence only: the host checks it against the budgets."""

    schema_version: Literal["prism.identify.v1"] = REPLY_SCHEMA
    torch_version: str | None = None
    import_failure: StageFailure | None = None
    canonical: CanonicalMeasure | None = None
    regimes: list[RegimeMeasure] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# in the sandbox


class _StageError(Exception):
    def __init__(self, stage: Stage, message: str) -> None:
        super().__init__(message)
        self.stage: Stage = stage


def _submission_frames(exc: BaseException, root: Path) -> list[Frame]:
    """The submission's own frames of the first exception in the chain that has any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = []
        for summary in traceback.extract_tb(current.__traceback__):
            path = Path(summary.filename).resolve()
            if path.is_relative_to(root):
                frames.append(
                    Frame(
                        file=path.relative_to(root).as_posix(),
                        line=summary.lineno or 0,
                        function=summary.name,
                        text=(summary.line or "")[:200],
                    )
                )
        if frames:
            return frames[-_MAX_FRAMES:]
        current = current.__cause__ or current.__context__
    return []


def _failure(stage: Stage | Literal["import"], exc: BaseException, root: Path) -> StageFailure:
    origin: BaseException = exc
    while origin.__cause__ is not None and not isinstance(origin, _StageError):
        origin = origin.__cause__
    text = str(exc) if isinstance(exc, _StageError) else f"{type(origin).__name__}: {origin}"
    return StageFailure(stage=stage, error=text[:_MAX_MESSAGE], frames=_submission_frames(exc, root))


def _build(architecture: Any, ctx: Any) -> Any:
    import torch

    torch.manual_seed(ctx.seed)
    model = architecture.build_model(ctx)
    if not isinstance(model, torch.nn.Module):
        raise _StageError("build", f"build_model(ctx) returned {type(model).__name__}, not torch.nn.Module")
    return model


def _weights_elements(model: Any) -> int:
    """Elements of every tensor in the state dict, each storage once (what a weights file holds)."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    total = 0
    for tensor in model.state_dict().values():
        key = (tensor.data_ptr(), tensor.numel(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            total += tensor.numel()
    return total


def _forward_backward(model: Any, ctx: Any, measure: RegimeMeasure) -> None:
    import torch

    from prism.evaluator.loading import check_logits

    positions = torch.arange(FORWARD_BATCH * ctx.sequence_length, dtype=torch.int64)
    tokens = ((positions * 7919 + 13) % ctx.vocab_size).view(FORWARD_BATCH, ctx.sequence_length)
    model.train()
    started = time.perf_counter()
    try:
        logits = model(tokens)
    except Exception as exc:
        raise _StageError("forward", f"model(tokens) at B={FORWARD_BATCH}, T={ctx.sequence_length}: "
                          f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
    measure.forward_s = time.perf_counter() - started
    try:
        check_logits(
            logits,
            batch=FORWARD_BATCH,
            seq_len=ctx.sequence_length,
            vocab_size=ctx.vocab_size,
            where="model(tokens)",
        )
    except Exception as exc:
        raise _StageError("logits", str(exc)) from exc
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, ctx.vocab_size).float(), tokens[:, 1:].reshape(-1)
    )
    if not bool(torch.isfinite(loss)):
        raise _StageError("nonfinite", f"the loss at initialisation is {float(loss)}")
    measure.loss = float(loss)
    started = time.perf_counter()
    try:
        loss.backward()
    except Exception as exc:
        raise _StageError("backward", f"loss.backward(): {type(exc).__name__}: {exc}") from exc
    measure.backward_s = time.perf_counter() - started
    bad = [
        name
        for name, p in model.named_parameters()
        if p.grad is not None and not bool(torch.isfinite(p.grad).all())
    ]
    if bad:
        raise _StageError("nonfinite", f"non-finite gradients in {', '.join(bad[:5])}")


def _measure_regime(
    architecture: Any, request: RegimeRequest, spec: IdentifySpec, root: Path
) -> RegimeMeasure:
    from prism.evaluator.context import make_context
    from prism.evaluator.loading import count_layers, count_parameters

    measure = RegimeMeasure(name=request.name)
    ctx = make_context(dict(request.context))
    stage: Stage = "build"
    model = None
    try:
        started = time.perf_counter()
        model = _build(architecture, ctx)
        measure.parameter_count = count_parameters(model)
        measure.layer_count = count_layers(model)
        measure.weights_elements = _weights_elements(model)
        measure.build_s = time.perf_counter() - started
        if spec.build:
            stage = "forward"
            _forward_backward(model, ctx, measure)
    except (Exception, SystemExit) as exc:  # SystemExit: submission code may call exit()
        measure.failure = _failure(exc.stage if isinstance(exc, _StageError) else stage, exc, root)
    finally:
        del model
        gc.collect()
    return measure


def _measure_canonical(architecture: Any, spec: IdentifySpec, root: Path) -> CanonicalMeasure:
    from prism.evaluator.context import make_context
    from prism.evaluator.graph import record_architecture

    measure = CanonicalMeasure()
    ctx = make_context(dict(spec.canonical_context))
    stage: Stage = "build"
    started = time.perf_counter()
    try:
        model = _build(architecture, ctx)
        stage = "graph"
        graph = record_architecture(model, ctx)
        measure.family_id, measure.version_id = graph.family_id, graph.version_id
        measure.parameter_count, measure.flops_per_token = graph.parameter_count, graph.flops_per_token
    except (Exception, SystemExit) as exc:  # SystemExit: submission code may call exit()
        measure.failure = _failure(exc.stage if isinstance(exc, _StageError) else stage, exc, root)
    measure.seconds = time.perf_counter() - started
    return measure


def identify(spec: IdentifySpec) -> IdentifyReply:
    """Import, then the canonical graph, then every regime (see the module docstring)."""
    import torch

    from prism.evaluator.loading import load_submission_modules

    torch.set_num_threads(spec.torch_threads)
    root = Path(spec.submission_dir).resolve()
    reply = IdentifyReply(torch_version=torch.__version__)
    try:
        loaded = load_submission_modules(root, spec.architecture_entrypoint, spec.training_entrypoint)
    except Exception as exc:  # anything the submission raised while importing
        reply.import_failure = _failure("import", exc, root)
        return reply
    reply.canonical = _measure_canonical(loaded.architecture, spec, root)
    for request in spec.regimes:
        reply.regimes.append(_measure_regime(loaded.architecture, request, spec, root))
    return reply


def _write_reply(reply: IdentifyReply, path: Path) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(reply.model_dump_json(), encoding="utf-8")
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = IdentifySpec.model_validate_json(args.spec.read_text(encoding="utf-8"))
    _write_reply(identify(spec), Path(spec.reply_path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
