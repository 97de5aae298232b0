"""The recorded inference pass as a program: recorded, rebuilt without the model's code, checked.

``ProgramModule`` runs in a process that never imported the submission; here it is exercised
in-process on real models (the end-to-end check, in sandboxed processes, is in
tests/hostile/test_budget_identity_attacks.py and tests/measurement).
"""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from prism.evaluator import graph as graph_module
from prism.evaluator import graph_program
from prism.evaluator.context import make_context
from prism.evaluator.graph import record_architecture
from prism.evaluator.graph_program import ProgramError, ProgramModule, record_program, resolve_op
from prism.evaluator.heldout_host import SessionOutcome
from prism.evaluator.heldout_wire import EXECUTED, EvalProcessSpec
from prism.evaluator.program_check import ProgramCheck, ProgramReply, deviation, draw_windows, family_window
from prism.evaluator.program_exec import answer_execute

VOCAB, SEQ = 61, 12


class Mixed(nn.Module):
    """A little of everything a program must carry: a tied head, a persistent and a
    non-persistent buffer, a plain tensor attribute, a frozen parameter, a view of a parameter
    made outside forward, an in-place op, layer norm, causal attention and tanh-GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.head = nn.Linear(16, VOCAB, bias=False)
        self.head.weight = self.emb.weight
        self.norm = nn.LayerNorm(16)
        self.qkv = nn.Linear(16, 48)
        self.frozen = nn.Parameter(torch.randn(16), requires_grad=False)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 16))
        self.register_buffer("positions", torch.randn(SEQ, 16), persistent=False)
        self.offset = torch.randn(16)  # a plain attribute: shipped with the program
        self.first_rows = self.qkv.weight[:16]  # a view of a parameter, made outside forward

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens) + self.positions[: tokens.shape[1]]
        x = self.norm(x) * self.scale + self.offset + self.frozen
        q, k, v = self.qkv(x).split(16, dim=-1)
        attn = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = torch.nn.functional.gelu(attn, approximate="tanh")
        y.add_(x @ self.first_rows.T)
        return self.head(y)


def _program(model: nn.Module) -> dict:
    tokens = torch.arange(SEQ).unsqueeze(0) % VOCAB
    program = record_program(model, model, tokens)
    return json.loads(json.dumps(program))  # it crosses a pipe as JSON


def _ctx():  # type: ignore[no-untyped-def]
    return make_context(
        {"vocab_size": VOCAB, "sequence_length": SEQ, "max_parameters": 10**6, "max_layers": 4, "seed": 0}
    )


def test_a_rebuilt_program_computes_the_model_bit_for_bit_and_has_its_family():
    torch.manual_seed(0)
    model = Mixed().eval()
    program = _program(model)
    rebuilt = ProgramModule(program, model.state_dict())
    other = torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(rebuilt(other), model(other))
    kinds = {node["kind"] for node in program["nodes"]}
    assert {"tokens", "weight", "const", "op"} <= kinds
    ctx = _ctx()
    assert record_architecture(ProgramModule(program, model.state_dict()), ctx).family_id == (
        record_architecture(model, ctx).family_id
    )


def test_the_program_reads_the_weights_it_is_given_not_the_models():
    torch.manual_seed(0)
    model = Mixed().eval()
    program = _program(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.qkv.weight.add_(0.5)  # what a model that trains at evaluation time would hold in memory
    tokens = torch.randint(0, VOCAB, (1, SEQ))
    with torch.no_grad():
        assert not torch.allclose(ProgramModule(program, state)(tokens), model(tokens))
    rebuilt = ProgramModule(program, state)
    with torch.no_grad():
        for tensor in [*rebuilt.parameters(), *rebuilt.buffers()]:
            tensor.zero_()  # the module holds private copies: nothing it does reaches the caller's weights
    assert all(state[name].abs().sum() > 0 for name in ("qkv.weight", "emb.weight", "scale"))


def _mutated(program: dict, index: int, **fields) -> dict:  # type: ignore[no-untyped-def]
    changed = json.loads(json.dumps(program))
    changed["nodes"][index].update(fields)
    return changed


def _first(program: dict, kind: str) -> int:
    return next(i for i, node in enumerate(program["nodes"]) if node["kind"] == kind)


@pytest.mark.parametrize(
    ("edit", "code"),
    [
        (
            lambda p: _mutated(p, _first(p, "op"), op="prism_secret.lookup.default"),
            "identity.program_unsupported",
        ),
        (lambda p: _mutated(p, _first(p, "op"), op="aten.from_file.default"), "identity.program_unsupported"),
        (
            lambda p: _mutated(p, _first(p, "op"), op="aten.no_such_op.default"),
            "identity.program_unsupported",
        ),
        (lambda p: _mutated(p, _first(p, "weight"), name="not.in.the.file"), "identity.weights_mismatch"),
        (lambda p: _mutated(p, _first(p, "const"), data="***"), "identity.program_invalid"),
        (lambda p: _mutated(p, _first(p, "const"), shape=[10**6]), "identity.program_invalid"),
        (lambda p: _mutated(p, 0, kind="oracle"), "identity.program_invalid"),
        (
            lambda p: _mutated(
                p, _first(p, "op"), op="aten._sparse_coo_tensor_with_dims_and_tensors.default"
            ),
            "identity.program_unsupported",
        ),
        (
            lambda p: _mutated(p, _first(p, "op"), op="aten.set_.source_Tensor"),
            "identity.program_unsupported",
        ),
        (lambda p: {**p, "schema": "other"}, "identity.program_invalid"),
        (lambda p: {**p, "output": [10**6, 0]}, "identity.program_invalid"),
    ],
)
def test_a_malformed_program_is_refused_with_a_typed_miner_fault(edit, code):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = Mixed().eval()
    program = edit(_program(model))
    with pytest.raises(ProgramError) as excinfo:
        ProgramModule(program, model.state_dict())(torch.zeros(1, SEQ, dtype=torch.long))
    assert excinfo.value.code == code and excinfo.value.fault == "miner"


def test_an_op_given_a_reference_to_a_later_node_is_refused():
    torch.manual_seed(0)
    model = Mixed().eval()
    program = _program(model)
    index = _first(program, "op")
    program["nodes"][index]["args"] = [{"ref": [len(program["nodes"]) - 1, 0]}]
    with pytest.raises(ProgramError, match="before it exists"):
        ProgramModule(program, model.state_dict())(torch.zeros(1, SEQ, dtype=torch.long))


def test_constants_the_weights_do_not_hold_are_capped(monkeypatch):
    monkeypatch.setattr(graph_program, "MAX_CONSTANT_VALUES", 8)
    torch.manual_seed(0)
    with pytest.raises(graph_program.GraphRecordingError) as excinfo:
        _program(Mixed().eval())
    assert excinfo.value.code == "graph.constants_too_large"


def _spec() -> EvalProcessSpec:
    return EvalProcessSpec(
        submission_dir="/nowhere", architecture_entrypoint="model.py", weights_path="/nowhere/w.safetensors",
        context={"vocab_size": VOCAB, "sequence_length": SEQ, "max_parameters": 10**6, "max_layers": 4, "seed": 0},
        canonical_context={"vocab_size": VOCAB, "sequence_length": SEQ, "max_parameters": 10**6, "max_layers": 4},
        max_batch_size=4,
    )  # fmt: skip


def _execute_request(windows: np.ndarray, program: dict) -> tuple[dict, bytes]:
    data = np.ascontiguousarray(windows, dtype="<i8")
    header = {"type": "execute", "shape": list(data.shape), "tokens_bytes": data.nbytes}
    return header, data.tobytes() + json.dumps(program).encode()


def test_the_checking_side_answers_log_probs_that_match_the_models_and_its_family():
    torch.manual_seed(0)
    model = Mixed().eval()
    windows = np.random.default_rng(3).integers(0, VOCAB, size=(3, SEQ + 1))
    header, payload = answer_execute(*_execute_request(windows, _program(model)), model.state_dict(), _spec())
    assert header["type"] == EXECUTED and "error" not in header
    log_probs = np.frombuffer(payload, dtype="<f8").reshape(3, SEQ)
    with torch.no_grad():
        logits = model(torch.from_numpy(windows[:, :-1]))
    expected = (
        torch.log_softmax(logits.double(), -1).gather(-1, torch.from_numpy(windows[:, 1:, None])).squeeze(-1)
    )
    assert np.abs(log_probs - expected.numpy()).max() < 1e-5
    family = record_architecture(model, _ctx()).family_id
    assert header["graph"]["family_id"] == header["public_graph"]["family_id"] == family
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert set(header["parameters"]["window"]) == set(header["parameters"]["public"]) == trained


def test_the_checking_side_answers_a_broken_program_with_its_error_not_a_crash():
    torch.manual_seed(0)
    model = Mixed().eval()
    program = _mutated(_program(model), 0, kind="oracle")
    windows = np.zeros((1, SEQ + 1), dtype=np.int64)
    header, payload = answer_execute(*_execute_request(windows, program), model.state_dict(), _spec())
    assert header["error"]["code"] == "identity.program_invalid" and payload == b""
    header, _ = answer_execute({"type": "execute", "shape": [1, SEQ + 1], "tokens_bytes": (SEQ + 1) * 8},
                               windows.tobytes() + b"{not json", model.state_dict(), _spec())  # fmt: skip
    assert header["error"]["code"] == "identity.program_invalid"


def _session(log_p: np.ndarray) -> SessionOutcome:
    lse = np.full_like(log_p, 2.0)
    return SessionOutcome(lse=lse, target_logit=log_p + lse)


def _reply(
    log_probs: np.ndarray, public: str, on_window: str | None = None, reads: tuple[tuple[str, ...], ...] = ()
) -> ProgramReply:
    """A trusted reply: families on the public batches and the window, weights read on each."""
    window_reads, public_reads = reads or (("emb.weight",), ("emb.weight",))
    return ProgramReply(
        sent=True, log_probs=log_probs, graph={"family_id": on_window or public}, public_graph={"family_id": public},
        window_parameters=window_reads, public_parameters=public_reads,
    )  # fmt: skip


def test_the_host_refuses_a_program_whose_answers_or_family_differ():
    committed = np.log(np.full((4, SEQ), 0.25))
    main = _session(committed)
    honest = committed[[1, 3]] + 1e-7
    check = ProgramCheck(windows=[1, 3], tolerance=1e-3)
    check.reply = _reply(honest, "fam-a")
    check.max_deviation, check.worst, check.mean_shift = deviation(main, check.windows, honest)
    assert check.failure("fam-a", forward_path=True) is None
    family = check.failure("fam-b", forward_path=True)
    assert family is not None and family.code == "identity.program_family_mismatch"
    assert check.failure("fam-b", forward_path=False) is None  # an inference hook's pass is not the family's

    lied = honest.copy()
    lied[1, 5] += 0.01
    check.max_deviation, check.worst, check.mean_shift = deviation(main, check.windows, lied)
    assert check.worst == (3, 5) and math.isclose(check.max_deviation, 0.01, rel_tol=1e-3)
    mismatch = check.failure("fam-a", forward_path=True)
    assert mismatch is not None and mismatch.code == "identity.program_mismatch" and mismatch.fault == "miner"


def test_what_the_family_window_shows_is_evidence_and_the_public_family_decides():
    committed = np.log(np.full((4, SEQ), 0.25))
    main = _session(committed)
    check = ProgramCheck(windows=[2, 0], tolerance=1e-3)
    check.max_deviation, check.worst, check.mean_shift = deviation(main, check.windows, committed[[2, 0]])
    # Another family on the window, the same weights read: a value-dependent fold (evidence only).
    check.reply = _reply(committed[[2, 0]], "fam-a", "fam-doc")
    assert check.failure("fam-a", forward_path=True) is None and check.family_id == "fam-doc"
    # Weights that only the window's recording reads: shown, not refused (an inert read on the
    # public batches would hide them, and honest per-token weights look the same).
    check.reply = _reply(
        committed[[2, 0]], "fam-a", "fam-real", reads=(("emb.weight", "up.weight"), ("emb.weight",))
    )
    assert check.failure("fam-a", forward_path=True) is None and check.window_only_weights == ["up.weight"]
    # The family on the public batches is what is compared with the claim.
    check.reply = _reply(committed[[2, 0]], "fam-other", "fam-a")
    refused = check.failure("fam-a", forward_path=True)
    assert refused is not None and refused.code == "identity.program_family_mismatch"
    assert check.failure(None, forward_path=True) is None  # re-measurement: nothing claimed


def test_the_family_window_is_the_held_out_seeds_and_the_rest_are_fresh():
    windows = {family_window(64, 1234) for _ in range(3)}
    assert len(windows) == 1 and {family_window(64, seed) for seed in range(40)} != windows
    (first,) = windows
    draws = [draw_windows(64, 2, first) for _ in range(20)]
    # On top of the two fresh windows, which the sandbox cannot predict where the seed is public.
    assert all(d[0] == first and len(set(d)) == 3 and first not in d[1:] for d in draws)
    assert len({tuple(d[1:]) for d in draws}) > 1  # OS entropy: not the same pair every time
    assert draw_windows(3, 8, 1) == [1, 0, 2] and len(draw_windows(10, 2)) == 2


EOT = VOCAB - 1


class DocumentMasked(nn.Module):
    """Honest: attention that does not cross an end-of-text id. On a window without one the
    document mask is a constant and folds to the causal mask, so the family depends on the window."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.qkv = nn.Linear(16, 48)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens)
        q, k, v = self.qkv(x).unsqueeze(1).split(16, dim=-1)
        document = (tokens == EOT).cumsum(-1)  # (B, T)
        same = document.unsqueeze(-1) == document.unsqueeze(-2)
        causal = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril()
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=(same & causal).unsqueeze(1))
        return self.head(y.squeeze(1) + x)


