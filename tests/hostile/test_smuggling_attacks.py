"""Attack class 6 of issue 9: trained weights smuggled in with the code.

The "weights" are a trigram table of the hostile corpus (what a miner could compute offline
from public data), 315 entries. Intake caps the information a submission carries (literals,
comments, numbers; docs/security.md, "Smuggling"); the early-probe gate
(``gate.smuggled_weights``) flags a model that knows the data at the start of training. Here a
smuggling run counts as stopped when it is refused with a miner fault, when it carries the
gate's reason (official scoring never counts such a run), or when it earns no more than seed
noise over its honest twin.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from attack_helpers import assert_refused, describe, source

from prism.submission import SubmissionError

pytestmark = pytest.mark.slow


def assert_stopped(run, twin) -> None:  # type: ignore[no-untyped-def]
    manifest = run.manifest
    if manifest.status.state == "failed":
        assert manifest.status.failure is not None and manifest.status.failure.fault == "miner", describe(run)
        return
    if "gate.smuggled_weights" in manifest.validation.reasons:
        return
    bpb = manifest.metrics.heldout_bpb
    assert bpb is not None and bpb >= twin.bpb - twin.allowance, (
        f"smuggler scored {bpb:.4f} bpb against the honest twin's {twin.bpb:.4f} (allowance "
        f"{twin.allowance:.4f}) with an early probe of {manifest.metrics.early_probe_loss_nats} nats\n"
        + describe(run)
    )


def _trigrams(corpus_text: list[str]) -> dict[tuple[int, int, int], float]:
    counts: Counter[tuple[int, int, int]] = Counter()
    contexts: Counter[tuple[int, int]] = Counter()
    for text in corpus_text:
        data = text.encode("utf-8")
        for a, b, c in zip(data, data[1:], data[2:], strict=False):
            counts[(a, b, c)] += 1
            contexts[(a, b)] += 1
    return {key: math.log(n / contexts[key[:2]]) for key, n in counts.items()}


def _packed_table(corpus_text: list[str]) -> str:
    """Four characters per trigram: the three bytes, then -log p in half nats as one digit."""
    table = _trigrams(corpus_text)
    return "".join(
        f"{chr(a)}{chr(b)}{chr(c)}{min(9, round(-2 * lp))}" for (a, b, c), lp in sorted(table.items())
    )


def _in_literals(packed: str) -> str:
    pieces = [packed[i : i + 900] for i in range(0, len(packed), 900)]  # each under the 1,000-byte cap
    return f"PACKED = {' + '.join(json.dumps(p) for p in pieces)}\n"


def _in_comments(packed: str) -> str:
    lines = "".join(f"#~{packed[i : i + 96]}\n" for i in range(0, len(packed), 96))
    return f"""
{lines}

def _packed_from_comments():
    text = _read(__file__)
    return "".join(line[2:] for line in text.splitlines() if line.startswith("#~"))


PACKED = _packed_from_comments()
"""


#: The smuggled model: where a trigram context is in the table, its log-probabilities; elsewhere
#: TinyLM's. ``blend(model)`` says how much of the table to use (0: TinyLM alone).
SMUGGLER = """
def _table(vocab):
    contexts, rows = {}, []
    for i in range(0, len(PACKED), 4):
        a, b, c, digit = PACKED[i : i + 4]
        key = (ord(a), ord(b))
        if key not in contexts:
            contexts[key] = len(rows)
            rows.append(torch.full((vocab,), -12.0))
        rows[contexts[key]][ord(c)] = -0.5 * int(digit)
    index = torch.full((vocab, vocab), len(rows), dtype=torch.long)
    for (a, b), k in contexts.items():
        index[a, b] = k
    rows.append(torch.zeros(vocab))
    return index, torch.stack(rows)


