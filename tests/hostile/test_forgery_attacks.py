"""Attack classes 1 and 7 of issue 9: forged reveals and forged infrastructure faults.

Class 1: code in the held-out process rewrites the in-process half of the reveal protocol
(``_Evaluator`` of ``prism.evaluator.heldout``, reachable as ``sys.modules["__main__"]``).
Class 7: submission code claims, in every way it can, that a failure after ``hello`` was ours.
Each run goes end to end through ``prism.evaluator.host.evaluate`` in the real sandbox.
"""

from __future__ import annotations

import pytest
from attack_helpers import assert_no_gain, assert_refused, describe, source

pytestmark = pytest.mark.slow

# ----------------------------------------------------------------------------------------------
# class 1: forged reveals


FAKE_Z_EVERYWHERE = """
def build_model(ctx):
    H = _evaluator_module()
    if H is not None:
        def target_logits(self, targets):
            # Claim that every target held nearly all the probability: z just below L.
            lse = torch.logsumexp(self.logits.to(torch.float64), dim=-1) - 1e-3
            return lse.numpy().astype("<f8").tobytes()

        H._Evaluator.target_logits = target_logits
    return TinyLM(ctx.vocab_size)
"""


def test_forged_target_logits_everywhere_are_refused(attack_run, tinylm_twin):
    run = attack_run(source(FAKE_Z_EVERYWHERE))
    assert_refused(run, "eval.commitment_mismatch")
    assert_no_gain(run, tinylm_twin)


ONE_CHEAP_LIE_PER_BATCH = """
def build_model(ctx):
    H = _evaluator_module()
    if H is not None and not getattr(H._Evaluator, "forged", False):
        honest_z, honest_rows = H._Evaluator.target_logits, H._Evaluator.spot_rows

        def target_logits(self, targets):
            # One lie per batch, where it pays most: the worst-predicted position gets z = L.
            z = np.frombuffer(honest_z(self, targets), dtype="<f8").reshape(targets.shape).copy()
            lse = torch.logsumexp(self.logits.to(torch.float64), dim=-1).numpy()
            b, t = np.unravel_index(np.argmax(lse - z), z.shape)
            z[b, t] = float(np.float32(lse[b, t]))
            self.lie = (int(b), int(t), int(targets[b, t]), z[b, t])
            return z.tobytes()

        def spot_rows(self, spots):
            b, t, target, z = self.lie
            row = self.logits[b, t].clone()
            row[target] = z  # a revealed row that agrees with the lie
            self.logits[b, t] = row
            return honest_rows(self, spots)

        H._Evaluator.target_logits, H._Evaluator.spot_rows = target_logits, spot_rows
        H._Evaluator.forged = True
    return TinyLM(ctx.vocab_size)
"""


def test_one_cheap_lie_per_batch_with_a_matching_row_is_refused(attack_run, tinylm_twin):
    run = attack_run(source(ONE_CHEAP_LIE_PER_BATCH))
    assert_refused(run, "eval.commitment_mismatch")
    assert_no_gain(run, tinylm_twin)


# The host accepts a committed log-normaliser L within LSE_RELATIVE_TOLERANCE * |L| of its row's
# logsumexp. Logits shifted by 2**26 (softmax does not change, float32 spacing there is 8) make
# that tolerance 67 nats. The shift goes on the last position only: the replay compares
# positions up to a cut <= T - 2, so it never looks there.
RELATIVE_TOLERANCE_LIE = """
OFFSET = 2.0**26


class Shifted(TinyLM):
    def forward(self, tokens):
        logits = super().forward(tokens)
        if _is_eval_batch(self, tokens):
            shift = torch.zeros_like(logits)
            shift[:, -1, :] = OFFSET
            logits = logits + shift
        return logits


def build_model(ctx):
    H = _evaluator_module()
    if H is not None and not getattr(H._Evaluator, "forged", False):
        honest = H._Evaluator.commit

        def commit(self, input_ids):
            out = honest(self, input_ids)
            n = input_ids.numel()
            lse = np.frombuffer(out[: n * 8], dtype="<f8").reshape(input_ids.shape).copy()
            lse[:, -1] -= 0.9e-6 * np.abs(lse[:, -1])  # inside the host's relative tolerance
            return lse.astype("<f8").tobytes() + out[n * 8 :]

        H._Evaluator.commit = commit
        H._Evaluator.forged = True
    return Shifted(ctx.vocab_size)
"""


def test_log_normaliser_lowered_within_the_relative_tolerance_is_refused(attack_run, tinylm_twin):
    run = attack_run(source(RELATIVE_TOLERANCE_LIE))
    assert_no_gain(run, tinylm_twin)


# ----------------------------------------------------------------------------------------------
# class 7: forged infrastructure faults


RAISE_INFRASTRUCTURE_FAULT = """
class Trap(TinyLM):
    calls = 0

    def forward(self, tokens):
        Trap.calls += 1
        if self.training and Trap.calls == 3:  # mid-training: an unlucky run, so draw again
            errors = _SYS.modules["prism.errors"]
            raise errors.InfrastructureFault("the host's data feed broke", code="data.feed_failed")
        return super().forward(tokens)


def build_model(ctx):
    return Trap(ctx.vocab_size)
"""


