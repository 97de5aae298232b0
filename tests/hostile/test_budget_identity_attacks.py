"""Attack classes 8 and 9 of issue 9: budget swaps and identity decoys.

Class 8: a model trains more values than ``max_parameters`` (400,000 here) and hides them from
the count the host makes of the weights file (every tensor, each storage once). Class 9: the
architecture the host records (the family at the canonical context and the trained model's
graph) is not the one that was trained and measured.
"""

from __future__ import annotations

import pytest
from attack_helpers import RECORDING_IDS, assert_no_gain, assert_refused, describe, source

pytestmark = pytest.mark.slow

# ----------------------------------------------------------------------------------------------
# class 8: budget swaps

#: TinyLM (16,705 values) plus a wide bigram path: a 257 x 800 embedding and an 800 x 257
#: projection (411,200 values): 427,905 trained values against a budget of 400,000.
WIDE = """
WIDTH = 800


class Wide(TinyLM):
    def grow(self, as_parameters):
        \"\"\"Add the wide path (after the runner's own count, which is only evidence anyway).\"\"\"
        vocab = self.out.out_features
        wide_emb, wide_out = torch.randn(vocab, WIDTH) * 0.02, torch.randn(WIDTH, vocab) * 0.02
        if as_parameters:
            self.wide_emb, self.wide_out = torch.nn.Parameter(wide_emb), torch.nn.Parameter(wide_out)
        else:
            self.register_buffer("wide_emb", wide_emb)
            self.register_buffer("wide_out", wide_out)
        return self

    def forward(self, tokens):
        return super().forward(tokens) + self.wide_emb[tokens] @ self.wide_out


GROWN = []


def _build(cls, ctx):
    \"\"\"Training: the wide path comes as Parameters once get_recipe runs. Held-out process: as
    buffers at once (its graph then lists only TinyLM's parameters, all of them in the file).\"\"\"
    model = cls(ctx.vocab_size)
    if _evaluator_module() is not None:
        return model.grow(as_parameters=False)
    GROWN.append(model)
    return model


def get_recipe(ctx):
    for model in GROWN:
        model.grow(as_parameters=True)
    print(f"TRUE SIZE {sum(p.numel() for model in GROWN for p in model.parameters())}", flush=True)
    return {"learning_rate": 1e-2}
"""

# The swap: buffers while the runner counts, Parameters again when get_recipe runs.
BUFFERS_WHILE_COUNTED = """
MODELS = []


def build_model(ctx):
    model = Wide(ctx.vocab_size).grow(as_parameters=False)
    MODELS.append(model)
    return model


def get_recipe(ctx):
    for model in MODELS:
        emb, out = model.wide_emb, model.wide_out
        del model.wide_emb, model.wide_out
        model.wide_emb, model.wide_out = torch.nn.Parameter(emb), torch.nn.Parameter(out)
    return {"learning_rate": 1e-2}
"""


def test_weights_held_as_buffers_while_counted_are_counted_from_the_file(attack_run):
    run = attack_run(source(WIDE + BUFFERS_WHILE_COUNTED))
    assert_refused(run, "budget.parameters_exceeded")


# Extra capacity kept out of the state dict (a non-persistent buffer, trained by the model's own
# updates in forward): it is not in the weights file, so the held-out process rebuilds it from
# scratch and the trained values are lost.
OUTSIDE_THE_STATE_DICT = """
class Hidden(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.register_buffer("hidden", torch.zeros(vocab_size, vocab_size), persistent=False)

    def forward(self, tokens):
        logits = super().forward(tokens)
        if self.training:
            with torch.no_grad():  # its own update: pull the hidden table toward the batch's bigrams
                nxt = tokens[:, 1:].reshape(-1)
                cur = tokens[:, :-1].reshape(-1)
                target = torch.zeros_like(self.hidden)
                target.index_put_((cur, nxt), torch.ones_like(cur, dtype=target.dtype), accumulate=True)
                self.hidden.mul_(0.99).add_(0.01 * torch.log1p(target))
        return logits + self.hidden[tokens]


def build_model(ctx):
    return Hidden(ctx.vocab_size)
"""


def test_weights_kept_outside_the_state_dict_are_lost(attack_run, tinylm_twin):
    run = attack_run(source(OUTSIDE_THE_STATE_DICT))
    assert_no_gain(run, tinylm_twin)


