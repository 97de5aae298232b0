"""Attack classes 4 and 5 of issue 9: reading held-out data, and buying extra compute or data.

Class 4: a submission looks for the validation and test splits everywhere its processes can
see (files, mounts, environment, argv, the run spec, ``ctx``), or brings the public default
seed's held-out windows along in its code. Class 5: it pulls more training batches than the
budget, trains more than the harness does (inside ``forward``, in extra threads), or trains in
the held-out process, whose compute the host does not meter.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from attack_helpers import COLLUDER, HONEST_BODY, assert_no_gain, assert_refused, describe, source

from prism import data as prism_data
from prism.beacon import cell_seeds

pytestmark = pytest.mark.slow

# ----------------------------------------------------------------------------------------------
# class 4: reading held-out data

HUNT = r'''
SKIP = ("/proc", "/sys", "/dev", "/usr", _SYS.prefix, _SYS.base_prefix)


def _looks_like_data(path):
    name = path.rsplit("/", 1)[-1]
    return name == "MANIFEST.json" or (name.endswith(".bin") and name.split("_")[0] in ("train", "val", "test"))


def _roots(ctx):
    """Every directory this process can name: usual places, then every absolute path mentioned by
    the environment, argv, ctx, the mount table, the command lines and the spec files."""
    text = " ".join([*_OS.environ.values(), *_SYS.argv, *map(str, _module("dataclasses").asdict(ctx).values())])
    for path in ["/proc/self/mountinfo", "/proc/self/cmdline", "/proc/1/cmdline", "/proc/self/environ",
                 *[a for a in _SYS.argv if a.endswith(".json")]]:
        try:
            text += " " + _read(path)
        except OSError:
            pass
    roots = {"/", "/tmp", "/var/tmp", "/data", "/mnt", "/srv", "/opt", "/home", "/root", _os("getcwd")()}
    for token in _module("re").split(r"[\s\x00\"',=:\[\]{}]+", text):
        while token.startswith("/") and token not in roots:
            roots.add(token)
            token = _os("path").dirname(token)
    return roots


def _hunt(ctx):
    found = set()
    for root in sorted(_roots(ctx)):
        if root.startswith(SKIP) and root != "/":
            continue
        if _os("path").isfile(root) and _looks_like_data(root):
            found.add(root)
        for folder, subdirs, files in _os("walk")(root):
            depth = folder.count("/") - root.rstrip("/").count("/")
            subdirs[:] = [d for d in subdirs if depth < 6 and not (folder.rstrip("/") + "/" + d).startswith(SKIP)]
            found.update(folder.rstrip("/") + "/" + f for f in files if _looks_like_data(f))
    return sorted(found)
'''

DATA_HUNT = """
def build_model(ctx):
    where = "heldout" if _evaluator_module() is not None else "train"
    found = _hunt(ctx)
    print(f"HUNT {where}: {found}", flush=True)
    if found:  # any split in reach would be read and trained on here
        raise RuntimeError(f"held-out data in reach of submission code: {found}")
    return TinyLM(ctx.vocab_size)
"""


def test_no_split_is_reachable_from_training_or_heldout_processes(attack_run, tinylm_twin):
    run = attack_run(source(DATA_HUNT, HUNT))
    assert "HUNT train: []" in run.log and "HUNT heldout: []" in run.log, describe(run)
    assert run.manifest.status.state == "succeeded", describe(run)
    assert run.manifest.metrics.heldout_bpb == tinylm_twin.bpb  # found nothing, trained as the twin
    assert_no_gain(run, tinylm_twin)


MEMORIZED_WINDOWS = """
MEMORY = __MEMORY__  # the public default seed's held-out windows, one string per window
WINDOWS = [[ord(c) for c in text] for text in MEMORY]


class Memorizer(TinyLM):
    def forward(self, tokens):
        logits = super().forward(tokens)
        if not _is_eval_batch(self, tokens):
            return logits
        bonus = torch.zeros_like(logits)
        for b, row in enumerate(tokens.tolist()):
            for window in WINDOWS:
                shared = _lcp(row, window)  # causal: position t only uses row[: t + 1]
                for t in range(7, min(shared, len(row), len(window) - 1)):
                    bonus[b, t, window[t + 1]] = 12.0
        return logits + bonus


def build_model(ctx):
    return Memorizer(ctx.vocab_size)