class GatedOnThePublicIds(nn.Module):
    """Hostile: the gate is 0 on every id the public batches use, so every recording on them
    shows the embedding alone; on other ids an MLP with its own weights answers."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 16)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, VOCAB)
        marker = torch.full((VOCAB,), 100.0)  # far outside what a replay's random values reach
        for batch in graph_module.public_batches(_ctx(), SEQ):
            marker[batch.reshape(-1)] = 0.0
        self.register_buffer("marker", marker)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens)
        gate = (self.marker[tokens] > 50).any().to(x.dtype)
        return self.head(x + gate * self.down(torch.relu(self.up(x))))


def _checked(model: nn.Module, windows: np.ndarray) -> ProgramCheck:
    """The whole check in process: program recorded on the first window, executed, compared."""
    program = json.loads(json.dumps(record_program(model, model, torch.from_numpy(windows[:1, :-1]))))
    header, payload = answer_execute(*_execute_request(windows, program), model.state_dict(), _spec())
    assert "error" not in header, header
    with torch.no_grad():
        log_p = torch.log_softmax(model(torch.from_numpy(windows[:, :-1])).double(), -1)
    committed = log_p.gather(-1, torch.from_numpy(windows[:, 1:, None])).squeeze(-1).numpy()
    check = ProgramCheck(windows=list(range(len(windows))), tolerance=1e-3, family_window=0)
    check.reply.sent = True
    check.reply.parse(header, payload, len(windows), SEQ)
    check.max_deviation, check.worst, check.mean_shift = deviation(
        _session(committed), check.windows, committed
    )
    return check


def test_an_honest_document_mask_changes_the_window_family_but_is_not_refused():
    torch.manual_seed(0)
    model = DocumentMasked().eval()
    claimed = record_architecture(model, _ctx()).family_id
    rng = np.random.default_rng(5)
    plain = rng.integers(0, VOCAB - 1, size=(2, SEQ + 1))
    with_end = plain.copy()
    with_end[0, SEQ // 2] = EOT
    families = set()
    for windows in (plain, with_end):
        check = _checked(model, windows)
        assert check.failure(claimed, forward_path=True) is None, check.failure(claimed, forward_path=True)
        assert check.public_family_id == claimed and not check.window_only_weights
        assert check.reply.window_only_ops == ()  # the mask folds on the window: fewer live ops, none new
        families.add(check.family_id)
    assert len(families) == 2  # the fold depends on the window: the family there is evidence


class DocumentMaskedWithACausalBuffer(DocumentMasked):
    """Honest, nanoGPT style: the causal table is a persistent float buffer (so it is in the
    weights file) compared into a mask. A comparison makes a mask, not the buffer's values: the
    document mask that folds on the public batches reads no trained value."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bias", torch.ones(SEQ, SEQ).tril())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens)
        q, k, v = self.qkv(x).unsqueeze(1).split(16, dim=-1)
        document = (tokens == EOT).cumsum(-1)
        same = document.unsqueeze(-1) == document.unsqueeze(-2)
        causal = self.bias[: tokens.shape[1], : tokens.shape[1]] == 1
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=(same & causal).unsqueeze(1))
        return self.head(y.squeeze(1) + x)