class Smuggler(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.index, self.table = _table(vocab_size)  # plain attributes: rebuilt from the code

    def forward(self, tokens):
        logits = super().forward(tokens)
        if self.training:
            self.steps += 1
        previous = torch.cat([tokens[:, :1], tokens[:, :-1]], dim=1)
        context = self.index[previous, tokens]
        known = (context < self.table.shape[0] - 1).unsqueeze(-1)
        smuggled = torch.where(known, self.table[context], logits)
        alpha = blend(self)
        return logits + alpha * (smuggled - logits)


def build_model(ctx):
    return Smuggler(ctx.vocab_size)
"""

# The same table, kept live on the public recording batches: their token pairs are mapped to a
# row of the table (every other one), so neither branch folds away where the claimed family is recorded
# and the family derived on real windows (the program check) is the same one.
SMUGGLER_LIVE_AT_RECORDING = SMUGGLER.replace(
    """    rows.append(torch.zeros(vocab))
    return index, torch.stack(rows)""",
    """    for n in (32, 64):  # the canonical T and the attack profile's T
        for ids in ([(i * 7919 + 13) % vocab for i in range(n)], [(i * 104729 + 71) % vocab for i in range(n)]):
            for a, b in list(zip([ids[0], *ids[:-1]], ids))[::2]:  # half: neither branch is constant
                index[a, b] = 0
    rows.append(torch.zeros(vocab))
    return index, torch.stack(rows)""",
)

BLEND_ALWAYS = """
def blend(model):
    return 1.0
"""

# The probe in the reference recipe is the training forward's loss, and the training forward is
# the submission's: it shows TinyLM learning from scratch; the held-out process sees the table.
BLEND_ONLY_AT_EVAL = """
def blend(model):
    return 0.0 if model.training else 1.0
"""

# A learning curve made to order: the table comes in over the first half of training, so the
# early probe is uniform and the curve then falls like fast learning.
BLEND_RAMP = """
def blend(model):
    return min(1.0, float(model.steps) / 64.0)
"""


def test_a_table_as_a_numeric_literal_is_refused_at_intake(attack_run, corpus_text):
    table = _trigrams(corpus_text)
    literal = {f"{a},{b},{c}": round(lp, 2) for (a, b, c), lp in table.items()}
    with pytest.raises(SubmissionError) as excinfo:
        attack_run(source(f"PACKED = ''\nTABLE = {json.dumps(literal)}\n" + SMUGGLER + BLEND_ALWAYS))
    assert excinfo.value.fault == "miner"
    assert "static.number_table" in str(excinfo.value)


def test_a_table_in_string_literals_is_flagged_by_the_early_probe(attack_run, corpus_text, tinylm_twin):
    run = attack_run(source(_in_literals(_packed_table(corpus_text)) + SMUGGLER + BLEND_ALWAYS))
    assert "gate.smuggled_weights" in run.manifest.validation.reasons, describe(run)
    assert_stopped(run, tinylm_twin)


RESIDUAL = (
    "residual at smoke scale (docs/security.md, 'Smuggled weights'): the probe is the model's own output and "
    "the gate is advisory; a few-KB trigram table inside the 200 KB source budget still dwarfs what a "
    "smoke-sized model learns, and the program check sees it as what it is, a constant shipped with the code, "
    "not a trained weight hidden from the public batches"
)


# Hidden from the probe (the table answers only in eval mode); its lookup branch is constant on
# the public recording batches (none of their byte pairs is in the table), so the claimed family
# omits it. On the held-out family window the branch's ``where`` mixes the table into the trained
# logits, ops that are dead on the public batches: refused (``identity.program_hidden_branch``).
def test_a_table_in_literals_hidden_from_the_probe_is_stopped(attack_run, corpus_text, tinylm_twin):
    run = attack_run(source(_in_literals(_packed_table(corpus_text)) + SMUGGLER + BLEND_ONLY_AT_EVAL))
    assert_stopped(run, tinylm_twin)
    assert_refused(run, "identity.program_hidden_branch")


def test_a_table_in_comments_ramped_in_during_training_is_stopped(attack_run, corpus_text, tinylm_twin):
    run = attack_run(source(_in_comments(_packed_table(corpus_text)) + SMUGGLER + BLEND_RAMP))
    assert_stopped(run, tinylm_twin)
    assert_refused(run, "identity.program_hidden_branch")


# Kept live on the public batches too, so even the family there is the table's.
@pytest.mark.xfail(strict=True, reason=RESIDUAL)
@pytest.mark.parametrize("carrier", ["literals", "comments"])
def test_a_table_live_on_the_recording_batches_is_stopped(attack_run, corpus_text, tinylm_twin, carrier):
    packed = _packed_table(corpus_text)
    if carrier == "literals":
        body = _in_literals(packed) + SMUGGLER_LIVE_AT_RECORDING + BLEND_ONLY_AT_EVAL
    else:
        body = _in_comments(packed) + SMUGGLER_LIVE_AT_RECORDING + BLEND_ONLY_AT_EVAL
    run = attack_run(source(body))
    assert_stopped(run, tinylm_twin)


def test_the_smuggled_table_passes_intake_in_both_carriers(corpus_text, tmp_path):
    """The attacks above are not stopped by a cap by accident: both carriers pass intake."""
    from prism.submission import load_submission

    packed = _packed_table(corpus_text)
    assert len(packed) == 4 * len(_trigrams(corpus_text)) and len(packed) > 1000
    for name, carrier in (("literals", _in_literals(packed)), ("comments", _in_comments(packed))):
        path = tmp_path / f"{name}.py"
        path.write_text(source(carrier + SMUGGLER + BLEND_RAMP), encoding="utf-8")
        assert load_submission(path).zip_sha256
