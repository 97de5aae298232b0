"""The evaluator's host side never imports torch (nor a submission): checked by running it with
torch blocked, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

HOST_MODULES = [
    "prism.evaluator.host", "prism.evaluator.plan", "prism.evaluator.recipe", "prism.evaluator.feed",
    "prism.evaluator.train_phase", "prism.evaluator.budgets", "prism.evaluator.calibration",
    "prism.evaluator.heldout_phase", "prism.evaluator.heldout_host", "prism.evaluator.replay",
    "prism.evaluator.spots", "prism.evaluator.verdicts", "prism.evaluator.remeasure", "prism.evaluator.identity_check",
    "prism.evaluator.manifest_build", "prism.evaluator.artifacts", "prism.evaluator.devices",
    "prism.evaluator.sandbox", "prism.commands.eval", "prism.commands.eval_report", "prism.beacon",
    "prism.validator", "prism.store", "prism.workers.local", "prism.workers.tasks", "prism.workers.worker",
]  # fmt: skip

BLOCKER = """
import importlib, importlib.abc, json, sys

class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError(f"the host must not import {name}")
        return None

sys.meta_path.insert(0, Blocked())
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "torch")))
"""


def test_host_side_modules_import_without_torch() -> None:
    out = subprocess.run(
        [sys.executable, "-c", BLOCKER, json.dumps(HOST_MODULES)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == []


def test_the_blocker_really_blocks() -> None:
    out = subprocess.run(
        [sys.executable, "-c", BLOCKER, json.dumps(["prism.evaluator.loop"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "must not import torch" in out.stderr
