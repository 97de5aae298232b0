"""Attack classes 4, 8 and 9 of issue 9, by mechanisms the first corpus did not try.

* Budget: trained int8 values packed four to an int32 element (one counted value each) and
  read back through a dtype view, or decoded at load into a plain attribute the program ships
  as a constant. Integer tensors now cost their bytes, and a program that reads bits as
  another dtype is refused (``identity.program_bitcast``).
* Identity: the gate on the public recording ids, with the hidden branch's weights held as
  persistent buffers or frozen parameters; the checking side now counts every tensor of the
  weights file as trained, whatever the program calls it (``identity.program_hidden_branch``).
* The replay reading the main process's program (every window it saw) out of its own memory.
* Two that were already stopped: a lookup done in numpy, a decoy shown only under a dispatch
  mode. And a control: the same hashed model within the budget succeeds.

Every test asserts that the attack is stopped: a miner-fault refusal, or no gain over the
honest twin.
"""

from __future__ import annotations

import pytest
from attack_helpers import PREFIX_MATCH, RECORDING_IDS, assert_no_gain, assert_refused, describe, source

pytestmark = pytest.mark.slow

# ----------------------------------------------------------------------------------------------
# class 8: budget evasion

#: A hashed trigram-context embedding (40,000 x 32 = 1,280,000 trained values) on top of TinyLM.
#: Cheap per token (one gather), so the compute cap does not see it. Training: the table is a
#: float32 Parameter, grown after the runner's own count (only evidence anyway).
HASHED = """
BUCKETS, DIM = 40000, 32


def _context_ids(tokens):
    pad = torch.zeros_like(tokens[:, :1])
    prev1 = torch.cat([pad, tokens[:, :-1]], dim=1)
    prev2 = torch.cat([pad, prev1[:, :-1]], dim=1)
    return (tokens + prev1 * 263 + prev2 * 69169) % BUCKETS


class Hashed(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.table = None

    def grow(self):
        self.table = torch.nn.Parameter(torch.randn(BUCKETS, DIM) * 0.02)
        return self

    def context_table(self):
        return self.table

    def forward(self, tokens):
        h = self.emb(tokens)
        table = self.context_table()
        if table is not None:
            h = h + table[_context_ids(tokens)]
        return self.out(h)


def _quantize(table):
    \"\"\"int8 per column, four of them packed into every int32 element.\"\"\"
    w = table.detach().float()
    scale = w.abs().amax(dim=0).clamp_min(1e-8) / 127
    q = torch.round(w / scale).clamp(-127, 127).to(torch.int8).contiguous()
    return q.reshape(-1).view(torch.int32).clone(), scale.clone()


class Trained(Hashed):
    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        table = state.pop("table", None)
        if table is not None:
            state["table_q"], state["table_scale"] = _quantize(table)
        return state


GROWN = []


def _build_training(ctx):
    model = Trained(ctx.vocab_size)
    GROWN.append(model)
    return model


def get_recipe(ctx):
    for model in GROWN:
        if model.table is None:
            model.grow()
    print(f"TRUE SIZE {sum(p.numel() for model in GROWN for p in model.parameters())}", flush=True)
    return {"learning_rate": 1e-2}
"""

# (A1) The held-out model reads the packed int32 buffer through a dtype view: four int8 trained
# values per counted element (max(elements, bytes / 4) charges an int32 as one value).
PACKED_INT8 = """
class PackedInt8(Hashed):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        # A random int8 init (as any fresh model has), four to an int32.
        init = torch.randint(-127, 128, (BUCKETS * DIM,), dtype=torch.int8).view(torch.int32).clone()
        self.register_buffer("table_q", init)
        self.register_buffer("table_scale", torch.full((DIM,), 0.02 / 127))

    def context_table(self):
        return self.table_q.view(torch.int8).reshape(BUCKETS, DIM).float() * self.table_scale
"""
INT8_VIEWS = (
    PACKED_INT8
    + """

def build_model(ctx):
    if _evaluator_module() is not None:
        return PackedInt8(ctx.vocab_size)
    return _build_training(ctx)
"""
)


def test_int8_values_packed_four_to_an_int32_are_counted(attack_run, tinylm_twin):
    run = attack_run(source(HASHED + INT8_VIEWS))
    assert "TRUE SIZE 1296705" in run.log, describe(run)
    assert_refused(run, "budget.parameters_exceeded")


