"""`prism leaderboard` in a subprocess, on a store filled the way a validator fills it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from prism_test_manifests import PROFILE, PROFILE_VERSION, REGIMES, SEEDS, full_grid, grid, sha

from prism.manifest import write_manifest
from prism.scoring import ScoringPolicy, compute_weights
from prism.store import RunKey, Store

FAMILY_A, FAMILY_B = "a" * 64, "b" * 64


def _submit(
    store: Store, tmp: Path, label: str, hotkey: str, block: int, kind: str, manifests, **ids
) -> None:
    store.upsert_submission(hotkey=hotkey, zip_sha256=sha(label), commit_block=block, kind=kind, **ids)
    store.record_intake(sha(label), ok=True)
    keys = [
        RunKey(zip_sha256=sha(label), profile=PROFILE, profile_version=PROFILE_VERSION, regime=m.regime.name,
               seed=m.seed, recipe_mode=m.recipe_mode)
        for m in manifests
    ]  # fmt: skip
    store.enqueue_runs(keys)
    for key, manifest in zip(keys, manifests, strict=True):
        path = write_manifest(manifest, tmp / "runs" / manifest.run_id)
        store.finish_run(key, path, hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("board")
    a = {"family": FAMILY_A, "version": "a-v1"}
    with Store.open(tmp / "state") as store:
        _submit(
            store,
            tmp,
            "alice",
            "alice",
            10,
            "architecture_only",
            full_grid("alice", grid((1.3, 1.3), (1.2, 1.2)), **a),
        )
        _submit(
            store,
            tmp,
            "bob",
            "bob",
            11,
            "architecture_only",
            full_grid("bob", grid((1.4, 1.4), (1.3, 1.3)), family=FAMILY_B, version="b-v1"),
        )
        _submit(store, tmp, "erin", "erin", 12, "training_for_arch",
                full_grid("erin", grid((1.2, 1.2), (1.1, 1.1)), mode="submitted", **a),
                target_architecture_id=FAMILY_A, training_fingerprint=sha("erin-train"))  # fmt: skip
        policy = ScoringPolicy(
            profile=PROFILE, profile_version=PROFILE_VERSION, required_regimes=REGIMES, required_seeds=SEEDS
        )
        records = store.records_for_scoring(PROFILE, PROFILE_VERSION)
        result = compute_weights(records, policy, {"alice": 3, "bob": 4, "erin": 9}, block=77)
        store.record_standings(result.leaderboard)
        store.record_ownership_events(result.events)
        store.record_weights(77, result.weights, profile_key=policy.profile_key, rules_version=policy.version)
    return tmp / "state"


def _prism(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "prism.cli", "leaderboard", *args], capture_output=True, text=True, timeout=120
    )


def test_leaderboard_json_has_the_expected_rows(filled: Path) -> None:
    out = _prism("--db", str(filled), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    families = [
        (f["family_id"], f["owner_hotkey"], f["canonical_version_id"], f["leader"]) for f in data["families"]
    ]
    assert families == [(FAMILY_A, "alice", "a-v1", 1), (FAMILY_B, "bob", "b-v1", 0)]
    assert data["families"][0]["heldout_bpb"] == pytest.approx(1.25)
    assert data["families"][0]["runs"] == 8  # alice's 4 reference runs + erin's 4 on family A
    assert [(v["hotkey"], v["best"]) for v in data["variants"]] == [("erin", 1)]
    assert data["variants"][0]["improvement_bpb"] == pytest.approx(0.1)
    assert data["weights"]["block"] == 77
    assert data["weights"]["weights"] == pytest.approx({"3": 0.6, "9": 0.4})
    assert data["submissions"] == 3
    assert [e["kind"] for e in data["events"]][:3] == [
        "family_founded",
        "canonical_version",
        "architecture_lead",
    ]


def test_leaderboard_table_shows_families_variants_and_weights(filled: Path) -> None:
    out = _prism("--db", str(filled))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    row_a = next(line for line in lines if FAMILY_A[:12] in line and "alice" in line)
    assert "1.2500" in row_a and "a-v1" in row_a and "*" in row_a
    assert any(FAMILY_B[:12] in line and "bob" in line and "1.3500" in line for line in lines)
    assert any("erin" in line and "0.1000" in line and "yes" in line for line in lines)
    assert "Weights at block 77 (test_proxy@1)" in out.stdout
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in lines if line.count("│") == 3]
    assert ["3", "0.600000"] in cells and ["9", "0.400000"] in cells


def test_leaderboard_on_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    out = _prism("--db", str(tmp_path / "nothing-here"))
    assert out.returncode == 1
    assert "store.missing" in out.stderr and "nothing-here" in out.stderr
    assert not (tmp_path / "nothing-here").exists()


def test_render_leaderboard_in_process_for_localnet(filled: Path) -> None:
    from rich.console import Console

    from prism.commands.leaderboard import render_leaderboard

    console = Console(record=True, width=140)
    with Store.open(filled, create=False) as store:
        render_leaderboard(store, console)
    text = console.export_text()
    assert "alice" in text and "erin" in text and "Weights at block 77" in text
