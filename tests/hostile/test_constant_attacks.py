"""Trained state disguised as shipped constants (attack classes 8 and 9 of issue 9).

A recorded program's tensors that are not in the weights file ("shipped constants") are neither
counted nor treated as trained weights by the hidden-branch rule. The attacks below therefore make
such constants from trained state at load time: copies of a branch the public batches fold away
(a decoy family), or a second, larger model fitted on a tape of the training batches kept in the
file (over the budget). The fresh model's constants are committed before the first batch, so
constants made later are refused (``identity.program_unexplained_constants``); constants made
from the code and the seed are not. Op calls are committed with their non-tensor arguments too:
trained values rebuilt from Python floats in ``forward`` are refused the same way.
"""

from __future__ import annotations

import pytest
from attack_helpers import RECORDING_IDS, assert_refused, describe, source

pytestmark = pytest.mark.slow

#: The corpus's real model (a gated MLP over the previous token), with its weights as Parameters.
REAL_BRANCH = """
REAL_SHAPES = {"r_emb": ("V", 32), "r_prev": ("V", 32), "r_up": (32, 64), "r_gate": (32, 64),
               "r_down": (64, 32), "r_out": (32, "V"), "r_bias": ("V",)}


def real_forward(tokens, w):
    prev = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
    h = w["r_emb"][tokens] + w["r_prev"][prev]
    h = h + (torch.sigmoid(h @ w["r_gate"]) * torch.relu(h @ w["r_up"])) @ w["r_down"]
    return h @ w["r_out"] + w["r_bias"]


class WithRealBranch(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        for name, shape in REAL_SHAPES.items():
            shape = [vocab_size if s == "V" else s for s in shape]
            value = torch.zeros(shape) if name == "r_bias" else torch.randn(shape) * (1.0 / shape[0] ** 0.5)
            setattr(self, name, torch.nn.Parameter(value))
        marker = torch.full((vocab_size,), 100.0)
        marker[sorted(_recording_ids(vocab_size))] = 0.0
        self.register_buffer("marker", marker, persistent=False)  # from the code: a shipped constant

    def weights(self):
        return {name: getattr(self, name) for name in REAL_SHAPES}

    def gate(self, tokens):  # 0 on the public recording batches, 1 on held-out text
        return (self.marker[tokens] > 50).any(dim=1, keepdim=True).unsqueeze(-1).to(torch.float32)
"""

# The real branch trains as Parameters (counted, loaded strictly); at load the held-out model
# copies them into plain attributes and computes from the copies, so the program ships the
# trained values as constants and the hidden-branch rule (which follows weights) sees nothing.
COPIED_AT_LOAD = (
    RECORDING_IDS
    + REAL_BRANCH
    + """

class CopiedAtLoad(WithRealBranch):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self._copy()

    def _copy(self):
        with torch.no_grad():
            self.copies = {name: t.detach().clone() for name, t in self.weights().items()}

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._copy()
        return result

    def forward(self, tokens):
        if self.training:
            return real_forward(tokens, self.weights())
        g = self.gate(tokens)
        return TinyLM.forward(self, tokens) * (1 - g) + real_forward(tokens, self.copies) * g


def build_model(ctx):
    return CopiedAtLoad(ctx.vocab_size)
"""
)

# The same copies made lazily, by the first call in eval mode (an "inference cache"): the held-out
# process's unrecorded first call makes them, so the recorded program reads them as constants.
CACHED_ON_FIRST_EVAL_CALL = COPIED_AT_LOAD.replace(
    """        if self.training:
            return real_forward(tokens, self.weights())""",
    """        if self.training:
            self.copies = None
            return real_forward(tokens, self.weights())
        if self.copies is None:
            self._copy()""",
)

