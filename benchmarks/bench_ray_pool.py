"""Ray backend overhead on this machine: a local one-node cluster against an in-process run.

Measures what the Ray backend costs on top of an evaluation: starting a head, joining it (with
the node probe), a task the node refuses before any training (the fixed cost of one Ray task:
a fresh worker process, imports, the node checks), and one tiny evaluation (examples/gpt at the
test_tiny profile) through Ray next to the same run in process (``run_task``). Also the idle
footprint of the cluster (resident memory of its processes, CPU over 10 s) and the size of the
archive a run ships back.

    python benchmarks/bench_ray_pool.py [--num-cpus 2]

Needs ``pip install -e '.[ray]'`` and bubblewrap. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import prepare_text_corpus  # noqa: E402

from prism.store import RunKey  # noqa: E402
from prism.submission import pack_to  # noqa: E402
from prism.workers.ray_local import LocalRayHead, marked_pids  # noqa: E402
from prism.workers.ray_pool import RayPool  # noqa: E402
from prism.workers.tasks import EvaluationTask, TaskOutcome, run_task  # noqa: E402

TINY = ROOT / "tests" / "validator" / "tiny_profile.yaml"


def _task(work: Path, data_dir: Path, runs: str) -> EvaluationTask:
    zip_path = work / "gpt.zip"
    sha = pack_to(ROOT / "examples" / "gpt", zip_path)
    key = RunKey(zip_sha256=sha, profile="test_tiny", profile_version=1, regime="tiny", seed=7,
                 recipe_mode="reference")  # fmt: skip
    return EvaluationTask(key=key, zip_path=zip_path, profile=str(TINY), data_dir=data_dir,
                          runs_dir=work / runs, calibration_dir=work / "calibration")  # fmt: skip


def _one(pool: RayPool, task: EvaluationTask, timeout: float = 600) -> tuple[float, TaskOutcome]:
    started = time.monotonic()
    assert pool.submit(task)
    while time.monotonic() - started < timeout:
        done = pool.poll()
        if done:
            return time.monotonic() - started, done[0]
        time.sleep(0.05)
    raise TimeoutError(task.label)


def _footprint(marker: str, seconds: float = 10.0) -> dict[str, float]:
    def ticks_and_rss() -> tuple[int, int]:
        ticks = rss = 0
        for pid in marked_pids(marker):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                rss += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            except OSError:
                continue
            ticks += int(fields[11]) + int(fields[12])
        return ticks, rss

    before, _ = ticks_and_rss()
    time.sleep(seconds)
    after, rss = ticks_and_rss()
    return {"idle_cpu_percent_of_one_core": round(100 * (after - before) / os.sysconf("SC_CLK_TCK") / seconds, 1),
            "idle_rss_mib": round(rss / 2**20)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="prism-bench-ray-", dir="/tmp"))
    texts = [" ".join(["ray runs evaluations on every node"] * 40) + f" {i}" for i in range(300)]
    data_dir = prepare_text_corpus(texts, work / "data", shard_tokens=1 << 15)
    result: dict[str, object] = {"num_cpus": args.num_cpus}
    started = time.monotonic()
    with LocalRayHead.start(work / "head", num_cpus=args.num_cpus) as head:
        result["head_start_s"] = round(time.monotonic() - started, 2)
        result |= _footprint(str(head.cache_dir))
        started = time.monotonic()
        pool = RayPool.connect(head.address, device="cpu", data_dir=data_dir, workers=1)
        result["connect_and_probe_s"] = round(time.monotonic() - started, 2)
        try:
            refused = _task(work, data_dir, "runs-refused").model_copy(update={"data_fingerprint": "0" * 64})
            result["refused_task_roundtrip_s"] = round(_one(pool, refused)[0], 2)
            local_started = time.monotonic()
            run_task(_task(work, data_dir, "runs-local"))
            result["tiny_run_in_process_s"] = round(time.monotonic() - local_started, 2)
            seconds, outcome = _one(pool, _task(work, data_dir, "runs-ray"))
            if outcome.manifest_path is None:
                raise RuntimeError(f"the run through Ray did not finish: {outcome}")
            result["tiny_run_through_ray_s"] = round(seconds, 2)
            run_dir = outcome.manifest_path.parent
            result["run_dir_bytes_shipped"] = sum(p.stat().st_size for p in run_dir.rglob("*") if p.is_file())
        finally:
            pool.shutdown()
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
