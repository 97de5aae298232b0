"""Shared test configuration. Area-specific fixtures live in tests/<area>/conftest.py."""

from __future__ import annotations

import os

# Keep torch from oversubscribing the two cores CI has when several test processes run.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("WANDB_MODE", "offline")