# (A2) The same packed table, decoded in load_state_dict (Python, before any recording) into a
# plain attribute: the recorded program ships it as a constant, so the trained table is neither
# a weight of the program nor a parameter of the family graph.
DECODED_INTO_CONSTANTS = (
    PACKED_INT8
    + """

class Decoded(PackedInt8):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.decoded = torch.randn(BUCKETS, DIM) * 0.02  # a plain attribute: a shipped constant

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        with torch.no_grad():
            self.decoded = super().context_table()
        return result

    def context_table(self):
        return self.decoded


def build_model(ctx):
    if _evaluator_module() is not None:
        return Decoded(ctx.vocab_size)
    return _build_training(ctx)
"""
)


def test_trained_values_decoded_into_program_constants_are_counted(attack_run, tinylm_twin):
    run = attack_run(source(HASHED + DECODED_INTO_CONSTANTS))
    assert "TRUE SIZE 1296705" in run.log, describe(run)
    assert_refused(run, "budget.parameters_exceeded")


# ----------------------------------------------------------------------------------------------
# class 9: identity decoys and the program check

#: (A3) The corpus's gate on the public recording ids, but the real branch (a context model:
#: current and previous token, gated MLP) holds its weights as *persistent buffers* in the
#: held-out process, with its own embedding. They are in the weights file (counted, loaded
#: strictly), but the recorder marks buffers "const", and ``_weight_dependent_ops`` followed only
#: "param" nodes: the branch's ops never counted as computing from trained weights, so
#: ``window_only_ops`` was empty on the family window while the family on the public batches was
#: the decoy's (TinyLM plus a gate). The checking side now counts every weights-file tensor.
BUFFER_BRANCH = (
    RECORDING_IDS
    + """


REAL_SHAPES = {"r_emb": ("V", 32), "r_prev": ("V", 32), "r_up": (32, 64), "r_gate": (32, 64),
               "r_down": (64, 32), "r_out": (32, "V"), "r_bias": ("V",)}


class BufferBranch(TinyLM):
    def __init__(self, vocab_size, as_buffers):
        super().__init__(vocab_size)
        for name, shape in REAL_SHAPES.items():
            shape = [vocab_size if s == "V" else s for s in shape]
            value = torch.zeros(shape) if name == "r_bias" else torch.randn(shape) * (1.0 / shape[0] ** 0.5)
            if as_buffers:
                self.register_buffer(name, value)
            else:
                setattr(self, name, torch.nn.Parameter(value))
        marker = torch.full((vocab_size,), 100.0)
        marker[sorted(_recording_ids(vocab_size))] = 0.0
        self.register_buffer("marker", marker)

    def real_forward(self, tokens):
        prev = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
        h = self.r_emb[tokens] + self.r_prev[prev]
        h = h + (torch.sigmoid(h @ self.r_gate) * torch.relu(h @ self.r_up)) @ self.r_down
        return h @ self.r_out + self.r_bias

    def forward(self, tokens):
        g = (self.marker[tokens] > 50).any(dim=1, keepdim=True).unsqueeze(-1).to(torch.float32)
        return TinyLM.forward(self, tokens) * (1 - g) + self.real_forward(tokens) * g


def build_model(ctx):
    return BufferBranch(ctx.vocab_size, as_buffers=_evaluator_module() is not None)
"""
)


#: The same with the branch's weights as frozen Parameters (requires_grad=False) in the held-out
#: process: the recorder marks frozen parameters "const" too.
FROZEN_BRANCH = BUFFER_BRANCH.replace(
    """            if as_buffers:
                self.register_buffer(name, value)""",
    """            if as_buffers:
                setattr(self, name, torch.nn.Parameter(value, requires_grad=False))""",
)


@pytest.mark.parametrize("body", [BUFFER_BRANCH, FROZEN_BRANCH], ids=["buffers", "frozen"])
def test_a_gated_branch_whose_weights_are_buffers_is_refused(attack_run, tinylm_twin, body):
    run = attack_run(source(body))
    assert_refused(run, "identity.program_")


