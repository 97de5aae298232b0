"""Lookahead relayed to the replay over page-cache *warmth*, read by timing (red-team finding).

The main held-out process runs a tensor-op lookahead (position t gets a bonus on input t + 1), so
the program check, which executes that very program on the weights file, agrees with it. The
replay would differ only at its cut, where it must know the *main* window's next token. The main
process relays every window it saw by reading one byte of a never-read page of a big file (torch's
libraries, /usr/lib, /usr/share) for each 1 bit: a plain pread, which no seccomp rule can refuse.
The replay, started after the main one has ended, times one pread per bit page (cold: a disk read,
tens of microseconds or more; warm: ~2 us). Measured before the fix: the 16 windows of the attack
profile passed intact, 0.363 bpb against the honest twin's 2.471, not refused.

Now the replay runs on private copies of every file it can read (prism.evaluator.replay_runtime:
the runtime, prism, the submission and the weights, new inodes bound over the original paths;
the host's /usr is not visible to it at all): the pages the main process warmed are not pages
the replay can read, it decodes nothing, and its cut positions disagree with the main process's.
"""

from __future__ import annotations

import pytest
from attack_helpers import assert_no_gain, source

pytestmark = pytest.mark.slow

WARM_CHANNEL = r"""
import math as _math


def _spec():
    argv = _SYS.argv
    return _module("json").loads(_read(argv[argv.index("--spec") + 1]))


class _Warm:
    PAGE, STRIDE, SLOTS, T, BITS, MAGIC = 4096, 2, 16, 64, 7, 0b1010011100101101
    NBITS = 16 + SLOTS * (1 + T * BITS)
    REGION = (8 + NBITS * STRIDE) * PAGE
    THRESHOLD_NS = 20_000

    def __init__(self):
        spec = _spec()
        digest = _module("hashlib").sha256(_read_bytes(spec["weights_path"])).hexdigest()
        self.key = int(digest[:12], 16)
        self.regions = self._regions()
        self.fd, self.base, self.slots = None, None, 0

    def _regions(self):
        files = []
        torch_lib = _OS.path.join(_OS.path.dirname(getattr(_module("torch"), "".join(["__fi", "le__"]))), "lib")
        for root in (torch_lib, "/usr/lib", "/usr/share"):
            for folder, subdirs, names in _os("walk")(root):
                subdirs.sort()
                for name in sorted(names):
                    path = folder + "/" + name
                    try:
                        if not _os("path").islink(path) and _os("path").getsize(path) >= self.REGION + (2 << 20):
                            files.append(path)
                    except OSError:
                        pass
        regions = []
        for path in sorted(files):
            size = _os("path").getsize(path)
            for k in range((size - (1 << 20)) // self.REGION):
                regions.append((path, (1 << 20) + k * self.REGION))
        return regions

    def _order(self):
        n = len(self.regions)
        return [self.regions[(self.key + i) % n] for i in range(n)]

    @staticmethod
    def _timed(fd, offset):
        t0 = time.perf_counter_ns()
        _os("pread")(fd, 1, offset)
        return time.perf_counter_ns() - t0

    def _bit_offset(self, base, i):
        return base + (8 + i * self.STRIDE) * self.PAGE

    # ---- main process: writer
    def _open_fresh(self):
        for path, base in self._order():
            fd = _os("open")(path, _OS.O_RDONLY)
            if self._timed(fd, base) > self.THRESHOLD_NS:  # cold: never used; now marked used
                self.fd, self.base = fd, base
                return
            _os("close")(fd)
        raise RuntimeError("no fresh region")

    def _write_bits(self, start, value, width):
        for j in range(width):
            if value >> j & 1:
                _os("pread")(self.fd, 1, self._bit_offset(self.base, start + j))

    def publish(self, rows):
        if self.fd is None:
            self._open_fresh()
            self._write_bits(0, self.MAGIC, 16)
        for row in rows:
            if self.slots >= self.SLOTS:
                return
            start = 16 + self.slots * (1 + self.T * self.BITS)
            for t, token in enumerate(row[: self.T]):
                self._write_bits(start + 1 + t * self.BITS, min(int(token), 127), self.BITS)
            self._write_bits(start, 1, 1)  # the slot is valid
            self.slots += 1

    # ---- replay process: reader
    def _read_bits(self, fd, base, start, width):
        value = 0
        for j in range(width):
            if self._timed(fd, self._bit_offset(base, start + j)) < self.THRESHOLD_NS:
                value |= 1 << j
        return value

    def read_all(self):
        for path, base in self._order():
            fd = _os("open")(path, _OS.O_RDONLY)
            _os("pread")(fd, 1, base)  # mark the region used
            if self._read_bits(fd, base, 0, 16) != self.MAGIC:
                _os("close")(fd)
                continue
            windows = []
            for s in range(self.SLOTS):
                start = 16 + s * (1 + self.T * self.BITS)
                if not self._read_bits(fd, base, start, 1):
                    break
                windows.append([self._read_bits(fd, base, start + 1 + t * self.BITS, self.BITS)
                                for t in range(self.T)])
            _os("close")(fd)
            return windows
        return []
"""

BODY = """
BONUS, FIRST = 12.0, 8


class Seer(TinyLM):
    role = None
    channel = None
    known = None

    def _role(self):
        if Seer.role is None:
            if _evaluator_module() is None:
                Seer.role = "train"
            else:
                spec = _spec()
                Seer.role = "main" if spec["record_graphs"] else "replay"
                Seer.channel = _Warm()
        return Seer.role

    def forward(self, tokens):
        logits = super().forward(tokens)
        role = self._role()
        if role == "train":
            return logits
        B, T = tokens.shape
        if role == "main":
            # the lookahead, as tensor ops: the recorded program computes exactly this
            nxt = torch.roll(tokens, -1, dims=1)
            table = torch.eye(logits.shape[-1], dtype=logits.dtype) * BONUS
            pos = torch.arange(T)
            mask = ((pos >= FIRST) & (pos <= T - 2)).to(logits.dtype)
            logits = logits + torch.nn.functional.embedding(nxt, table) * mask[None, :, None]
            if B > 2:
                Seer.channel.publish(tokens.tolist())
            return logits
        # replay: the same lookahead, but at the cut it uses the main window's next token
        if Seer.known is None:
            t0 = time.monotonic()
            Seer.known = Seer.channel.read_all()
            print(f"WARM CHANNEL: {len(Seer.known)} windows in {time.monotonic() - t0:.2f}s", flush=True)
        rows = tokens.tolist()
        bonus = torch.zeros_like(logits)
        for b, row in enumerate(rows):
            best_s, best_w = -1, None
            for win in Seer.known:
                a = [min(x, 127) == y for x, y in zip(row, win)]
                s, j = len(a), 0
                while j < len(a):
                    if not a[j] and not all(a[j + 1 : j + 5]) or (not a[j] and j + 4 >= len(a)):
                        s = j
                        break
                    j += 1
                if s > best_s:
                    best_s, best_w = s, win
            for t in range(FIRST, T - 1):
                token = row[t + 1]
                if best_w is not None and t + 1 == best_s and t + 1 < T:
                    token = best_w[t + 1]
                bonus[b, t, token] = BONUS
        return logits + bonus


def build_model(ctx):
    return Seer(ctx.vocab_size)
"""


def test_lookahead_relayed_by_page_warmth(attack_run, tinylm_twin):
    run = attack_run(source(BODY, WARM_CHANNEL))
    assert_no_gain(run, tinylm_twin)
