"""The Ray backend: real sandboxed evaluations on a real Ray cluster started on this machine.

The cluster (``prism.workers.ray_local.LocalRayHead``: 2 CPUs, a small object store, no
dashboard) is started once for the module and always stopped, by process group and pid, never
with ``ray stop`` (which would end other people's clusters on a shared machine).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from prism.errors import InfrastructureFault, OperatorError
from prism.manifest import MANIFEST_FILENAME, RunManifest, read_manifest
from prism.scoring.paired import EvalRequest
from prism.store import RunKey
from prism.submission import pack_to
from prism.workers import ray_node, ray_paired
from prism.workers.ray_local import LocalRayHead, marked_pids
from prism.workers.run_archive import pack_run_dir, remove_tree, unpack_run_dir
from prism.workers.tasks import EvaluationTask, PairedJob, TaskOutcome

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "validator" / "tiny_profile.yaml"


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[LocalRayHead]:
    pytest.importorskip("ray", reason="the Ray backend needs pip install -e '.[ray]'")
    root = Path(tempfile.mkdtemp(prefix="prism-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    head = LocalRayHead.start(root, num_cpus=2)
    try:
        yield head
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        head.stop(remove=True)


def _corpus(tmp_path_factory, text_corpus_builder, name: str, words: str) -> Path:
    texts = [" ".join([words] * 40) + f" {i}" for i in range(300)]
    return text_corpus_builder(texts, tmp_path_factory.mktemp(name), shard_tokens=1 << 15)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, text_corpus_builder) -> Path:
    return _corpus(tmp_path_factory, text_corpus_builder, "ray-data", "ray runs evaluations on every node")


def _task(tmp_path: Path, data_dir: Path, example: str, seed: int = 7) -> EvaluationTask:
    zip_path = tmp_path / f"{example}-{seed}.zip"
    sha = pack_to(ROOT / "examples" / example, zip_path)
    key = RunKey(zip_sha256=sha, profile="test_tiny", profile_version=1, regime="tiny", seed=seed,
                 recipe_mode="reference")  # fmt: skip
    return EvaluationTask(key=key, zip_path=zip_path, profile=str(TINY), data_dir=data_dir,
                          runs_dir=tmp_path / "runs", calibration_dir=tmp_path / "calibration")  # fmt: skip


def _wait(pool, n: int, timeout: float = 300) -> list[TaskOutcome]:
    outcomes: list[TaskOutcome] = []
    deadline = time.monotonic() + timeout
    while len(outcomes) < n and time.monotonic() < deadline:
        outcomes += pool.poll()
        time.sleep(0.2)
    return outcomes


@pytest.fixture
def connect(ray_cluster) -> Iterator:
    """``RayPool.connect`` on the local cluster; every pool is shut down, even on failure."""
    from prism.workers.ray_pool import RayPool

    pools = []

    def _connect(data_dir: Path, **kwargs):
        pool = RayPool.connect(ray_cluster.address, device="cpu", data_dir=data_dir, **kwargs)
        pools.append(pool)
        return pool

    yield _connect
    for pool in pools:
        pool.shutdown()


@pytest.mark.slow
def test_two_runs_through_a_local_ray_cluster(connect, ray_cluster, data_dir, tmp_path) -> None:
    def ours(signum, frame):  # the validator's handler: Ray must not replace it
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, ours)
    try:
        pool = connect(data_dir)
        assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert pool.name == "ray" and len(pool.free_slots()) == 2  # the cluster's 2 CPUs
    first, second = _task(tmp_path, data_dir, "gpt"), _task(tmp_path, data_dir, "mixer")
    assert pool.submit(first) and pool.submit(second)
    assert not pool.submit(_task(tmp_path, data_dir, "gpt", seed=8))  # both slots busy
    assert len(pool.in_flight()) == 2 and pool.free_slots() == []
    for task in (first, second):
        task.zip_path.unlink()  # the nodes got the bytes, content-addressed, not the path
    outcomes = _wait(pool, 2)
    assert {o.state for o in outcomes} == {"finished"}, outcomes
    assert {o.run_status for o in outcomes} == {"succeeded"}
    for outcome in outcomes:
        assert outcome.manifest_path is not None and outcome.manifest_path.parent.parent == tmp_path / "runs"
        assert hashlib.sha256(outcome.manifest_path.read_bytes()).hexdigest() == outcome.manifest_sha256
        assert read_manifest(outcome.manifest_path).metrics.heldout_bpb == outcome.heldout_bpb
        run_dir = outcome.manifest_path.parent
        assert (run_dir / "weights" / "weights.safetensors").stat().st_size > 0
        assert "trained" in (run_dir / "run.log").read_text(encoding="utf-8")
        assert outcome.worker and outcome.worker.startswith("ray node")
    assert len({o.worker for o in outcomes}) == 2  # two worker processes
    assert sorted(p.name for p in (ray_cluster.cache_dir / "ray-scratch").iterdir()) == []
    assert len(pool.free_slots()) == 2 and pool.in_flight() == []


def _worker_inside_its_sandbox(marker: str, timeout: float = 120) -> int:
    """The pid of the Ray worker running a task, once its sandbox is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in marked_pids(marker):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            if cmdline.startswith(b"ray::prism-eval") and children:
                return pid
        time.sleep(0.2)
    raise AssertionError("no Ray worker started a sandbox")