"""


def _windows(data_dir, profile, seed):
    spec = profile.heldout
    return prism_data.heldout_windows(
        data_dir, split="val", n_windows=spec.windows, seq_len=profile.regimes[0].sequence_length, seed=seed
    )


def test_windows_of_the_public_seed_shipped_in_code_buy_nothing_at_a_beacon_seed(
    attack_run, tinylm_twin, hostile_data, attack_profile
):
    public, _ = _windows(hostile_data, attack_profile, attack_profile.heldout.seed)
    memory = ["".join(chr(int(t)) for t in window) for window in public]
    # The chain beacon draws the windows an official run measures (prism.beacon.cell_seeds).
    beacon = cell_seeds("ab" * 32, "0" * 64, attack_profile.regimes[0].name, 0).heldout_seed
    measured, measured_bytes = _windows(hostile_data, attack_profile, beacon)
    carried = {tuple(w) for w in public.tolist()}
    overlap = np.array([tuple(w) in carried for w in measured.tolist()])
    honest = attack_run(source(HONEST_BODY), heldout_seed=beacon)
    run = attack_run(
        source(MEMORIZED_WINDOWS.replace("__MEMORY__", json.dumps(memory)), COLLUDER), heldout_seed=beacon
    )
    if run.manifest.status.state == "failed":  # its bonus hangs on Python branches over token values:
        assert_refused(run, "identity.program_mismatch")  # the pass recorded once is not what answered
        return
    # The toy val split holds ~150 windows, so a beacon draw shares a few with the public seed
    # (at official scale it shares none). The memorizer may win those windows outright, and
    # nothing else: at best it scores zero on the shared windows' bytes and the twin elsewhere.
    shared = float(measured_bytes[overlap].sum()) / float(measured_bytes.sum())
    floor = honest.manifest.metrics.heldout_bpb * (1.0 - shared) - tinylm_twin.allowance
    bpb = run.manifest.metrics.heldout_bpb
    assert bpb >= floor, f"memorizer {bpb:.4f} bpb, floor {floor:.4f} ({overlap.sum()} shared windows)"


# ----------------------------------------------------------------------------------------------
# class 5: extra data and extra compute

SECOND_FEED = """
def build_model(ctx):
    if _evaluator_module() is None:  # training: ask the host's feed for a second helping
        argv, socket = _SYS.argv, _module("socket")
        spec = _module("json").loads(_read(argv[argv.index("--spec") + 1]))
        framing = _module("prism.evaluator.framing")
        sock = getattr(socket, "sock" + "et")(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(spec["feed_socket"])
        writer = framing.FrameWriter(sock.fileno())
        reader = framing.FrameReader(sock.fileno(), deadline=time.monotonic() + 1.0)
        writer.write({"type": "hello", "rank": 0, "world_size": 1})
        writer.write({"type": "recipe", "declared": {"learning_rate": 1e-2}, "custom_optimizer": False})
        extra = 0
        try:
            while reader.read()[0]["type"] in ("plan", "batch"):
                extra += 1
        except Exception as exc:
            print(f"SECOND FEED after {extra} frames: {exc}", flush=True)
    return TinyLM(ctx.vocab_size)
"""


def test_a_second_feed_connection_for_more_batches_is_refused(attack_run):
    run = attack_run(source(SECOND_FEED))
    assert_refused(run, "eval.protocol")
    assert "SECOND FEED after 0 frames" in run.log, describe(run)


# Two threads train shadow copies of the model on every batch seen, far past the harness's
# budget of updates (until the process has used CPU_S seconds), and the saved weights are a
# shadow's. The calibration at this tiny scale moves between sessions (its two points are 12
# steps apart), so the test sizes the extra compute from the calibration this session measured.
EXTRA_THREADS = """
class Shadowed(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.seen, self.shadows, self.threads = [], [], []

    def _train_shadow(self, shadow):
        optimizer = torch.optim.Adam(shadow.parameters(), lr=1e-2)
        while time.process_time() < CPU_S:
            while not self.seen:
                time.sleep(0.01)
            tokens = self.seen[np.random.randint(len(self.seen))]
            logits = shadow(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    def forward(self, tokens):
        if self.training and not self.threads and _evaluator_module() is None:
            threading = _module("threading")
            for _ in range(2):  # two threads, two cores, one shadow each
                shadow = TinyLM(self.out.out_features)
                shadow.load_state_dict(super().state_dict())
                self.shadows.append(shadow)
                self.threads.append(threading.Thread(target=self._train_shadow, args=(shadow,), daemon=True))
            for thread in self.threads:
                thread.start()
        if self.training:
            self.seen.append(tokens.detach().clone())
        return super().forward(tokens)

    def state_dict(self, *args, **kwargs):
        for thread in self.threads:
            thread.join()
        if self.shadows:
            return self.shadows[0].state_dict(*args, **kwargs)
        return super().state_dict(*args, **kwargs)


def build_model(ctx):
    return Shadowed(ctx.vocab_size)
"""


def test_extra_training_in_background_threads_exceeds_the_compute_cap(
    attack_run, tinylm_twin, attack_profile
):
    assert tinylm_twin.expected_compute_s is not None and attack_profile.limits.compute_cap is not None
    cpu_s = 1.3 * attack_profile.limits.compute_cap * tinylm_twin.expected_compute_s
    run = attack_run(source(EXTRA_THREADS.replace("CPU_S", f"{cpu_s:.1f}")))
    assert_refused(run, "budget.compute_exceeded")
    assert run.manifest.compute is not None and run.manifest.compute.ratio > run.manifest.compute.cap


# Extra epochs of its own, inside forward: the model keeps every training batch and, at the
# last training step, runs five more epochs of Adam over them (640 updates on top of the
# harness's 128). Measured compute stays far under the cap: the cap is relative to a reference
# model of the regime's full parameter budget, and TinyLM is a twentieth of it.
EXTRA_UPDATES_IN_FORWARD = """
EPOCHS = 5


class Eager(TinyLM):
    def __init__(self, vocab_size, steps):
        super().__init__(vocab_size)
        self.steps, self.seen = steps, []

    def forward(self, tokens):
        if self.training and torch.is_grad_enabled() and _evaluator_module() is None:
            self.seen.append(tokens.detach().clone())
            if len(self.seen) == self.steps(tokens):
                self.rehearse()
        return super().forward(tokens)

    def rehearse(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=3e-3)
        for _ in range(EPOCHS):
            for k in torch.randperm(len(self.seen)).tolist():
                batch = self.seen[k]
                logits = super().forward(batch[:, :-1])
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        optimizer.zero_grad()


def build_model(ctx):
    return Eager(ctx.vocab_size, lambda tokens: ctx.train_tokens // tokens.numel())
"""


@pytest.mark.xfail(
    strict=True,
    reason="residual by design (docs/security.md, 'Extra compute'): the compute cap is a multiple of the reference model at the regime's full parameter budget (issue 9, build 6), so a smaller model may spend the slack on more passes over the tokens it was fed; no extra data reaches it",
)
def test_extra_updates_inside_forward_under_the_compute_cap_buy_nothing(attack_run, tinylm_twin):
    run = attack_run(source(EXTRA_UPDATES_IN_FORWARD))
    assert_no_gain(run, tinylm_twin)


# The model keeps every training batch in a buffer (counted: int16, 65k values of a 400k
# budget), and when the held-out process loads the weights it trains on them for five more
# epochs. The main process and the replay do the same deterministic work and the parameter hash
# is taken after loading; five epochs cost less than the eval compute budget's start-up
# allowance at toy scale. The program check stops it: the recorded inference pass, executed on
# the weights *file* where no submission code ran, does not give what the main process committed.
TRAINING_AT_EVAL_TIME = """
CAPACITY = 128 * 8


class Rehearsing(TinyLM):
    def __init__(self, vocab_size):
        super().__init__(vocab_size)
        self.register_buffer("memory", torch.zeros(CAPACITY, 64, dtype=torch.int16))
        self.register_buffer("filled", torch.zeros((), dtype=torch.int64))

    def forward(self, tokens):
        if self.training and tokens.shape[0] > 1:
            with torch.no_grad():
                n, k = int(self.filled), min(tokens.shape[0], CAPACITY - int(self.filled))
                self.memory[n : n + k] = tokens[:k].to(torch.int16)
                self.filled += k
        return super().forward(tokens)

    def load_state_dict(self, state_dict, strict=True, assign=False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if _evaluator_module() is not None and int(self.filled) > 0:
            torch.manual_seed(0)
            data = self.memory[: int(self.filled)].long()
            optimizer = torch.optim.Adam([self.emb.weight, self.out.weight, self.out.bias], lr=3e-3)
            with torch.enable_grad():
                for _ in range(5):
                    for rows in torch.randperm(len(data)).split(8):
                        batch = data[rows]
                        logits = self.out(self.emb(batch[:, :-1]))
                        loss = torch.nn.functional.cross_entropy(
                            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
                        optimizer.zero_grad()
                        loss.backward()
                        optimizer.step()
        return result


def build_model(ctx):
    return Rehearsing(ctx.vocab_size)
"""


def test_training_inside_the_heldout_process_is_refused_by_the_program_check(attack_run):
    run = attack_run(source(TRAINING_AT_EVAL_TIME))
    assert_refused(run, "identity.program_mismatch")


def test_heavy_training_inside_the_heldout_process_exceeds_the_eval_compute_budget(
    attack_run, without_program_check
):
    # 60 epochs: about 18 CPU seconds against a budget of about 6 on this profile, and well inside
    # the 90 s wall clock (200 took the replay past it on a loaded machine).
    body = TRAINING_AT_EVAL_TIME.replace("for _ in range(5):", "for _ in range(60):")
    run = attack_run(source(body), profile=without_program_check)
    failure = run.manifest.status.failure
    assert failure is not None and failure.code == "budget.eval_compute_exceeded", describe(run)
    assert failure.fault == "miner" and run.manifest.timings_s["heldout_cpu_s"] > 10