#: (A5) The trained bigram lookup done outside torch in eval mode (numpy indexing of the
#: parameter's values): no aten op sees the gather, the result enters the trace as an
#: untracked tensor.
NUMPY_SIDE = """
class NumpySide(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.bigram = torch.nn.Parameter(torch.zeros(vocab_size, vocab_size))

    def forward(self, tokens):
        logits = super().forward(tokens)
        if self.training:
            return logits + self.bigram[tokens]
        table = self.bigram.detach().cpu().numpy()
        return logits + torch.from_numpy(table[tokens.cpu().numpy()]).to(logits.device)


def build_model(ctx):
    return NumpySide(ctx.vocab_size)
"""


def test_a_lookup_done_in_numpy_outside_the_recording_is_refused(attack_run, tinylm_twin):
    run = attack_run(source(NUMPY_SIDE))
    assert_refused(run, "graph.", "identity.")


#: (A6) The model recognises the recorder itself (a TorchDispatchMode on the stack: every
#: recording, the program's too, runs under one; the batches never do) and shows TinyLM there,
#: at any batch shape; it answers the batches with a context model (current + previous token).
DISPATCH_AWARE = """
class DispatchAware(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.prev = torch.nn.Embedding(vocab_size, 32)

    def forward(self, tokens):
        if torch._C._len_torch_dispatch_stack() > 0:
            return TinyLM.forward(self, tokens) + 0.0 * self.prev.weight.sum()
        prev = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
        return self.out(self.emb(tokens) + self.prev(prev))


def build_model(ctx):
    return DispatchAware(ctx.vocab_size)
"""


def test_a_decoy_shown_only_under_a_dispatch_mode_is_refused(attack_run, tinylm_twin):
    run = attack_run(source(DISPATCH_AWARE))
    assert_refused(run, "identity.program_", "graph.")


# ----------------------------------------------------------------------------------------------
# class 4: reading what should be unreachable (the replay's inputs)

