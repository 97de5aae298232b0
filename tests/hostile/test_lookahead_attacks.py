"""Attack classes 2 and 3 of issue 9: lookahead, and hidden state / test-time training.

Every attack here trains TinyLM exactly as its honest twin does (same seed, same updates) and
changes only what the held-out process answers, so without the trick it scores the twin's
number to the bit. Each either reads the next input token (class 2) or adapts to held-out text
it has seen (class 3), outside its parameters, so the parameter hashes never change.
"""

from __future__ import annotations

import pytest
from attack_helpers import COLLUDER, LOCK_CHANNEL, PAGE_CACHE_CHANNEL, assert_no_gain, assert_refused, source

pytestmark = pytest.mark.slow

# ----------------------------------------------------------------------------------------------
# class 2: lookahead

PEEK = """
BONUS = 12.0  # nats added to the logit of the token the model peeked at


def _peeked(logits, guesses):
    bonus = torch.zeros_like(logits)
    for b, row in enumerate(guesses):
        for t, token in enumerate(row):
            if token is not None:
                bonus[b, t, token] = BONUS
    return logits + bonus
"""

PLAIN_LOOKAHEAD = """
class Peeker(TinyLM):
    def forward(self, tokens):
        logits = super().forward(tokens)
        if not _is_eval_batch(self, tokens):
            return logits
        rows = tokens.tolist()
        return _peeked(logits, [row[1:] + [None] for row in rows])  # position t sees input t + 1


def build_model(ctx):
    return Peeker(ctx.vocab_size)
"""


def test_plain_lookahead_is_refused_by_the_replay(attack_run, tinylm_twin, without_program_check):
    run = attack_run(source(PLAIN_LOOKAHEAD, PEEK), profile=without_program_check)
    assert_refused(run, "eval.replay_mismatch")
    assert_no_gain(run, tinylm_twin)


# Answers the in-process causality check from memory (its perturbed rows share a prefix with a
# row already answered), slows the main evaluation down, and takes a long wait between its
# set-up and its first batch as the sign of the replay process, which it answers causally.
DODGING_LOOKAHEAD = """
class Dodger(TinyLM):
    answered = []  # (row, logits) of every full batch this process answered
    setup_done = None
    causal = None

    def forward(self, tokens):
        logits = super().forward(tokens)
        if not self.training and tokens.shape[0] == 1:
            Dodger.setup_done = time.monotonic()  # the identity graph ends the set-up
        if not _is_eval_batch(self, tokens):
            return logits
        if Dodger.causal is None:  # a replay: it waited long, or recorded no identity graph first
            Dodger.causal = Dodger.setup_done is None or time.monotonic() - Dodger.setup_done > 1.0
        if Dodger.causal:
            return logits
        rows = tokens.tolist()
        out = _peeked(logits, [row[1:] + [None] for row in rows])
        for b, row in enumerate(rows):
            shared, answer = max(((_lcp(row, seen), answer) for seen, answer in Dodger.answered),
                                 key=lambda pair: pair[0], default=(0, None))
            if 8 <= shared < len(row):
                out[b, :shared] = answer[:shared]  # a re-query of a seen prefix: answer as before
        if tokens.shape[0] > 2:
            Dodger.answered.extend(zip(rows, out.clone()))
            time.sleep(1.5)  # the replay waits for all of this
        return out


def build_model(ctx):
    return Dodger(ctx.vocab_size)
"""


def test_lookahead_that_dodges_the_in_process_check_and_spots_the_replay_is_refused(
    attack_run, tinylm_twin, without_program_check
):
    run = attack_run(source(DODGING_LOOKAHEAD, COLLUDER, PEEK), profile=without_program_check)
    assert_refused(run, "eval.replay_mismatch")
    assert not any("causality" in a for a in run.manifest.diagnostics.advisory)  # it did dodge that
    assert_no_gain(run, tinylm_twin)


# The main process publishes every held-out window it is asked over a covert channel; the replay
# process reads them, finds the window each replay row was cut from, and peeks at *that*
# window's next token: the same answer the main process gave, at every position the replay
# compares. Two channels: POSIX record locks on the shared submission file (needs both processes
# alive at once) and the page cache of a big file in /usr (outlives the main process).
CHANNELS = pytest.mark.parametrize(
    "channel", [LOCK_CHANNEL, PAGE_CACHE_CHANNEL], ids=["lock-channel", "page-cache"]
)
COLLUDING_LOOKAHEAD = """
class Colluding(TinyLM):
    def forward(self, tokens):
        logits = super().forward(tokens)
        if not _is_eval_batch(self, tokens):
            return logits
        rows, known = _Colluder.known(tokens)
        guesses = []
        for row in rows:
            index, shared = _source(row, known)
            window = known[index] if index is not None else row
            guesses.append([window[t + 1] if t < shared and t + 1 < len(window) else
                            (row[t + 1] if t + 1 < len(row) else None) for t in range(len(row))])
        return _peeked(logits, guesses)


def build_model(ctx):
    _Colluder.start()
    return Colluding(ctx.vocab_size)
"""