# The weights file itself carries what the count misses: metadata, or one tensor's bytes
# claimed by a second entry (a shared storage), each patched in by the training process.
FILE_PATCH = """
def build_model(ctx):
    st = _module("safetensors.torch")
    if not getattr(st, "forged", False):
        honest = st.save_file

        def save_file(tensors, filename, metadata=None):
            honest(tensors, filename, metadata)
            json, struct = _module("json"), _module("struct")
            raw = _read_bytes(filename)
            size = struct.unpack("<Q", raw[:8])[0]
            header = json.loads(raw[8 : 8 + size])
            PATCH(header)
            text = json.dumps(header, separators=(",", ":")).encode()  # the compact form the host requires
            fd = _os("open")(filename, _OS.O_WRONLY | _OS.O_TRUNC)
            _os("write")(fd, struct.pack("<Q", len(text)) + text + raw[8 + size :])
            _os("close")(fd)

        st.save_file, st.forged = save_file, True
    return TinyLM(ctx.vocab_size)


def _read_bytes(path):
    fd, chunks = _os("open")(path, _OS.O_RDONLY), []
    while True:
        chunk = _os("read")(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    _os("close")(fd)
    return b"".join(chunks)
"""

METADATA_PATCH = """
def PATCH(header):
    header["__metadata__"] = {"format": "pt", "extra": "00" * 4096}  # weights as metadata text
"""

SHARED_STORAGE_PATCH = """
def PATCH(header):
    weight = header["emb.weight"]
    header["emb_again.weight"] = dict(weight)  # a second tensor over the same bytes
"""


@pytest.mark.parametrize("patch", [METADATA_PATCH, SHARED_STORAGE_PATCH], ids=["metadata", "shared-storage"])
def test_weights_hidden_in_the_file_layout_are_refused(attack_run, patch):
    run = attack_run(
        source(FILE_PATCH.replace("PATCH(header)", "_patch(header)") + patch.replace("PATCH", "_patch"))
    )
    assert_refused(run, "budget.weights_invalid")


# Two float32 values in every int64 the file holds: the host counts elements, so the wide path
# counts half. The held-out process unpacks them on load.
PACKED_DTYPE = """
class Packed(Wide):
    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        for name in ("wide_emb", "wide_out"):
            state[name] = state[name].detach().contiguous().reshape(-1).view(torch.int64)
        return state

    def load_state_dict(self, state_dict, strict=True, assign=False):
        state = dict(state_dict)
        for name in ("wide_emb", "wide_out"):
            state[name] = state[name].contiguous().view(torch.float32).reshape(getattr(self, name).shape)
        return super().load_state_dict(state, strict=strict, assign=assign)


def build_model(ctx):
    return _build(Packed, ctx)
"""


def test_values_packed_two_to_an_element_are_counted(attack_run):
    run = attack_run(source(WIDE + PACKED_DTYPE))
    assert "TRUE SIZE 427905" in run.log, describe(run)
    assert_refused(run, "budget.parameters_exceeded")


# The wide path's values as the names of zero-element tensors: 512 printable characters a name,
# no elements to count.
IN_TENSOR_NAMES = """
CHARS = 480


class Named(Wide):
    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        for name in ("wide_emb", "wide_out"):
            text = state.pop(name).detach().contiguous().numpy().tobytes().hex()
            for i in range(0, len(text), CHARS):
                state[f"{name}x{i // CHARS:06d}x{text[i : i + CHARS]}"] = torch.zeros(0)
        return state

    def load_state_dict(self, state_dict, strict=True, assign=False):
        state, pieces = {}, {"wide_emb": [], "wide_out": []}
        for key, value in state_dict.items():
            base, _, rest = key.partition("x")
            if base in pieces and rest:
                pieces[base].append(rest.split("x", 1))
            else:
                state[key] = value
        for name, parts in pieces.items():
            raw = bytes.fromhex("".join(text for _, text in sorted(parts)))
            state[name] = torch.from_numpy(np.frombuffer(raw, dtype=np.float32).copy()).reshape(getattr(self, name).shape)
        return super().load_state_dict(state, strict=strict, assign=assign)


def build_model(ctx):
    return _build(Named, ctx)
"""


def test_values_carried_in_tensor_names_are_counted(attack_run):
    run = attack_run(source(WIDE + IN_TENSOR_NAMES))
    assert "TRUE SIZE 427905" in run.log, describe(run)
    assert_refused(run, "budget.parameters_exceeded", "budget.weights_invalid")