@pytest.mark.slow
def test_a_killed_worker_is_an_infra_fault_and_the_run_is_requeued(
    connect, ray_cluster, data_dir, tmp_path
) -> None:
    pool = connect(data_dir, workers=1)
    task = _task(tmp_path, data_dir, "gpt")
    assert pool.submit(task)
    worker = _worker_inside_its_sandbox(str(ray_cluster.cache_dir))
    time.sleep(2)  # well into the run
    os.kill(worker, signal.SIGKILL)
    [lost] = _wait(pool, 1, timeout=60)
    assert (lost.state, lost.code, lost.key) == ("infra_fault", "ray.worker_lost", task.key), lost
    scratch = ray_cluster.cache_dir / "ray-scratch"
    [left] = list(scratch.iterdir())  # the dead worker's scratch
    time.sleep(1)
    assert not [p for p in marked_pids(str(left)) if p != worker]  # its sandbox died with it
    assert not (tmp_path / "runs").exists()  # nothing half-written reached the validator's store
    assert pool.free_slots() and pool.in_flight() == []
    assert pool.submit(task)  # the validator re-queues it
    [again] = _wait(pool, 1)
    assert (again.state, again.run_status) == ("finished", "succeeded"), again
    assert again.manifest_path is not None and again.manifest_path.is_file()
    assert list(scratch.iterdir()) == []  # the next run on the node swept the stale scratch


@pytest.mark.slow
def test_nodes_without_the_same_data_are_refused(
    connect, ray_cluster, data_dir, tmp_path, tmp_path_factory, text_corpus_builder
) -> None:
    import ray

    other = _corpus(tmp_path_factory, text_corpus_builder, "ray-other", "a different corpus altogether")
    ours, theirs = ray_node.data_fingerprint(data_dir), ray_node.data_fingerprint(other)
    with pytest.raises(OperatorError) as refused:
        connect(data_dir, data_fingerprint=theirs)
    assert refused.value.code == "ray.data_mismatch"
    assert (
        ours in refused.value.message and theirs in refused.value.message and "node" in refused.value.message
    )
    assert not ray.is_initialized()  # a refused connect leaves no connection behind
    pool = connect(data_dir, data_fingerprint=theirs, check_nodes=False)  # a node that changed later
    assert pool.submit(_task(tmp_path, data_dir, "gpt"))
    broken = _task(tmp_path, data_dir, "mixer")
    broken.zip_path.write_bytes(b"not the zip its key names")
    assert pool.submit(broken)  # refused before Ray: an outcome at the next poll, still in flight now
    assert len(pool.in_flight()) == 2
    outcomes = {o.key: o for o in _wait(pool, 2, timeout=120)}
    data_fault = next(o for key, o in outcomes.items() if key != broken.key)
    assert (data_fault.state, data_fault.code) == ("infra_fault", "ray.data_mismatch"), data_fault
    assert ours in (data_fault.message or "") and theirs in (data_fault.message or "")
    assert (outcomes[broken.key].state, outcomes[broken.key].code) == ("infra_fault", "ray.zip_mismatch")