@CHANNELS
def test_lookahead_shared_with_the_replay_over_a_covert_channel_is_refused(attack_run, tinylm_twin, channel):
    run = attack_run(source(COLLUDING_LOOKAHEAD, channel, COLLUDER, PEEK))
    assert_no_gain(run, tinylm_twin)


# ----------------------------------------------------------------------------------------------
# class 3: hidden state and test-time training

# A trigram cache of held-out text mixed into the model's distribution. ``known`` is the text a
# process has seen, as whole windows in the order it saw them; a row's cache is built from the
# windows of the batches before the batch of the window it shares the longest prefix with.
CACHE = """
def _counts(windows, vocab):
    counts = {}
    for window in windows:
        for a, b, c in zip(window, window[1:], window[2:]):
            counts.setdefault((a, b), np.zeros(vocab))[c] += 1.0
    return counts


def _mixed(logits, rows, caches):
    probs = torch.softmax(logits.to(torch.float64), dim=-1)
    vocab = logits.shape[-1]
    for b, row in enumerate(rows):
        counts = caches[b]
        for t in range(1, len(row)):
            n = counts.get((row[t - 1], row[t]))
            if n is None:
                continue
            total = float(n.sum())
            lam = 0.8 * total / (total + 1.0)
            q = torch.from_numpy((n + 0.01) / (total + 0.01 * vocab))
            probs[b, t] = (1.0 - lam) * probs[b, t] + lam * q
    return torch.log(probs).to(logits.dtype)


def _history_caches(rows, known, batch_rows, vocab):
    caches, built = [], {}
    for row in rows:
        index, _ = _source(row, known)
        first = 0 if index is None else (index // batch_rows) * batch_rows
        if first not in built:
            built[first] = _counts(known[:first], vocab)
        caches.append(built[first])
    return caches
"""

WITHIN_BATCH_TTT = """
class FastWeights(TinyLM):
    def forward(self, tokens):
        logits = super().forward(tokens)
        if not _is_eval_batch(self, tokens):
            return logits
        rows = tokens.tolist()
        fast = _counts(rows, logits.shape[-1])  # adapted on the whole batch before answering
        return _mixed(logits, rows, [fast] * len(rows))


def build_model(ctx):
    return FastWeights(ctx.vocab_size)
"""


def test_fast_weights_adapted_on_each_batch_are_refused_by_the_replay(
    attack_run, tinylm_twin, without_program_check
):
    run = attack_run(source(WITHIN_BATCH_TTT, COLLUDER, CACHE), profile=without_program_check)
    assert_refused(run, "eval.replay_mismatch")
    assert_no_gain(run, tinylm_twin)


CROSS_BATCH_CACHE = """
class Remembering(TinyLM):
    seen = []  # every full batch's windows, in order: state that outlives a batch
    batch_rows = None

    def forward(self, tokens):
        logits = super().forward(tokens)
        if not _is_eval_batch(self, tokens):
            return logits
        rows = tokens.tolist()
        Remembering.batch_rows = Remembering.batch_rows or len(rows)
        if len(rows) == Remembering.batch_rows:
            Remembering.seen.extend(rows)
        caches = _history_caches(rows, Remembering.seen, Remembering.batch_rows, logits.shape[-1])
        return _mixed(logits, rows, caches)


def build_model(ctx):
    return Remembering(ctx.vocab_size)
"""


def test_a_cache_carried_across_batches_is_refused_by_the_replay(
    attack_run, tinylm_twin, without_program_check
):
    run = attack_run(source(CROSS_BATCH_CACHE, COLLUDER, CACHE), profile=without_program_check)
    assert_refused(run, "eval.replay_mismatch")
    assert not any("causality" in a for a in run.manifest.diagnostics.advisory)
    assert_no_gain(run, tinylm_twin)


# The same cache; the replay process rebuilds the main process's state from the windows the
# main process published over a covert channel, batch by batch.
COLLUDING_CACHE = """
class ColludingCache(TinyLM):
    def forward(self, tokens):
        logits = super().forward(tokens)
        if not _is_eval_batch(self, tokens):
            return logits
        rows, known = _Colluder.known(tokens)
        caches = _history_caches(rows, known, _Colluder.batch_rows, logits.shape[-1])
        return _mixed(logits, rows, caches)


def build_model(ctx):
    _Colluder.start()
    return ColludingCache(ctx.vocab_size)
"""


@CHANNELS
def test_a_cache_rebuilt_by_the_replay_over_a_covert_channel_is_refused(attack_run, tinylm_twin, channel):
    run = attack_run(source(COLLUDING_CACHE, channel, COLLUDER, CACHE))
    assert_no_gain(run, tinylm_twin)