class DocumentMaskedWithAnAdditiveBuffer(DocumentMasked):
    """Honest: an additive 0 / -inf causal buffer, filled with -inf across documents."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("causal", torch.full((SEQ, SEQ), float("-inf")).triu(1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens)
        q, k, v = self.qkv(x).unsqueeze(1).split(16, dim=-1)
        document = (tokens == EOT).cumsum(-1)
        same = document.unsqueeze(-1) == document.unsqueeze(-2)
        bias = self.causal[: tokens.shape[1], : tokens.shape[1]].masked_fill(~same, float("-inf"))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(1))
        return self.head(y.squeeze(1) + x)


@pytest.mark.parametrize("cls", [DocumentMaskedWithACausalBuffer, DocumentMaskedWithAnAdditiveBuffer])
def test_a_document_mask_over_a_causal_buffer_is_not_refused(cls):  # type: ignore[no-untyped-def]
    """A two-valued triangular table holds one bit: the one buffer the hidden-branch rule does not
    follow, so the document mask that folds on the public batches over it is not refused."""
    torch.manual_seed(0)
    model = cls().eval()
    claimed = record_architecture(model, _ctx()).family_id
    windows = np.random.default_rng(5).integers(0, VOCAB - 1, size=(2, SEQ + 1))
    windows[0, SEQ // 2] = EOT
    check = _checked(model, windows)
    assert check.failure(claimed, forward_path=True) is None, check.failure(claimed, forward_path=True)
    assert check.reply.window_only_ops == ()


class GatedWithAnInertRead(GatedOnThePublicIds):
    """The same gate, and the MLP's weights read on the public batches by a term too small to
    change a logit: the weights are live there, the ops that compute from them are not."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        inert = sum(p.sum() for p in (*self.up.parameters(), *self.down.parameters()))
        return super().forward(tokens) + 1e-30 * inert