@pytest.mark.slow
def test_a_training_variant_ships_its_canonical_zip_keyed_by_its_bytes(
    connect, ray_cluster, data_dir, tmp_path
) -> None:
    pool = connect(data_dir)
    canonical = tmp_path / "store" / "not-its-sha256.zip"  # the pool keys it by its bytes, not its name
    canonical.parent.mkdir()
    canonical_sha = pack_to(ROOT / "examples" / "gpt", canonical)
    variant = tmp_path / "gpt_recipe.zip"
    sha = pack_to(ROOT / "examples" / "gpt_recipe", variant)
    key = RunKey(zip_sha256=sha, profile="test_tiny", profile_version=1, regime="tiny", seed=7,
                 recipe_mode="submitted")  # fmt: skip
    task = EvaluationTask(key=key, zip_path=variant, profile=str(TINY), data_dir=data_dir, runs_dir=tmp_path / "runs",
                          calibration_dir=tmp_path / "calibration", architecture_zip_path=canonical)  # fmt: skip
    assert pool.submit(task)
    assert sorted(pool._held) == sorted([f"zip:{sha}", f"zip:{canonical_sha}"])
    variant.unlink()
    canonical.unlink()  # the node got both ZIPs' bytes, not the validator's paths
    [outcome] = _wait(pool, 1)
    assert (outcome.state, outcome.run_status) == ("finished", "succeeded"), outcome
    assert outcome.manifest_path is not None and outcome.manifest_path.parent.parent == tmp_path / "runs"
    submission = read_manifest(outcome.manifest_path).submission
    assert submission.architecture_zip_sha256 == canonical_sha and submission.kind == "training_for_arch"
    assert list((ray_cluster.cache_dir / "ray-scratch").iterdir()) == []
    assert pool._held == {} and pool.in_flight() == []


# -- paired re-measurements ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Pair:
    """examples/tiny trained twice in process: the model (held-out seed 11), the challenger (12)."""

    zip_path: Path
    zip_sha256: str
    runs: Path
    model: RunManifest
    challenger: RunManifest


@pytest.fixture(scope="module")
def paired_runs(tmp_path_factory, data_dir) -> _Pair:
    from prism.evaluator.host import evaluate
    from prism.profiles import load_profile

    root = tmp_path_factory.mktemp("ray-paired")
    zip_path = root / "tiny.zip"
    sha = pack_to(ROOT / "examples" / "tiny", zip_path)
    common = dict(profile=load_profile(str(TINY)), data_dir=data_dir, out_dir=root / "runs",
                  recipe_mode="reference", progress=False, calibration_dir=root / "cal")  # fmt: skip
    (model,) = evaluate(zip_path, heldout_seed=11, **common)
    (challenger,) = evaluate(zip_path, heldout_seed=12, **common)
    assert model.status.state == challenger.status.state == "succeeded"
    return _Pair(zip_path, sha, root / "runs", model, challenger)


def _copy_run(pair: _Pair, run: RunManifest, store: Path, *, weights: bool) -> Path:
    """The files of ``run`` a paired task names, copied into a store of the test's own."""
    target = store / run.run_id
    (target / "weights").mkdir(parents=True)
    shutil.copyfile(pair.runs / run.run_id / MANIFEST_FILENAME, target / MANIFEST_FILENAME)
    if weights:
        shutil.copyfile(ray_paired.weights_path(pair.runs / run.run_id), ray_paired.weights_path(target))
    return target / MANIFEST_FILENAME


