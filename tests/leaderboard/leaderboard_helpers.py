"""Helpers for the leaderboard tests: validator stores, a real `prism serve`, a real headless Chromium.

Two kinds of store:

* ``scored_store``: filled the way a validator fills it (``Store`` API, real example ZIPs as
  blobs, manifests scored by ``compute_weights``), with literal metric values; fast.
* ``localnet_state``: the state directory of a real ``prism localnet`` run with the tiny test
  profile (three example miners, a validator that trained and scored them); slow. Set
  ``PRISM_TEST_LOCALNET_DIR`` to a finished localnet ``--dir`` to reuse one while iterating.

Chromium is driven over the DevTools protocol (aiohttp's websocket client), so no extra package
is needed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from prism.manifest import RunManifest, write_manifest
from prism.scoring import ScoringPolicy, compute_weights
from prism.store import RunKey, Store
from prism.submission import load_submission

REPO = Path(__file__).resolve().parents[2]
TINY_PROFILE = REPO / "tests" / "validator" / "tiny_profile.yaml"
CHROMIUM = Path("/usr/bin/chromium")
HOSTILE_HOTKEY = "<script>alert('owned')</script>\"'&<img src=x onerror=alert(1)>"
UIDS = {HOSTILE_HOTKEY: 1, "5Mixer": 2, "5Gone": 3, "5Recipe": 4}


def _load_manifest_builders() -> Any:
    if "prism_test_manifests" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "prism_test_manifests", REPO / "tests/scoring/manifests.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["prism_test_manifests"] = module
        spec.loader.exec_module(module)
    return sys.modules["prism_test_manifests"]


# --- a scored store (fast) ----------------------------------------------------------------------


def _for_zip(manifests: list[RunManifest], zip_sha256: str) -> list[RunManifest]:
    return [m.model_copy(update={"submission": m.submission.model_copy(update={"zip_sha256": zip_sha256})})
            for m in manifests]  # fmt: skip


def _submit(store: Store, runs_dir: Path, hotkey: str, block: int, zip_bytes: bytes | None, label: str,
            kind: str, manifests: list[RunManifest], **ids: Any) -> str:  # fmt: skip
    """One submission as the validator records it: blob, intake verdict, queued and finished runs."""
    sha = (
        hashlib.sha256(zip_bytes).hexdigest()
        if zip_bytes is not None
        else hashlib.sha256(label.encode()).hexdigest()
    )
    manifests = _for_zip(manifests, sha)
    path = store.put_blob(zip_bytes, expected_sha256=sha) if zip_bytes is not None else None
    store.upsert_submission(
        hotkey=hotkey, uid=UIDS[hotkey], zip_sha256=sha, commit_block=block, kind=kind, **ids
    )
    store.record_intake(sha, ok=True, zip_path=path)
    keys = [RunKey(zip_sha256=sha, profile=m.profile.name, profile_version=m.profile.version, regime=m.regime.name,
                   seed=m.seed, recipe_mode=m.recipe_mode) for m in manifests]  # fmt: skip
    store.enqueue_runs(keys)
    for key, manifest in zip(keys, manifests, strict=True):
        assert store.claim_next_run() == key
        written = write_manifest(manifest, runs_dir / manifest.run_id)
        store.finish_run(key, written, hashlib.sha256(written.read_bytes()).hexdigest())
        store.set_identity(
            sha, family_id=manifest.submission.family_id, version_id=manifest.submission.version_id
        )
    return sha


def _with_compute(manifests: list[RunManifest], ratios: list[float] | None) -> list[RunManifest]:
    """The host's compute record (manifests of PRISMs that measure compute) with these ratios."""
    if ratios is None:
        return manifests
    return [RunManifest.model_validate({**m.model_dump(), "compute": {"kind": "cpu_s", "measured_s": 10.0 * r,
            "expected_s": 10.0, "ratio": r}}) for m, r in zip(manifests, ratios, strict=True)]  # fmt: skip