# A false positive, not an attack: an LM head tied to the embedding the usual way (nanoGPT and
# HuggingFace write ``head.weight = emb.weight``) has two state-dict keys for one storage, and
# ``save_weights`` writes two byte-identical tensors. The host counts a repeat once, so the model
# the runner counted at 394,497 parameters (257 x 512 tied, a 512 x 512 layer, the head's bias)
# trains and is measured instead of being refused at 526,095 after training.
TIED = """
class Tied(torch.nn.Module):
    def __init__(self, vocab_size, d=512):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, d)
        self.mid = torch.nn.Linear(d, d)
        self.head = torch.nn.Linear(d, vocab_size)
        self.head.weight = self.emb.weight  # weight tying

    def forward(self, tokens):
        return self.head(torch.relu(self.mid(self.emb(tokens))))


def build_model(ctx):
    return Tied(ctx.vocab_size)
"""
TIED_PARAMETERS = 257 * 512 + 512 * 512 + 512 + 257


def test_a_tied_head_within_the_budget_is_counted_once(attack_run):
    run = attack_run(source(TIED))
    assert run.manifest.status.state == "succeeded", describe(run)
    assert run.manifest.budget is not None and run.manifest.budget.parameter_count == TIED_PARAMETERS
    assert run.manifest.metrics.parameter_count == TIED_PARAMETERS


# ----------------------------------------------------------------------------------------------
# class 9: identity decoys

#: The model that is trained and measured: TinyLM with a gated two-layer MLP on top (another
#: family than TinyLM's embedding -> linear).
REAL = """
class Real(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.up = torch.nn.Linear(32, 64)
        self.gate = torch.nn.Linear(32, 64)
        self.down = torch.nn.Linear(64, 32)

    def real_forward(self, tokens):
        h = self.emb(tokens)
        h = h + self.down(torch.sigmoid(self.gate(h)) * torch.relu(self.up(h)))
        return self.out(h)

    def decoy_forward(self, tokens):
        return TinyLM.forward(self, tokens)
"""

DECOY_AT_CANONICAL_CONTEXT = """
class Switch(Real):
    def forward(self, tokens):
        return self.real_forward(tokens)


def build_model(ctx):
    if ctx.sequence_length == 32 and ctx.max_parameters == 200000:  # the profile's canonical context
        return TinyLM(ctx.vocab_size)
    return Switch(ctx.vocab_size)
"""


def test_another_model_at_the_canonical_context_is_refused(attack_run):
    run = attack_run(source(REAL + DECOY_AT_CANONICAL_CONTEXT))
    assert_refused(run, "identity.context_mismatch", "identity.program_family_mismatch")


# The identity graph is recorded from one forward with B = 1; held-out and training batches
# have more rows. The decoy path runs only when there is one row.
DECOY_FOR_ONE_ROW = """
class Shapeshifter(Real):
    def forward(self, tokens):
        return self.decoy_forward(tokens) if tokens.shape[0] == 1 else self.real_forward(tokens)


def build_model(ctx):
    return Shapeshifter(ctx.vocab_size)
"""

# The held-out process imports prism.evaluator.graph when it records; the submission replaces
# record_architecture with one that records a decoy TinyLM (its parameters are a subset, by name
# and shape, of the real model's, so they are all in the weights file).
FORGED_GRAPH = """
class Measured(Real):
    def forward(self, tokens):
        return self.real_forward(tokens)


def build_model(ctx):
    H = _evaluator_module()
    if H is not None:
        graph = _module("prism.evaluator.graph")
        if not getattr(graph, "forged", False):
            honest = graph.record_architecture

            def record_architecture(model, ctx, **kwargs):
                torch.manual_seed(0)
                return honest(TinyLM(ctx.vocab_size), ctx, **kwargs)

            graph.record_architecture, graph.forged = record_architecture, True
    return Measured(ctx.vocab_size)
"""


# The forged recorder again, and the ready frame's claimed inference path rewritten to a hook's:
# a host that believed the claim would skip the family comparison.
CLAIMS_A_HOOK = FORGED_GRAPH.replace(
    "    return Measured(ctx.vocab_size)",
    """    framing = _module("prism.evaluator.framing")
    if H is not None and not getattr(framing, "claimed", False):
        write = framing.FrameWriter.write

        def claiming(self, header, payload=b""):
            if header.get("type") == "ready":
                header = {**header, "inference_path": "infer"}
            return write(self, header, payload)

        framing.FrameWriter.write, framing.claimed = claiming, True
    return Measured(ctx.vocab_size)""",
)