def _paired_task(pair: _Pair, tmp_path: Path, data_dir: Path, *, weights: bool = True) -> EvaluationTask:
    """Re-measure the model run on the challenger's windows, from copies the test may delete."""
    m, c = pair.model, pair.challenger
    store = tmp_path / "store"
    store.mkdir(parents=True, exist_ok=True)
    zip_path = store / f"{pair.zip_sha256}.zip"
    shutil.copyfile(pair.zip_path, zip_path)
    key = RunKey(zip_sha256=pair.zip_sha256, profile=c.profile.name, profile_version=c.profile.version,
                 regime=c.regime.name, seed=c.seed, recipe_mode="reference")  # fmt: skip
    request = EvalRequest(zip_sha256=pair.zip_sha256, recipe_mode="reference", regime=c.regime.name, seed=c.seed,
                          run_id=c.run_id, model_zip_sha256=pair.zip_sha256, model_recipe_mode="reference",
                          model_run_id=m.run_id)  # fmt: skip
    job = PairedJob(request=request, profile_key=c.comparability.profile_key, model_zip_path=zip_path,
                    model_manifest_path=_copy_run(pair, m, store, weights=weights),
                    challenger_manifest_path=_copy_run(pair, c, store, weights=False))  # fmt: skip
    return EvaluationTask(key=key, zip_path=zip_path, profile=str(TINY), data_dir=data_dir,
                          runs_dir=tmp_path / "runs", calibration_dir=tmp_path / "calibration", paired=job)  # fmt: skip


@pytest.mark.slow
def test_a_paired_remeasurement_travels_and_gives_the_local_nats_bit_for_bit(
    connect, ray_cluster, data_dir, paired_runs, tmp_path
) -> None:
    from prism.evaluator.remeasure import remeasure
    from prism.profiles import load_profile

    pair = paired_runs
    pool = connect(data_dir)
    task = _paired_task(pair, tmp_path, data_dir)
    assert pool.submit(task)
    [flying] = pool.in_flight()
    assert flying.paired == task.paired
    remove_tree(tmp_path / "store")  # the node got the bytes, not the validator's paths
    [outcome] = _wait(pool, 1, timeout=180)
    assert (outcome.state, outcome.code) == ("finished", None), outcome
    assert outcome.paired == task.paired and outcome.key == task.key  # in the validator's terms
    assert outcome.worker and outcome.worker.startswith("ray node")
    assert outcome.manifest_path is None and not (tmp_path / "runs").exists()  # no run dir shipped back
    windows, own = (
        json.loads((pair.runs / run.run_id / str(run.artifacts.window_losses)).read_text())
        for run in (pair.challenger, pair.model)
    )
    assert list(outcome.window_bytes) == windows["window_bytes"]
    assert list(outcome.nats) != own["nats"]  # the challenger's windows, not the model's own
    local = remeasure(
        model_zip=pair.zip_path, model_manifest=pair.model, model_run_dir=pair.runs / pair.model.run_id,
        challenger=pair.challenger, profile=load_profile(str(TINY)), data_dir=data_dir, log_dir=tmp_path / "local",
    )  # fmt: skip
    assert local.failure is None and outcome.nats == local.nats  # the same measurement, bit for bit
    assert list((ray_cluster.cache_dir / "ray-scratch").iterdir()) == []
    assert len(pool.free_slots()) == 2 and pool.in_flight() == [] and pool._held == {}


def _paired_node_call(task: EvaluationTask, files: dict[str, bytes], payload: ray_paired.PairedPayload):
    wanted = ray_node.WorkerRequirements(
        data_dir=task.data_dir, data_fingerprint=ray_node.data_fingerprint(task.data_dir),
        evaluator_version=ray_node.evaluator_version(), code_sha256=ray_node.code_fingerprint(),
        torch_version=ray_node.torch_version(), isolation=ray_node.isolation_mode(),
    )  # fmt: skip
    result_json, archive = ray_node.run_on_node(
        task.model_dump_json(), files["zip"], wanted.model_dump_json(), 1 << 20, payload.model_dump_json(),
        files["model"], files["weights"], files["challenger"],
    )  # fmt: skip
    assert archive == b""
    return ray_node.NodeResult.model_validate_json(result_json).outcome