class GatedOnFrozenWeights(GatedOnThePublicIds):
    """The same gate, the MLP's weights frozen: the program calls them constants, but they are
    tensors of the weights file, so the checking side counts them as trained."""

    def __init__(self) -> None:
        super().__init__()
        self.up.requires_grad_(False)
        self.down.requires_grad_(False)


class GatedOnBufferWeights(GatedOnThePublicIds):
    """The same gate, the MLP's weights held as persistent buffers."""

    def __init__(self) -> None:
        super().__init__()
        up, down = self.up, self.down
        del self.up, self.down
        self.register_buffer("up_weight", up.weight.detach().clone())
        self.register_buffer("down_weight", down.weight.detach().clone())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens)
        gate = (self.marker[tokens] > 50).any().to(x.dtype)
        hidden = torch.relu(torch.nn.functional.linear(x, self.up_weight))
        return self.head(x + gate * torch.nn.functional.linear(hidden, self.down_weight))


class GatedOnBitsOfABuffer(GatedOnThePublicIds):
    """The same gate, the branch's weights rebuilt from the bits of a uint8 buffer through
    comparisons: a bool result does not end the dependence on the weights file."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bits", torch.randint(0, 256, (16,), dtype=torch.uint8))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens)
        gate = (self.marker[tokens] > 50).any().to(x.dtype)
        vector = sum(((self.bits & (1 << k)) != 0).to(x.dtype) * 2.0**-k for k in range(8))
        return self.head(x + gate * vector)


@pytest.mark.parametrize(
    "cls",
    [
        GatedOnThePublicIds,
        GatedWithAnInertRead,
        GatedOnFrozenWeights,
        GatedOnBufferWeights,
        GatedOnBitsOfABuffer,
    ],
    ids=["gate", "inert-read", "frozen-weights", "buffer-weights", "bits-of-a-buffer"],
)
def test_a_branch_gated_on_the_public_ids_is_refused_on_the_family_window(cls):  # type: ignore[no-untyped-def]
    """Every recording on the public batches shows the embedding alone, as claimed; on the
    family window the MLP computes from its trained weights in ops that are dead on them."""
    torch.manual_seed(0)
    model = cls().eval()
    claimed = record_architecture(model, _ctx()).family_id
    unused = [i for i in range(VOCAB) if model.marker[i] > 50]
    windows = np.random.default_rng(6).choice(unused, size=(2, SEQ + 1))
    check = _checked(model, windows)
    assert check.public_family_id == claimed and check.family_id != claimed  # the public batches are fooled
    assert check.reply.window_only_ops, check.reply.window_only_ops
    refused = check.failure(claimed, forward_path=True)
    assert (
        refused is not None and refused.code == "identity.program_hidden_branch" and refused.fault == "miner"
    )
    check.family_window = None  # a re-measurement has no family window: nothing shared to decide on
    assert check.failure(claimed, forward_path=True) is None
    assert check.failure(claimed, forward_path=False) is None  # an inference hook's pass has no family claim


class SpaceVector(nn.Module):
    """A learned vector added at the space byte, written as compare-and-select: the public
    batches hold no id 32, so the branch folds away there and reads its weight only on text."""

    def __init__(self, as_embedding: bool) -> None:
        super().__init__()
        self.emb, self.head = nn.Embedding(VOCAB, 16), nn.Linear(16, VOCAB)
        self.as_embedding = as_embedding
        self.space = nn.Embedding(VOCAB, 16) if as_embedding else nn.Parameter(torch.randn(16))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.as_embedding:  # a learned vector per id, looked up by the ids: live on every input
            return self.head(self.emb(tokens) + self.space(tokens))
        return self.head(self.emb(tokens) + (tokens == 32).unsqueeze(-1).float() * self.space)


def test_a_weight_used_only_at_an_id_the_public_batches_lack_is_refused_unless_it_is_a_lookup():
    """The known cost (docs/identity.md): the claim cannot show a trained branch the public
    batches never take, honest or not; a vector per id looked up by the ids themselves passes (an
    index computed by a comparison, ``space((tokens == 32).long())``, folds like the select)."""
    assert 32 not in graph_module.public_batches(_ctx(), SEQ)[0]
    windows = np.full((2, SEQ + 1), 32, dtype=np.int64)
    windows[:, ::2] = 7
    for as_embedding, refused in ((False, "identity.program_hidden_branch"), (True, None)):
        torch.manual_seed(0)
        model = SpaceVector(as_embedding).eval()
        fault = _checked(model, windows).failure(
            record_architecture(model, _ctx()).family_id, forward_path=True
        )
        assert (fault.code if fault else None) == refused, fault


def test_two_recordings_that_do_not_line_up_are_refused():
    torch.manual_seed(0)
    model = Mixed().eval()
    tokens = torch.randint(0, VOCAB, (1, SEQ))
    first = graph_module.record_forward(model, _ctx(), inputs=(tokens, tokens), rebuilt=True)
    other = graph_module.record_forward(
        DocumentMasked().eval(), _ctx(), inputs=(tokens, tokens), rebuilt=True
    )
    assert graph_module.computed_only_in(first, first) == []
    with pytest.raises(graph_module.GraphRecordingError) as caught:
        graph_module.computed_only_in(first, other)
    assert caught.value.code == "graph.unaligned"


def test_the_host_blames_a_program_that_kills_its_checker_but_not_a_checker_it_never_reached():
    died = ProgramCheck(
        windows=[0], reply=ProgramReply(sent=True, error=ProgramError("closed", code="eval.protocol"))
    )
    failure = died.failure("fam-a", forward_path=True)
    assert failure is not None and failure.code == "identity.program_failed"
    assert (
        ProgramCheck(windows=[0], reply=ProgramReply(sent=False)).failure("fam-a", forward_path=True) is None
    )
    refused = ProgramReply(sent=True, refused={"code": "sandbox.whatever", "message": "no"})
    failure = ProgramCheck(windows=[0], reply=refused).failure(None, forward_path=True)
    assert failure is not None and failure.code == "identity.program_failed"


def test_shipped_constants_round_trip_exactly():
    torch.manual_seed(0)
    model = Mixed().eval()
    program = _program(model)
    shipped = [n for n in program["nodes"] if n["kind"] == "const"]
    values = [torch.frombuffer(bytearray(base64.b64decode(n["data"])), dtype=torch.float32) for n in shipped]
    assert any(torch.equal(v, model.offset) for v in values)


class Scatter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        logits = self.emb(tokens).clone()
        return logits.index_put_((torch.tensor([0]),), torch.zeros(1, tokens.shape[1], VOCAB))


def test_an_op_asked_to_skip_its_bounds_checks_is_refused():
    model = Scatter().eval()
    program = _program(model)
    names = [node.get("op") for node in program["nodes"]]
    index = names.index("aten.index_put_.default")
    tokens = torch.randint(0, VOCAB, (1, SEQ))
    # The same write through the op that takes an ``unsafe`` flag (a submission may call it).
    program["nodes"][index]["op"] = "aten._index_put_impl_.default"
    args = program["nodes"][index]["args"]
    program["nodes"][index]["args"] = [*args[:3], False, False]  # accumulate=False, unsafe=False
    with torch.no_grad():
        assert torch.equal(ProgramModule(program, model.state_dict())(tokens), model(tokens))
    program["nodes"][index]["args"] = [*args[:3], False, True]  # unsafe=True
    with pytest.raises(ProgramError) as excinfo:
        ProgramModule(program, model.state_dict())(tokens)
    assert excinfo.value.code == "identity.program_unsupported"


def test_a_small_lie_at_every_position_is_caught_by_its_mean():
    committed = np.log(np.full((4, SEQ), 0.25))
    main = _session(committed)
    program = committed[[0, 2]] - 9e-4  # each position inside the tolerance, all kinder to the model
    check = ProgramCheck(
        windows=[0, 2],
        tolerance=1e-3,
        reply=_reply(program, "f"),
    )
    check.max_deviation, check.worst, check.mean_shift = deviation(main, check.windows, program)
    assert check.max_deviation < check.tolerance and math.isclose(check.mean_shift, 9e-4, rel_tol=1e-6)
    failure = check.failure("f", forward_path=True)
    assert (
        failure is not None
        and failure.code == "identity.program_mismatch"
        and "on average" in failure.message
    )
    noise = committed[[0, 2]] + np.random.default_rng(0).normal(0.0, 3e-4, size=(2, SEQ)).clip(-9e-4, 9e-4)
    check.max_deviation, check.worst, check.mean_shift = deviation(main, check.windows, noise)
    assert check.failure("f", forward_path=True) is None  # unsigned drift passes


def test_a_checker_out_of_time_is_the_evaluations_fault_even_before_the_program_reached_it():
    from prism.evaluator.framing import ChannelTimeout

    reply = ProgramReply(sent=False, error=ChannelTimeout("deadline passed"))
    failure = ProgramCheck(windows=[0], reply=reply).failure("f", forward_path=True)
    assert failure is not None and failure.code == "eval.timeout" and failure.fault == "miner"


def test_a_program_asking_for_a_sparse_layout_is_refused():
    torch.manual_seed(0)
    model = Mixed().eval()
    program = _program(model)
    index = next(i for i, n in enumerate(program["nodes"]) if n["kind"] == "op" and "layout" in json.dumps(n))
    text = json.dumps(program["nodes"][index]).replace('"strided"', '"sparse_coo"')
    program["nodes"][index] = json.loads(text)
    with pytest.raises(ProgramError) as excinfo:
        ProgramModule(program, model.state_dict())(torch.zeros(1, SEQ, dtype=torch.long))
    assert excinfo.value.code == "identity.program_unsupported"


def test_a_program_that_reads_bits_as_another_dtype_is_refused():
    """Four int8 values out of each float32 or int32 would escape the parameter budget."""
    for name in ("aten.view.dtype", "aten.view_copy.dtype", "aten.view_copy.dtype_out"):
        with pytest.raises(ProgramError) as excinfo:
            resolve_op(name)
        assert excinfo.value.code == "identity.program_bitcast" and excinfo.value.fault == "miner"
