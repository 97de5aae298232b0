"""`prism serve` as a subprocess on 127.0.0.1, over a store filled the way a validator fills it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from leaderboard_helpers import HOSTILE_HOTKEY, build_scored_store

from prism.leaderboard.bundle import build_family_zip, read_family_zip
from prism.manifest import RunManifest
from prism.store import Store

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _json(url: str) -> Any:
    status, _, body = _get(url)
    assert status == 200, body
    return json.loads(body)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


def test_api_shows_families_variants_and_weights_from_the_store(scored_store, serve) -> None:
    url = serve(scored_store["state"]).url
    fams = scored_store["families"]
    board = _json(f"{url}/api/v1/leaderboard")
    rows = [
        (f["family_id"], f["owner_hotkey"], f["canonical_version_id"], f["leader"]) for f in board["families"]
    ]
    assert rows == [(fams["mixer"], "5Mixer", "ver-mixer-1", True), (fams["gpt"], HOSTILE_HOTKEY, "ver-gpt-1", False),
                    (fams["gone"], "5Gone", "ver-gone-1", False)]  # fmt: skip
    mixer = board["families"][0]
    assert mixer["heldout_bpb"] == pytest.approx((1.30 + 1.31 + 1.20 + 1.21) / 4)
    # the standings carry the lead contest's stderr; these manifests carry no compute: absent, never invented
    assert mixer["lead_stderr_bpb"] > 0 and mixer["compute_ratio"] is None
    assert [(v["hotkey"], v["best"], v["qualifies"]) for v in board["variants"]] == [("5Recipe", True, True)]
    assert board["variants"][0]["improvement_bpb"] == pytest.approx(0.1025)
    assert board["weights"]["block"] == 80 and board["submissions"]["total"] == 4
    shares = {w["hotkey"]: w["weight"] for w in board["weights"]["weights"]}
    assert shares == pytest.approx({"5Mixer": 0.6, "5Recipe": 0.4})
    history = _json(f"{url}/api/v1/weights?limit=5")
    assert [w["block"] for w in history] == [80, 40]
    assert [v["family_id"] for v in _json(f"{url}/api/v1/variants?family={fams['gpt']}")] == [fams["gpt"]]


def test_the_compute_ratio_is_the_mean_the_canonical_runs_record(tmp_path: Path, serve) -> None:
    if "compute" not in RunManifest.model_fields:
        pytest.skip("this PRISM's run manifests do not record the host-measured compute yet")
    store = build_scored_store(tmp_path, mixer_compute=[1.0, 1.2, 1.4, 1.6])
    url = serve(store["state"]).url
    families = {f["family_id"]: f for f in _json(f"{url}/api/v1/families")}
    assert families[store["families"]["mixer"]]["compute_ratio"] == pytest.approx(1.3)
    assert families[store["families"]["gpt"]]["compute_ratio"] is None  # its runs record none
    status, _, page = _get(url + "/")
    assert status == 200 and ">1.30<" in page.decode()


def test_code_zip_is_the_canonical_architecture_deterministically(scored_store, serve) -> None:
    url = serve(scored_store["state"]).url
    fam = scored_store["families"]["gpt"]
    info = _json(f"{url}/api/v1/families/{fam}")["family"]["code"]
    status, headers, first = _get(f"{url}{info['url']}")
    assert status == 200 and headers["Content-Type"] == "application/zip"
    _, _, second = _get(f"{url}{info['url']}")
    digest = hashlib.sha256(first).hexdigest()
    assert (
        first == second
        and digest == info["sha256"] == headers["X-PRISM-SHA256"]
        and len(first) == info["bytes"]
    )
    gpt = scored_store["submissions"]["gpt"]
    code, files = read_family_zip(first, family_id=fam)
    assert code.source_zip_sha256 == gpt.zip_sha256 and code.canonical_version_id == "ver-gpt-1"
    assert code.architecture_entrypoint == gpt.architecture_entrypoint
    assert sorted(code.architecture_files) == sorted(f for f in gpt.architecture_files if f != "src/model.py")
    assert code.support_files == ["src/train.py"]  # model.py imports recipe_for from the training module
    assert files == {name: gpt.files[name] for name in code.code_files()}
    # built from the same ZIP anywhere, the bundle has the same bytes
    again, _ = build_family_zip(gpt.zip_bytes, family_id=fam, canonical_version_id="ver-gpt-1",
                                owner_hotkey=HOSTILE_HOTKEY)  # fmt: skip
    assert again == first


def test_bad_requests_get_clear_json_errors(scored_store, serve) -> None:
    url = serve(scored_store["state"]).url
    fam = scored_store["families"]["gpt"]
    run_id = _json(f"{url}/api/v1/runs")[0]["run_id"]
    cases = {
        ("GET", "/api/v1/families/not%20an%20id"): (400, "serve.bad_family_id"),
        ("GET", "/families/%3Cscript%3E"): (400, "serve.bad_family_id"),
        ("GET", "/api/v1/families/fam-ffffffffffffffff"): (404, "serve.unknown_family"),
        ("GET", "/api/v1/families/fam-ffffffffffffffff/code.zip"): (404, "serve.unknown_family"),
        ("GET", "/api/v1/runs/..%2F..%2Fetc"): (400, "serve.bad_run_id"),
        ("GET", "/api/v1/runs/run-000000000000000000000000"): (404, "serve.unknown_run"),
        ("GET", f"/api/v1/runs/{run_id}/plots/plot"): (404, "serve.unknown_plot"),
        ("GET", "/api/v1/weights?limit=0"): (400, "serve.bad_limit"),
        ("GET", "/api/v1/weights?limit=abc"): (400, "serve.bad_limit"),
        ("GET", "/api/v1/variants?family=%00"): (400, "serve.bad_family_id"),
        ("POST", "/api/v1/leaderboard"): (405, "serve.method_not_allowed"),
        ("DELETE", f"/api/v1/families/{fam}"): (405, "serve.method_not_allowed"),
        ("GET", "/api/v2/anything"): (404, "serve.not_found"),
    }
    for (method, path), (status, code) in cases.items():
        got, headers, body = _get(url + path, method)
        assert (got, json.loads(body)["error"]["code"]) == (status, code), (method, path, body)
        assert headers["Content-Type"].startswith("application/json")
        assert "script-src" not in headers["Content-Security-Policy"]  # default-src 'none': no scripts


def test_a_family_whose_zip_is_gone_is_listed_without_code(scored_store, serve) -> None:
    url = serve(scored_store["state"]).url
    fam = scored_store["families"]["gone"]
    assert _json(f"{url}/api/v1/families/{fam}")["family"]["code"] is None
    status, _, body = _get(f"{url}/api/v1/families/{fam}/code.zip")
    assert status == 500 and json.loads(body)["error"]["code"] == "serve.bundle_failed"


def test_runs_and_manifests_are_served_as_recorded(scored_store, serve) -> None:
    url = serve(scored_store["state"]).url
    runs = _json(f"{url}/api/v1/runs?family={scored_store['families']['mixer']}")
    assert len(runs) == 4 and {r["regime"] for r in runs} == {"small", "large"}
    one = _json(f"{url}/api/v1/runs/{runs[0]['run_id']}")
    assert one["manifest"]["run_id"] == runs[0]["run_id"] and one["plots"] == {}
    status, _, raw = _get(f"{url}{runs[0]['manifest_url']}")
    recorded = Path(scored_store["state"].parent / "runs" / runs[0]["run_id"] / "prism_run_manifest.v1.json")
    assert status == 200 and raw == recorded.read_bytes()


def test_a_manifest_changed_after_recording_is_refused(tmp_path: Path, serve) -> None:
    store = build_scored_store(tmp_path)
    url = serve(store["state"]).url
    run = _json(f"{url}/api/v1/runs")[0]
    path = tmp_path / "runs" / run["run_id"] / "prism_run_manifest.v1.json"
    path.write_text(path.read_text().replace('"heldout_bpb": 1.', '"heldout_bpb": 0.'))
    status, _, body = _get(f"{url}/api/v1/runs/{run['run_id']}")
    assert status == 500 and json.loads(body)["error"]["code"] == "serve.manifest_changed"
    assert run["run_id"] not in [r["run_id"] for r in _json(f"{url}/api/v1/runs")]


def test_serving_never_writes_the_store(tmp_path: Path, serve) -> None:
    store = build_scored_store(tmp_path)
    state = store["state"]
    before = _tree_digest(state)
    served = serve(state)
    for path in ("/", "/api/v1/leaderboard", f"/families/{store['families']['gpt']}", "/api/v1/runs",
                 f"/api/v1/families/{store['families']['mixer']}/code.zip", "/api/v1/weights"):  # fmt: skip
        assert _get(served.url + path)[0] == 200, path
    assert served.stop() == 0
    after = _tree_digest(state)
    # SQLite's own coordination files of a WAL database appear beside it for any reader; the
    # write-ahead log stays empty: nothing was written.
    assert after.pop("validator.sqlite3-wal", EMPTY_SHA256) == EMPTY_SHA256
    after.pop("validator.sqlite3-shm", None)
    assert after == before  # the database and every blob, byte for byte; no other file added


def test_a_running_validator_keeps_writing_while_the_board_is_served(tmp_path: Path, serve) -> None:
    store = build_scored_store(tmp_path)
    served = serve(store["state"])
    assert _json(f"{served.url}/api/v1/weights")[0]["block"] == 80
    with Store.open(store["state"]) as writer:  # the validator's next weight set, while the server reads
        writer.record_weights(120, {2: 1.0}, profile_key="test_proxy@1", rules_version=1)
    latest = _json(f"{served.url}/api/v1/weights")[0]
    assert latest["block"] == 120 and latest["weights"] == [{"uid": 2, "hotkey": "5Mixer", "weight": 1.0}]


def test_serve_on_a_missing_store_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "prism.cli", "serve", "--db", str(tmp_path / "none"), "--port", "0"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 1 and "store.missing" in out.stderr
    assert not (tmp_path / "none").exists()


def test_pages_escape_what_miners_control(scored_store, serve) -> None:
    url = serve(scored_store["state"]).url
    for path in ("/", f"/families/{scored_store['families']['gpt']}"):
        status, headers, body = _get(url + path)
        page = body.decode()
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "<script" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;&quot;&#x27;&amp;&lt;img src=x" in page


def test_the_server_imports_neither_torch_nor_bittensor() -> None:
    code = ("import sys, prism.leaderboard.server, prism.leaderboard.fetch, prism.leaderboard.starter, "
            "prism.commands.serve, prism.commands.fetch_family; "
            "print(sorted(m for m in ('torch', 'bittensor') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_status_is_the_validators_own_file_read_by_the_shared_model(scored_store, serve) -> None:
    from prism.validator.status import EvaluationStats, InFlight, ValidatorStatus, write_status

    url = serve(scored_store["state"]).url
    assert _get(f"{url}/api/v1/status")[0] == 404  # nothing written yet: absent, never invented
    status = ValidatorStatus(
        hotkey="5Val", block=81, step=12, submissions=4, runs={"done": 7, "running": 1}, pending_runs=1,
        evaluation=EvaluationStats(backend="local", slots=2, in_flight=[InFlight(label="abc small/0", slots=["cpu:1"])],
                                   finished_runs=7, mean_run_s=41.5, max_concurrent=2),
        last_weights_block=80, weights_current=False, updated_at=1.0,
    )  # fmt: skip
    write_status(scored_store["state"], status)
    assert ValidatorStatus.model_validate(_json(f"{url}/api/v1/status")) == status