@pytest.mark.slow
def test_paired_files_that_differ_from_what_the_validator_read_are_refused(
    connect, data_dir, paired_runs, tmp_path
) -> None:
    task = _paired_task(paired_runs, tmp_path, data_dir)
    job = task.paired
    assert job is not None
    weights = ray_paired.weights_path(job.model_manifest_path.parent).read_bytes()
    files = {"zip": job.model_zip_path.read_bytes(), "model": job.model_manifest_path.read_bytes(),
             "weights": weights, "challenger": job.challenger_manifest_path.read_bytes()}  # fmt: skip
    payload = ray_paired.PairedPayload(
        model_manifest=ray_paired.ShippedFile.of(files["model"]), weights=ray_paired.ShippedFile.of(weights),
        challenger_manifest=ray_paired.ShippedFile.of(files["challenger"]),
    )  # fmt: skip
    flipped = bytes([weights[-1] ^ 1])
    for name, changed in (("weights", weights[:-1] + flipped), ("challenger", files["challenger"] + b" ")):
        outcome = _paired_node_call(task, files | {name: changed}, payload)  # changed on the way
        assert (outcome.state, outcome.code, outcome.paired) == ("infra_fault", "ray.payload_mismatch", job)
        assert ray_paired.ShippedFile.of(files[name]).sha256 in (outcome.message or "")
    scratch = Path(os.environ["PRISM_CACHE_DIR"]) / "ray-scratch"
    assert not scratch.exists() or list(scratch.iterdir()) == []
    # on the validator: weights gone from the store, or over the bound, fail before any Ray task
    pool = connect(data_dir, check_nodes=False, max_payload_bytes=len(weights) - 1)
    assert pool.submit(_paired_task(paired_runs, tmp_path / "gone", data_dir, weights=False))
    assert pool.submit(task)
    [gone, big] = pool.poll()
    assert (gone.state, gone.code, gone.paired is not None) == ("infra_fault", "paired.no_weights", True)
    assert (big.state, big.code, big.paired) == ("infra_fault", "ray.payload_too_large", job)
    assert str(len(weights)) in (big.message or "") and pool._held == {}  # the ZIP was let go again


# -- without a cluster -------------------------------------------------------------------------


def _run_dir(root: Path) -> Path:
    run = root / "run-0123456789abcdef01234567"
    (run / "spec").mkdir(parents=True)
    (run / "spec" / "run_spec.json").write_text("{}", encoding="utf-8")
    (run / "weights.bin").write_bytes(os.urandom(4096))
    (run / "sandbox_out").mkdir()
    (run / "sandbox_out" / "escape").symlink_to("/etc/passwd")  # what sandboxed code may leave
    (run / "spec").chmod(0o555)
    return run


def test_a_run_dir_travels_as_a_deterministic_tar_without_links(tmp_path) -> None:
    run = _run_dir(tmp_path / "node")
    first = pack_run_dir(run)
    os.utime(run / "weights.bin", (0, 12345))
    assert pack_run_dir(run) == first  # same contents, same bytes (no times, owners)
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        assert [m.name for m in tar] == ["sandbox_out", "spec", "spec/run_spec.json", "weights.bin"]
    local = unpack_run_dir(first, tmp_path / "store", run.name)
    assert local == tmp_path / "store" / run.name
    assert (local / "weights.bin").read_bytes() == (run / "weights.bin").read_bytes()
    assert not (local / "sandbox_out" / "escape").exists() and not (local / "spec").stat().st_mode & 0o200
    assert unpack_run_dir(first, tmp_path / "store", run.name) == local  # a second copy replaces the first
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [run.name]
    with pytest.raises(InfrastructureFault) as big:
        pack_run_dir(run, max_bytes=1000)
    assert big.value.code == "ray.result_too_large"


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


@pytest.mark.parametrize("name,kind", [("../outside", tarfile.REGTYPE), ("/tmp/abs", tarfile.REGTYPE),
                                       ("link", tarfile.SYMTYPE), ("dev", tarfile.CHRTYPE)])  # fmt: skip
def test_an_archive_that_escapes_or_holds_links_is_refused(tmp_path, name, kind) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, "/etc/passwd"
    with pytest.raises(InfrastructureFault) as refused:
        unpack_run_dir(_tar((tarfile.TarInfo("ok.txt"), b"fine"), (info, b"x")), tmp_path / "store", "run-x")
    assert refused.value.code == "ray.result_corrupt"
    assert list((tmp_path / "store").iterdir()) == [] and not (tmp_path / "outside").exists()


