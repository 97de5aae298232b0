"""Real torch inside the sandbox: ``torch.os.system`` escapes and torchrun's loopback rendezvous."""

from __future__ import annotations

import pytest

DDP_SCRIPT = """
import os
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
value = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(value)
print(f"RANK {dist.get_rank()} OF {dist.get_world_size()} SUM {value.item():.1f}", flush=True)
dist.destroy_process_group()
"""


def test_torch_os_system_cannot_touch_the_host(run_script, tmp_path):
    target = tmp_path.parent / f"{tmp_path.name}-torch-escape"
    target.mkdir()
    try:
        result, log = run_script(
            f"""
            import torch
            print("SYSTEM", torch.os.system("touch {target}/pwned && echo touched"))
            print("LISTED", torch.os.listdir("/"))
            print("MATH", float(torch.ones(3).sum()))
            """,
            memory_bytes=1_500_000_000,
        )
        assert result.exit_code == 0, log
        assert "MATH 3.0" in log  # torch itself works inside
        assert list(target.iterdir()) == []  # the host dir is untouched
    finally:
        target.rmdir()


@pytest.mark.slow
def test_torchrun_two_ranks_rendezvous_on_loopback(run_script):
    result, log = run_script(
        f"""
        import runpy, sys
        sys.argv = ["torchrun", "--standalone", "--nnodes=1", "--nproc-per-node=2", "/job/ddp.py"]
        open("/tmp/ddp.py", "w").write({DDP_SCRIPT!r})
        sys.argv[-1] = "/tmp/ddp.py"
        runpy.run_module("torch.distributed.run", run_name="__main__")
        """,
        memory_bytes=3_000_000_000,
        pids=256,
        wall_s=120.0,
    )
    assert result.exit_code == 0, log
    assert "RANK 0 OF 2 SUM 3.0" in log
    assert "RANK 1 OF 2 SUM 3.0" in log