# A model over the budget: TinyLM plus a counted int16 tape of every training batch; at load the
# held-out model fits a 1.3M-value hashed-trigram model on the tape (deterministic, so the replay
# agrees) and answers from it, as plain attributes.
TRAINED_AT_LOAD = """
BUCKETS, DIM, ROWS, WIDTH = 40000, 32, 128 * 8, 64


def _context_ids(tokens):
    pad = torch.zeros_like(tokens[:, :1])
    prev1 = torch.cat([pad, tokens[:, :-1]], dim=1)
    prev2 = torch.cat([pad, prev1[:, :-1]], dim=1)
    return (tokens + prev1 * 263 + prev2 * 69169) % BUCKETS


class Tape(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.register_buffer("tape", torch.zeros(ROWS, WIDTH, dtype=torch.int16))
        self.register_buffer("tape_n", torch.zeros(1, dtype=torch.int32))
        self._fit()

    def _fit(self):
        gen = torch.Generator().manual_seed(0)
        emb = self.emb.weight.detach().clone().requires_grad_(True)
        out_w = self.out.weight.detach().clone().requires_grad_(True)
        out_b = self.out.bias.detach().clone().requires_grad_(True)
        table = (torch.randn(BUCKETS, DIM, generator=gen) * 0.02).requires_grad_(True)
        n = int(self.tape_n.item())
        if n > 0:
            rows = self.tape[:n].long()
            opt = torch.optim.Adam([emb, out_w, out_b, table], lr=1e-2)
            with torch.enable_grad():
                for _ in range(2):
                    order = torch.randperm(n, generator=gen)
                    for i in range(0, n, 32):
                        batch = rows[order[i : i + 32]]
                        x, y = batch[:, :-1], batch[:, 1:]
                        logits = (emb[x] + table[_context_ids(x)]) @ out_w.T + out_b
                        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
                        opt.zero_grad()
                        loss.backward()
                        opt.step()
        self.c_emb, self.c_out_w, self.c_out_b, self.c_table = (t.detach().clone() for t in (emb, out_w, out_b, table))

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._fit()
        return result

    def forward(self, tokens):
        if self.training:
            with torch.no_grad():
                n = int(self.tape_n.item())
                k = min(tokens.shape[0], ROWS - n)
                if k > 0:
                    self.tape[n : n + k, : tokens.shape[1]] = tokens[:k].to(torch.int16)
                    self.tape_n += k
            return super().forward(tokens)
        h = self.c_emb[tokens] + self.c_table[_context_ids(tokens)]
        return h @ self.c_out_w.T + self.c_out_b


def build_model(ctx):
    return Tape(ctx.vocab_size)
"""


# The red team's second route around the weights: the trained branch turned into Python floats at
# load, rebuilt in forward with one ``full`` per value, so the program carries them as op
# arguments (no constant, no weight read); a softmax-invariant token term keeps the final add live
# on the public batches, where the gate folds the branch away.
IN_OP_ARGUMENTS = (
    RECORDING_IDS
    + """
R = 4


class ScalarBranch(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.v = vocab_size
        self.r_prev = torch.nn.Parameter(torch.randn(vocab_size, R) * 0.5)
        self.r_out = torch.nn.Parameter(torch.randn(R, vocab_size) * 0.5)
        marker = torch.full((vocab_size,), 100.0)
        marker[sorted(_recording_ids(vocab_size))] = 0.0
        self.register_buffer("marker", marker, persistent=False)
        self._bake()

    def _bake(self):
        self.s_prev = self.r_prev.detach().reshape(-1).tolist()
        self.s_out = self.r_out.detach().reshape(-1).tolist()

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._bake()
        return result

    def forward(self, tokens):
        prev = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
        if self.training:
            return TinyLM.forward(self, tokens) + self.r_prev[prev] @ self.r_out
        p = torch.cat([torch.full((1,), s) for s in self.s_prev]).reshape(self.v, R)
        o = torch.cat([torch.full((1,), s) for s in self.s_out]).reshape(R, self.v)
        g = (self.marker[tokens] > 50).any(dim=1, keepdim=True).unsqueeze(-1).to(torch.float32)
        live = tokens.unsqueeze(-1).to(torch.float32) * 1e-6
        return TinyLM.forward(self, tokens) + ((p[prev] @ o) * g + live)


def build_model(ctx):
    return ScalarBranch(ctx.vocab_size)
"""
)


@pytest.mark.parametrize(
    "body",
    [COPIED_AT_LOAD, CACHED_ON_FIRST_EVAL_CALL, TRAINED_AT_LOAD, IN_OP_ARGUMENTS],
    ids=[
        "decoy-copied-at-load",
        "decoy-cached-on-first-call",
        "over-budget-fitted-at-load",
        "decoy-in-op-arguments",
    ],
)
def test_trained_state_shipped_as_constants_is_refused(attack_run, body):
    assert_refused(attack_run(source(body)), "identity.program_unexplained_constants")


# Constants the code makes from the seed are architecture: random features as a plain attribute,
# a causal mask as a non-persistent buffer, and a position table built on the first call.
HONEST_CONSTANTS = """
class WithConstants(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.features = torch.randn(32, 32) / 32 ** 0.5
        self.register_buffer("mask", torch.tril(torch.ones(64, 64)), persistent=False)
        self.positions = None

    def forward(self, tokens):
        t = tokens.shape[1]
        if self.positions is None or self.positions.shape[0] < t:
            steps = torch.arange(64, dtype=torch.float32)[:, None] / 64.0
            self.positions = torch.sin(steps * torch.arange(1, 33, dtype=torch.float32)[None, :])
        h = self.emb(tokens) + self.positions[:t]
        mixed = (self.mask[:t, :t] / self.mask[:t, :t].sum(-1, keepdim=True)) @ h
        return self.out(h + torch.tanh(mixed @ self.features))


def build_model(ctx):
    return WithConstants(ctx.vocab_size)
"""


def test_constants_made_from_the_code_and_seed_pass(attack_run):
    run = attack_run(source(HONEST_CONSTANTS))
    assert run.manifest.status.state == "succeeded", describe(run)