def _node_call(
    task: EvaluationTask, zip_bytes: bytes, fingerprint: str, code: str | None = None
) -> ray_node.NodeResult:
    wanted = ray_node.WorkerRequirements(
        data_dir=task.data_dir, data_fingerprint=fingerprint, evaluator_version=ray_node.evaluator_version(),
        code_sha256=code or ray_node.code_fingerprint(), torch_version=ray_node.torch_version(),
        isolation=ray_node.isolation_mode(),
    )  # fmt: skip
    result_json, archive = ray_node.run_on_node(
        task.model_dump_json(), zip_bytes, wanted.model_dump_json(), 1 << 20
    )
    assert archive == b""
    return ray_node.NodeResult.model_validate_json(result_json)


def test_a_node_checks_the_zip_and_the_data_before_running(tmp_path, data_dir) -> None:
    task = _task(tmp_path, data_dir, "gpt")
    right = ray_node.data_fingerprint(data_dir)
    tampered = _node_call(task, task.zip_path.read_bytes() + b"\0", right).outcome
    assert (tampered.state, tampered.code) == ("infra_fault", "ray.zip_mismatch")
    assert task.key.zip_sha256 in (tampered.message or "")
    other = _node_call(task, task.zip_path.read_bytes(), "f" * 64).outcome
    assert (other.state, other.code) == ("infra_fault", "ray.data_mismatch")
    assert right in (other.message or "") and "f" * 64 in (other.message or "")
    older = _node_call(task, task.zip_path.read_bytes(), right, code="0" * 64).outcome
    assert (older.state, older.code) == ("infra_fault", "ray.version_mismatch")
    assert ray_node.code_fingerprint()[:16] in (older.message or "")
    scratch = Path(os.environ["PRISM_CACHE_DIR"]) / "ray-scratch"
    assert not scratch.exists() or list(scratch.iterdir()) == []


def test_a_node_checks_a_training_variants_canonical_zip(tmp_path, data_dir) -> None:
    task = _task(tmp_path, data_dir, "gpt_recipe")
    canonical = tmp_path / "gpt-canonical.zip"
    pack_to(ROOT / "examples" / "gpt", canonical)
    task = task.model_copy(update={"architecture_zip_path": canonical})
    data = canonical.read_bytes()
    wanted = ray_node.WorkerRequirements(
        data_dir=data_dir, data_fingerprint=ray_node.data_fingerprint(data_dir),
        evaluator_version=ray_node.evaluator_version(), code_sha256=ray_node.code_fingerprint(),
        torch_version=ray_node.torch_version(), isolation=ray_node.isolation_mode(),
    ).model_dump_json()  # fmt: skip
    described, tampered = ray_paired.ShippedFile.of(data).model_dump_json(), data[:-1] + bytes([data[-1] ^ 1])
    for kwargs in ({}, {"architecture_json": described, "architecture_zip": tampered}):  # none, or changed
        result_json, archive = ray_node.run_on_node(
            task.model_dump_json(), task.zip_path.read_bytes(), wanted, 1 << 20, **kwargs
        )
        outcome = ray_node.NodeResult.model_validate_json(result_json).outcome
        assert (outcome.state, outcome.code, archive) == ("infra_fault", "ray.zip_mismatch", b""), outcome
        assert "architecture ZIP" in (outcome.message or "")
    scratch = Path(os.environ["PRISM_CACHE_DIR"]) / "ray-scratch"
    assert not scratch.exists() or list(scratch.iterdir()) == []


def test_prism_works_without_ray_and_the_backend_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
        "import prism.workers, prism.workers.ray_pool as rp\n"
        "from prism.errors import OperatorError\n"
        "try:\n"
        "    rp.RayPool.connect('127.0.0.1:1', device='cpu', data_dir='.', data_fingerprint='0' * 64)\n"
        "except OperatorError as exc:\n"
        "    print(exc.code, exc.message)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.startswith("ray.not_installed") and "prism-subnet[ray]" in out.stdout, out.stderr


def test_an_address_nobody_serves_is_a_clear_error_at_once(tmp_path, data_dir) -> None:
    pytest.importorskip("ray", reason="the Ray backend needs pip install -e '.[ray]'")
    from prism.workers.ray_pool import RayPool

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    for address, code in ((f"127.0.0.1:{port}", "ray.unreachable"), ("no-port", "ray.bad_address")):
        with pytest.raises(OperatorError) as refused:
            RayPool.connect(address, device="cpu", data_dir=data_dir)
        assert refused.value.code == code and address in refused.value.message
    assert time.monotonic() - started < 30
