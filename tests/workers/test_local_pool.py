"""The local worker pool: real worker processes running real sandboxed evaluations."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from prism.store import RunKey
from prism.submission import pack_to
from prism.workers.local import LocalPool
from prism.workers.slots import make_slots
from prism.workers.tasks import EvaluationTask

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "validator" / "tiny_profile.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, text_corpus_builder) -> Path:
    texts = [" ".join(["the pool runs two evaluations at once"] * 40) + f" {i}" for i in range(300)]
    return text_corpus_builder(texts, tmp_path_factory.mktemp("pool-data"), shard_tokens=1 << 15)


def _task(tmp_path: Path, data_dir: Path, example: str, seed: int = 7) -> EvaluationTask:
    zip_path = tmp_path / f"{example}.zip"
    sha = pack_to(ROOT / "examples" / example, zip_path)
    key = RunKey(
        zip_sha256=sha,
        profile="test_tiny",
        profile_version=1,
        regime="tiny",
        seed=seed,
        recipe_mode="reference",
    )
    return EvaluationTask(key=key, zip_path=zip_path, profile=str(TINY), data_dir=data_dir,
                          runs_dir=tmp_path / "runs", calibration_dir=tmp_path / "calibration")  # fmt: skip


def _wait(pool: LocalPool, n: int, timeout: float = 300) -> list:
    outcomes, deadline = [], time.monotonic() + timeout
    while len(outcomes) < n and time.monotonic() < deadline:
        outcomes += pool.poll()
        time.sleep(0.2)
    return outcomes


def test_two_workers_run_two_evaluations_at_once(tmp_path, data_dir) -> None:
    pool = LocalPool(make_slots("cpu", workers=2), tmp_path / "workers")
    first, second = _task(tmp_path, data_dir, "gpt"), _task(tmp_path, data_dir, "mixer")
    assert pool.submit(first) and pool.submit(second)
    assert not pool.submit(_task(tmp_path, data_dir, "gpt", seed=8))  # both slots busy
    assert len(pool.in_flight()) == 2 and pool.free_slots() == []
    outcomes = _wait(pool, 2)
    assert {o.state for o in outcomes} == {"finished"}, outcomes
    assert {o.run_status for o in outcomes} == {"succeeded"}
    assert all(o.manifest_path and o.manifest_path.is_file() and o.heldout_bpb for o in outcomes)
    assert len({o.worker for o in outcomes}) == 2  # two worker processes
    assert len(pool.free_slots()) == 2


def _processes_naming(marker: str) -> dict[str, str]:
    """pid -> command line of every other process whose command line contains ``marker``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found[entry.name] = cmdline.replace(b"\0", b" ").decode(errors="replace")[:300]
    return found


def test_shutdown_kills_workers_and_their_sandboxes(tmp_path, data_dir) -> None:
    pool = LocalPool(make_slots("cpu", workers=2), tmp_path / "workers")
    tasks = [_task(tmp_path, data_dir, "gpt"), _task(tmp_path, data_dir, "mixer")]
    for task in tasks:
        assert pool.submit(task)
    time.sleep(8)  # both are inside their sandboxes now
    marker = str(tmp_path)
    keys = pool.shutdown()
    assert sorted(k.zip_sha256 for k in keys) == sorted(t.key.zip_sha256 for t in tasks)
    # Killed processes leave /proc once their teardown ends (a torch process under load takes a
    # while to unmap): wait for that, but a survivor is still one after 20 s.
    deadline = time.monotonic() + 20.0
    while (alive := _processes_naming(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive == {}  # no worker, runner or held-out process survived
    assert pool.poll() == []


def test_cpu_slots_share_the_cores_and_gpu_slots_name_their_device() -> None:
    cpu = make_slots("cpu", workers=2)
    assert len(cpu) == 2 and all(s.cpus for s in cpu)
    gpu = make_slots("cuda", workers=2, devices="3,5")
    assert [s.index for s in gpu] == [3, 5]
    assert gpu[0].environment(gpu) == {"CUDA_VISIBLE_DEVICES": "3,5"}
    with pytest.raises(Exception, match="duplicate"):
        make_slots("cuda", workers=2, devices="1,1")