def build_scored_store(root: Path, mixer_compute: list[float] | None = None) -> dict[str, Any]:
    """Three families (mixer leads, GPT by a hostile hotkey, one without its blob) and a GPT variant.

    ``mixer_compute``: compute ratios recorded in the mixer's four manifests (none by default).
    """
    b = _load_manifest_builders()
    gpt, mixer, recipe = (
        load_submission(REPO / "examples" / name) for name in ("gpt", "mixer", "gpt_recipe")
    )
    runs = root / "runs"
    with Store.open(root / "state") as store:
        g = {"family": "fam-gpt0000000000001", "version": "ver-gpt-1"}
        m = {"family": "fam-mixer00000000001", "version": "ver-mixer-1"}
        gone = {"family": "fam-gone000000000001", "version": "ver-gone-1"}
        shas = {
            "gpt": _submit(store, runs, HOSTILE_HOTKEY, 10, gpt.zip_bytes, "gpt", "full",
                           b.full_grid("gpt", b.grid((1.40, 1.42), (1.30, 1.32)), kind="full", **g)),
            "mixer": _submit(store, runs, "5Mixer", 11, mixer.zip_bytes, "mixer", "architecture_only",
                             _with_compute(b.full_grid("mixer", b.grid((1.30, 1.31), (1.20, 1.21)),
                                                       kind="architecture_only", **m), mixer_compute)),
            "gone": _submit(store, runs, "5Gone", 12, None, "gone", "architecture_only",
                            b.full_grid("gone", b.grid((1.5, 1.5), (1.4, 1.4)), kind="architecture_only", **gone)),
            "recipe": _submit(store, runs, "5Recipe", 13, recipe.zip_bytes, "recipe", "training_for_arch",
                              b.full_grid("recipe", b.grid((1.30, 1.31), (1.20, 1.22)), mode="submitted",
                                          kind="training_for_arch", **g),
                              target_architecture_id=g["family"], training_fingerprint=recipe.training_fingerprint),
        }  # fmt: skip
        policy = ScoringPolicy(profile=b.PROFILE, profile_version=b.PROFILE_VERSION, required_regimes=b.REGIMES,
                               required_seeds=b.SEEDS)  # fmt: skip
        for block in (40, 80):
            result = compute_weights(
                store.records_for_scoring(b.PROFILE, b.PROFILE_VERSION), policy, UIDS, block
            )
            store.record_standings(result.leaderboard)
            store.record_ownership_events(result.events)
            store.record_weights(
                block, result.weights, profile_key=policy.profile_key, rules_version=policy.version
            )
    return {"state": root / "state", "shas": shas, "families": {"gpt": g["family"], "mixer": m["family"],
            "gone": gone["family"]}, "submissions": {"gpt": gpt, "mixer": mixer}}  # fmt: skip


# --- a real prism serve ---------------------------------------------------------------------------


class Served:
    def __init__(self, state: Path, log: Path) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prism.cli", "serve", "--db", str(state), "--port", "0"],
            stdout=subprocess.PIPE, stderr=log.open("wb"), text=True, start_new_session=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = (
            self.process.stdout.readline()
        )  # "serving the leaderboard of ... at http://127.0.0.1:PORT/ ; ..."
        if " at http://" not in line:
            self.process.kill()
            pytest.fail(f"prism serve did not start: {line!r}\n{log.read_text()[-3000:]}")
        self.url = line.split(" at ", 1)[1].split("/ ;", 1)[0]

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=20)


# --- a real headless Chromium -----------------------------------------------------------------------


class Browser:
    """Chromium over the DevTools protocol: navigate, evaluate JavaScript, take screenshots."""

    def __init__(self, profile_dir: Path) -> None:
        self.profile_dir = profile_dir
        self.log = (profile_dir.parent / "chromium.log").open("wb")
        self.process = subprocess.Popen(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile_dir}",
             "--remote-debugging-port=0", "--window-size=1360,900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=self.log, start_new_session=True,
        )  # fmt: skip
        self.loop = asyncio.new_event_loop()
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        port = self._devtools_port()
        self.session = self.loop.run_until_complete(_session())
        targets = self.loop.run_until_complete(_get_json(self.session, f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = self.loop.run_until_complete(
            self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        )
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _devtools_port(self, timeout_s: float = 30.0) -> int:
        marker = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().splitlines()[0])
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"chromium did not start (exit {self.process.poll()})")

    async def _call(self, method: str, params: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self._next_id += 1
        message_id = self._next_id
        await self.ws.send_json({"id": message_id, "method": method, "params": params})
        async with asyncio.timeout(timeout_s):
            while True:
                message = json.loads((await self.ws.receive()).data)
                if message.get("id") == message_id:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message["result"]
                self.events.append(message)

    def call(self, method: str, timeout_s: float = 30.0, **params: Any) -> dict[str, Any]:
        return self.loop.run_until_complete(self._call(method, params, timeout_s))

    async def _wait_event(self, name: str, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not any(e.get("method") == name for e in self.events):
                self.events.append(json.loads((await self.ws.receive()).data))

    def open(self, url: str, timeout_s: float = 30.0) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.loop.run_until_complete(self._wait_event("Page.loadEventFired", timeout_s))

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def close(self) -> None:
        self.loop.run_until_complete(self.ws.close())
        self.loop.run_until_complete(self.session.close())
        self.loop.close()
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


async def _session() -> Any:
    import aiohttp

    return aiohttp.ClientSession()


async def _get_json(session: Any, url: str) -> Any:
    async with session.get(url) as response:
        return await response.json()