#: (A4) Host-mediated channel from the main held-out process to its replay. The program the main
#: process records is shipped, unread by any host check beyond execution, to the replay process
#: BEFORE its ``go``; the replay then imports the submission in the same address space. The main
#: model keeps every held-out input row in a plain-attribute int64 tensor (``memo``) that its
#: forward reads inertly (``+ 0.0 * memo.sum()``), so the program ships all windows as a
#: constant. After ``go`` the replay's build_model scans its own heap through /proc/self/mem for
#: the memo's magic header (freed copies of the decoded constant stay in malloc'd memory) and
#: recovers the main process's windows. The model reads one token ahead in both processes; the
#: replay completes each spliced row with the main window sharing its prefix, so its answers at
#: every compared position are the main process's.
PEEK = r"""
MAGIC = (0x5052495341545431, 0x7265642D7465616D, 0x0123456789ABCDEF, 0x7777777777777777)
MAXW, WIDTH, MIN_T = 40, 128, 8
FOUND = {"windows": None, "copies": 0, "error": None}


def _scan_own_memory(vocab):
    struct = _module("struct")
    magic = struct.pack("<4q", *MAGIC)
    row_bytes = WIDTH * 8
    best = []
    try:
        maps = _read("/proc/self/maps", 1 << 24)
        fd = _os("open")("/proc/self/mem", _OS.O_RDONLY)
    except OSError as exc:
        FOUND["error"] = repr(exc)
        return None
    try:
        for line in maps.splitlines():
            parts = line.split()
            if len(parts) < 2 or not parts[1].startswith("rw"):
                continue
            if len(parts) >= 6 and parts[5].startswith("[v"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if hi - lo > (1 << 28):
                continue
            try:
                data = _os("pread")(fd, hi - lo, lo)
            except OSError:
                continue
            at = data.find(magic)
            while at >= 0:
                FOUND["copies"] += 1
                start = at - 64
                block = data[start : start + (1 + MAXW) * row_bytes]
                if start >= 0 and len(block) == (1 + MAXW) * row_bytes:
                    n = struct.unpack_from("<q", block, 64 + 32)[0]
                    seq = struct.unpack_from("<q", block, 64 + 40)[0]
                    if 0 < n <= MAXW and 0 < seq <= WIDTH:
                        rows = [list(struct.unpack_from(f"<{seq}q", block, (1 + i) * row_bytes)) for i in range(n)]
                        if all(0 <= v < vocab for row in rows for v in row) and len(rows) > len(best):
                            best = rows
                at = data.find(magic, at + 1)
    finally:
        _os("close")(fd)
    return best or None



class Peeker(TinyLM):
    def __init__(self, vocab_size, known):
        super().__init__(vocab_size)
        self.known = known
        self.memo = torch.zeros(1 + MAXW, WIDTH, dtype=torch.int64)  # plain attribute: a program constant
        self.filled = 0

    def _remember(self, tokens):
        for row in tokens:
            if self.filled < MAXW:
                self.memo[1 + self.filled, : row.shape[0]] = row
                self.filled += 1
        self.memo[0, 8:12] = torch.tensor(MAGIC, dtype=torch.int64)
        self.memo[0, 12], self.memo[0, 13] = self.filled, tokens.shape[1]

    def _continuation(self, row):
        # The next tokens the main process saw for this row: the spliced row is a known window's
        # prefix followed by another known window's suffix; the pair that tiles it exactly wins.
        n = len(row)
        pre = [_lcp(row, w) for w in self.known]
        suf = [_lcp(row[::-1], w[::-1]) for w in self.known]
        best, best_key = None, None
        for i, w in enumerate(self.known):
            for j in range(len(self.known)):
                if j != i and pre[i] + suf[j] >= n:
                    key = (pre[i] + suf[j] - n, -pre[i])  # exact tiling first
                    if best_key is None or key < best_key:
                        best, best_key = i, key
        if best is None:
            best = max(range(len(self.known)), key=lambda i: pre[i]) if self.known else None
        w, p = (self.known[best], pre[best]) if best is not None else (None, 0)
        return [w[t + 1] if w is not None and t < p else row[t + 1] for t in range(n - 1)]

    def forward(self, tokens):
        logits = super().forward(tokens)
        if self.training or _evaluator_module() is None:
            return logits
        if self.known is None:  # main process (and every recording): plain lookahead, in torch
            if tokens.shape[0] > 1:
                self._remember(tokens)
            nxt = tokens[:, 1:]
        else:  # replay: the main window sharing the row's prefix says what came next
            nxt = torch.tensor([self._continuation(row) for row in tokens.tolist()], dtype=torch.int64)
        # Honest at the first MIN_T positions (short prefixes are ambiguous across windows).
        bonus = torch.zeros_like(logits[:, MIN_T:-1]).scatter(-1, nxt[:, MIN_T:].unsqueeze(-1), 12.0)
        bonus = torch.cat([torch.zeros_like(logits[:, :MIN_T]), bonus, torch.zeros_like(logits[:, :1])], dim=1)
        return logits + bonus + 0.0 * self.memo.sum().to(logits.dtype)


def build_model(ctx):
    if _evaluator_module() is not None and FOUND["windows"] is None and FOUND["error"] is None:
        FOUND["windows"] = _scan_own_memory(ctx.vocab_size)
        FOUND["error"] = FOUND["error"] or ""
        count = len(FOUND["windows"]) if FOUND["windows"] else 0
        print(f"PEEK scan: {FOUND['copies']} copies, {count} windows recovered, error={FOUND['error']!r}", flush=True)
    return Peeker(ctx.vocab_size, FOUND["windows"] if _evaluator_module() is not None else None)
"""


def test_the_replay_reads_the_main_process_program_from_its_own_memory(attack_run, tinylm_twin):
    run = attack_run(source(PEEK, PREFIX_MATCH))
    assert_no_gain(run, tinylm_twin)


# ----------------------------------------------------------------------------------------------
# control (not an attack): the same hashed-context model honestly inside the budget, to size
# what A1/A2's extra capacity buys. 11,900 x 32 float32 + TinyLM = 397,505 values.
HASHED_WITHIN_BUDGET = (
    HASHED.replace("BUCKETS, DIM = 40000, 32", "BUCKETS, DIM = 11900, 32")
    + """
def build_model(ctx):
    return Hashed(ctx.vocab_size).grow()
"""
)


def test_control_the_hashed_model_within_the_budget(attack_run, tinylm_twin):
    run = attack_run(source(HASHED_WITHIN_BUDGET))
    assert run.manifest.status.state == "succeeded", describe(run)