def test_raising_infrastructure_fault_in_training_is_the_miners(attack_run):
    run = attack_run(source(RAISE_INFRASTRUCTURE_FAULT))
    assert_refused(run, "eval.crashed")
    assert "data.feed_failed" in run.manifest.status.failure.message  # shown, not believed


FORGED_REPORT_AND_INFRA_EXIT = """
class Quitter(TinyLM):
    def state_dict(self, *args, **kwargs):
        # Called by the runner to save the weights: the training is done, the score is known
        # to be bad, so leave a report that blames the host and exit with its infra code.
        runner = _SYS.modules["__main__"]
        report = {"ok": False, "failure": {"code": "sandbox.setup_failed", "fault": "infrastructure",
                                           "message": "bwrap could not start", "phase": "train"}}
        flags = _OS.O_WRONLY | _OS.O_CREAT | _OS.O_TRUNC
        fd = _os("open")(_os("getcwd")() + "/" + runner.RUNNER_REPORT_FILENAME, flags)
        _os("write")(fd, _module("json").dumps(report).encode())
        _os("close")(fd)
        _os("_exit")(runner.EXIT_INFRA_FAULT)


def build_model(ctx):
    return Quitter(ctx.vocab_size)
"""


def test_forged_runner_report_and_infra_exit_code_are_the_miners(attack_run):
    run = attack_run(source(FORGED_REPORT_AND_INFRA_EXIT))
    assert_refused(run, "eval.")
    assert run.manifest.status.failure.phase == "train"


KILL_TORCHRUN = """
class Assassin(TinyLM):
    calls = 0

    def forward(self, tokens):  # the second training step (the runner's eval-mode calls at build do not count)
        Assassin.calls += self.training
        if self.training and Assassin.calls == 2:
            _os("kill")(_os("getppid")(), 9)  # torchrun's agent: as if the launcher died
            time.sleep(2)
        return super().forward(tokens)


def build_model(ctx):
    return Assassin(ctx.vocab_size)
"""


def test_killing_the_torchrun_agent_is_the_miners(attack_run):
    run = attack_run(source(KILL_TORCHRUN))
    assert_refused(run, "eval.")


HELDOUT_INFRA_CLAIMS = """
def build_model(ctx):
    H = _evaluator_module()
    if H is not None and not getattr(H._Evaluator, "forged", False):
        def commit(self, input_ids):
            # The held-out process says it is the host's fault twice: an error frame claiming
            # an infrastructure fault on the protocol pipe, then the evaluator's infra exit code.
            self.pipes.writer.write({"type": "error", "code": "sandbox.setup_failed", "fault": "infrastructure",
                                     "message": "the GPU fell off the bus", "frames": []})
            _os("_exit")(H.EXIT_INFRA_FAULT)

        H._Evaluator.commit = commit
        H._Evaluator.forged = True
    return TinyLM(ctx.vocab_size)
"""

HELDOUT_RAISES_INFRA = """
class Flaky(TinyLM):
    def forward(self, tokens):
        if _is_eval_batch(self, tokens):
            errors = _SYS.modules["prism.errors"]
            raise errors.InfrastructureFault("CUDA error: an illegal memory access", code="device.unhealthy")
        return super().forward(tokens)


def build_model(ctx):
    return Flaky(ctx.vocab_size)
"""


@pytest.mark.parametrize("body", [HELDOUT_INFRA_CLAIMS, HELDOUT_RAISES_INFRA], ids=["error-frame", "raise"])
def test_heldout_process_claiming_infrastructure_faults_is_the_miners(attack_run, body):
    run = attack_run(source(body))
    assert_refused(run, "eval.")
    assert run.manifest.status.failure.phase == "heldout", describe(run)


# A weights file the host's own reader accepts (its shape entry is a valid non-negative integer,
# zero elements) but safetensors refuses (the dimension does not fit a usize). The held-out
# process reads the weights before it says hello, so the failure lands before hello.
UNLOADABLE_WEIGHTS = """
def build_model(ctx):
    st = _module("safetensors.torch")
    if not getattr(st, "forged", False):
        honest = st.save_file

        def save_file(tensors, filename, metadata=None):
            honest(tensors, filename, metadata)
            json, struct = _module("json"), _module("struct")
            fd = _os("open")(filename, _OS.O_RDWR)
            raw = b""
            while True:
                chunk = _os("read")(fd, 1 << 20)
                if not chunk:
                    break
                raw += chunk
            size = struct.unpack("<Q", raw[:8])[0]
            header = json.loads(raw[8 : 8 + size])
            end = max(entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__")
            header["trap"] = {"dtype": "F32", "shape": [10**30, 0], "data_offsets": [end, end]}
            text = json.dumps(header, separators=(",", ":")).encode()  # the compact form the host requires
            _os("lseek")(fd, 0, 0)
            _os("ftruncate")(fd, 0)
            _os("write")(fd, struct.pack("<Q", len(text)) + text + raw[8 + size :])
            _os("close")(fd)

        st.save_file, st.forged = save_file, True
    return TinyLM(ctx.vocab_size)
"""


def test_weights_that_only_the_host_can_read_are_the_miners(attack_run):
    run = attack_run(source(UNLOADABLE_WEIGHTS))
    assert_refused(run, "eval.", "budget.")