# A gate keyed on the fixed recording tokens: every token id the canonical and probe batches
# use (at T = 32 and at the run's T) reads 0 from ``marker``, every other id reads 100. On those
# batches the gate is the constant 0 and the real branch folds away, so every graph recorded on
# them shows the decoy; on real text the gate is 1 and the real branch answers.
GATED_ON_THE_RECORDING_TOKENS = (
    RECORDING_IDS
    + """


class Gated(Real):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        marker = torch.full((vocab_size,), 100.0)
        marker[sorted(_recording_ids(vocab_size))] = 0.0
        self.register_buffer("marker", marker)

    def forward(self, tokens):
        g = (self.marker[tokens] > 50).any().to(torch.float32)
        return self.decoy_forward(tokens) * (1 - g) + self.real_forward(tokens) * g


def build_model(ctx):
    return Gated(ctx.vocab_size)
"""
)


@pytest.mark.parametrize(
    "body",
    [DECOY_FOR_ONE_ROW, FORGED_GRAPH, CLAIMS_A_HOOK],
    ids=["one-row-decoy", "forged-graph", "forged-graph-claiming-a-hook"],
)
def test_a_decoy_recorded_in_place_of_the_trained_model_is_refused(attack_run, tinylm_twin, body):
    run = attack_run(source(REAL + body))
    recorded = run.manifest.submission.family_id
    assert tinylm_twin.family_id is not None
    assert run.manifest.status.state == "failed" or recorded != tinylm_twin.family_id, (
        f"the manifest records TinyLM's family {recorded} for a model that trained and was measured with an MLP\n"
        + describe(run)
    )
    assert_refused(run, "identity.program_")


# The same gate, and the MLP's weights read on the public batches too, by a term too small to
# change a logit: no recording on those batches can tell this model from the decoy.
GATED_WITH_AN_INERT_READ = GATED_ON_THE_RECORDING_TOKENS.replace(
    "        return self.decoy_forward(tokens) * (1 - g) + self.real_forward(tokens) * g",
    """        inert = sum(p.sum() for p in (*self.up.parameters(), *self.gate.parameters(), *self.down.parameters()))
        return self.decoy_forward(tokens) * (1 - g) + self.real_forward(tokens) * g + 1e-30 * inert""",
)


@pytest.mark.parametrize(
    "body", [GATED_ON_THE_RECORDING_TOKENS, GATED_WITH_AN_INERT_READ], ids=["gate", "gate-inert-read"]
)
def test_a_branch_gated_on_the_public_batches_is_refused(attack_run, body):
    # The gate is the constant 0 on the public batches, so the MLP's ops are dead there; on the
    # held-out family window they compute from its trained weights (an inert read does not help).
    assert_refused(attack_run(source(REAL + body)), "identity.program_hidden_branch")


# An honest model whose graph depends on the data: attention does not cross an end-of-text id
# (256 in the byte tokenizer). The public batches hold that id at T = 32, so the claimed family
# has the document mask; on a held-out window inside one document it is the constant causal
# mask and folds away, so the family there differs. That is not a lie and must not be refused.
DOCUMENT_MASKED = """
class DocumentMasked(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.qkv = torch.nn.Linear(32, 96)

    def forward(self, tokens):
        x = self.emb(tokens)
        q, k, v = self.qkv(x).unsqueeze(1).split(32, dim=-1)
        document = (tokens == 256).cumsum(-1)
        same = document.unsqueeze(-1) == document.unsqueeze(-2)
        causal = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool).tril()
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=(same & causal).unsqueeze(1))
        return self.out(x + y.squeeze(1))


def build_model(ctx):
    return DocumentMasked(ctx.vocab_size)
"""


def _seed_with_a_family_window_inside_one_document(data_dir, profile) -> int:  # type: ignore[no-untyped-def]
    from prism.data import heldout_windows
    from prism.evaluator.program_check import family_window

    for seed in range(100):
        windows, _ = heldout_windows(
            data_dir, split="val", n_windows=profile.heldout.windows,
            seq_len=profile.regimes[0].sequence_length, seed=seed,
        )  # fmt: skip
        if 256 not in windows[family_window(windows.shape[0], seed)]:
            return seed
    raise AssertionError("no held-out seed in 0..99 puts the family window inside one document")


def test_an_honest_model_whose_family_depends_on_the_window_is_not_refused(
    attack_run, hostile_data, attack_profile
):
    seed = _seed_with_a_family_window_inside_one_document(hostile_data, attack_profile)
    run = attack_run(source(DOCUMENT_MASKED), heldout_seed=seed)
    assert run.manifest.status.state == "succeeded", describe(run)
    integrity = run.manifest.integrity
    assert integrity.program_windows == attack_profile.heldout.program_windows + 1  # and the family window
    # The claim and the program agree on the public batches; the window's family is the fold.
    assert integrity.program_family_id == run.manifest.submission.family_id
    assert integrity.program_window_family_id not in (None, integrity.program_family_id), describe(run)
