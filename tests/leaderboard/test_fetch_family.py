"""`prism fetch-family` against a real `prism serve` on 127.0.0.1, and against servers that lie."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from prism.errors import PrismError
from prism.evaluator.interface import TrainingRecipe
from prism.leaderboard.bundle import build_family_zip
from prism.leaderboard.fetch import fetch_family
from prism.submission import IntakeLimits, build_zip, check_submission

FAMILY = "fam-0123456789abcdef"


def _fetch_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prism.cli", "fetch-family", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_fetch_family_writes_a_training_project_that_passes_check(
    scored_store, serve, tmp_path: Path
) -> None:
    url = serve(scored_store["state"]).url
    fam = scored_store["families"]["gpt"]
    out = _fetch_cli(fam, "--from", url, "--out", str(tmp_path / "variant"), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["check"]["ok"] and summary["source_zip_sha256"] == scored_store["shas"]["gpt"]
    project = tmp_path / "variant"
    manifest = yaml.safe_load((project / "prism.yaml").read_text())
    gpt = scored_store["submissions"]["gpt"]
    assert manifest == {
        "kind": "training_for_arch",
        "architecture_id": fam,
        "architecture": {"entrypoint": "src/model.py", "files": ["src/config.py", "src/layers.py"]},
        # the GPT's model.py imports its recipe from train.py, which therefore comes along unchanged
        "training": {"entrypoint": "src/train_variant.py", "files": ["src/train.py"]},
    }
    for name in ("src/model.py", "src/config.py", "src/layers.py", "src/train.py"):
        assert (project / name).read_bytes() == gpt.files[name], name
    report = check_submission(project)  # what a validator's intake will say
    assert report.ok, report.problems
    assert report.submission is not None and report.submission.kind == "training_for_arch"
    assert report.submission.architecture_fingerprint == gpt.architecture_fingerprint
    assert report.submission.hooks["configure_optimizer"] == "src/train_variant.py"


def test_a_self_contained_family_gets_src_train_py(scored_store, serve, tmp_path: Path) -> None:
    url = serve(scored_store["state"]).url
    out = _fetch_cli(scored_store["families"]["mixer"], "--from", url, "--out", str(tmp_path / "m"))
    assert out.returncode == 0, out.stdout + out.stderr
    manifest = yaml.safe_load((tmp_path / "m" / "prism.yaml").read_text())
    assert manifest["training"] == {"entrypoint": "src/train.py", "files": []}
    assert "ACCEPTED" in out.stdout


def test_the_hook_stub_trains_a_model(scored_store, serve, tmp_path: Path) -> None:
    import torch

    url = serve(scored_store["state"]).url
    assert (
        _fetch_cli(scored_store["families"]["mixer"], "--from", url, "--out", str(tmp_path / "m")).returncode
        == 0
    )
    spec = importlib.util.spec_from_file_location("stub_train", tmp_path / "m" / "src" / "train.py")
    assert spec is not None and spec.loader is not None
    stub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stub)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    optimizer, scheduler = stub.configure_optimizer(model, TrainingRecipe(learning_rate=1e-2), None)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    losses, lrs = [], []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        lrs.append(optimizer.param_groups[0]["lr"])
    assert losses[-1] < losses[0]
    assert lrs[0] < lrs[18] and lrs[-1] < lrs[18] <= 1e-2  # warmup, then decay from the peak
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]  # matrices decay, biases not


def test_unknown_family_and_bad_input_are_clear_errors(scored_store, serve, tmp_path: Path) -> None:
    url = serve(scored_store["state"]).url
    out = _fetch_cli("fam-ffffffffffffffff", "--from", url, "--out", str(tmp_path / "x"))
    assert (
        out.returncode == 1 and "fetch.unknown_family" in out.stderr and "serve.unknown_family" in out.stderr
    )
    assert not (tmp_path / "x").exists()
    out = _fetch_cli(scored_store["families"]["gpt"], "--from", "file:///etc/passwd")
    assert out.returncode == 1 and "fetch.bad_url" in out.stderr
    out = _fetch_cli("../../etc", "--from", url)
    assert out.returncode == 1 and "fetch.bad_family_id" in out.stderr
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    out = _fetch_cli(scored_store["families"]["gpt"], "--from", url, "--out", str(tmp_path / "busy"))
    assert out.returncode == 1 and "fetch.dest_not_empty" in out.stderr
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["keep.txt"]


# --- servers that lie -------------------------------------------------------------------------------


class LyingBoard:
    """A real HTTP server on 127.0.0.1 that answers like a leaderboard, with chosen defects."""

    def __init__(self) -> None:
        self.info: dict[str, Any] = {}
        self.body = b""
        self.headers: dict[str, str] = {}
        self.redirect: str | None = None
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/api/v1/families/{fid}", self._family)
        app.router.add_get("/code.zip", self._code)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    async def _family(self, _request: web.Request) -> web.Response:
        return web.json_response({"family": {"family_id": FAMILY, "code": self.info}})

    async def _code(self, _request: web.Request) -> web.Response:
        if self.redirect:
            raise web.HTTPFound(self.redirect)
        return web.Response(body=self.body, headers=self.headers, content_type="application/zip")

    def publish(self, body: bytes, **info: Any) -> None:
        self.body = body
        self.info = {
            "url": "/code.zip",
            "sha256": hashlib.sha256(body).hexdigest(),
            "bytes": len(body),
            **info,
        }

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)


@pytest.fixture
def liar() -> Iterator[LyingBoard]:
    board = LyingBoard()
    try:
        yield board
    finally:
        board.close()


def _bundle(family_id: str = FAMILY, extra: dict[str, bytes] | None = None) -> bytes:
    from prism.submission import load_submission

    mixer = load_submission(Path(__file__).resolve().parents[2] / "examples" / "mixer")
    data, _ = build_family_zip(
        mixer.zip_bytes, family_id=family_id, canonical_version_id="ver-x", owner_hotkey="5X"
    )
    if not extra:
        return data
    files = {
        info.filename: zipfile.ZipFile(io.BytesIO(data)).read(info)
        for info in zipfile.ZipFile(io.BytesIO(data)).infolist()
    }
    return build_zip({**files, **extra})


def _code_of(exc: pytest.ExceptionInfo[PrismError]) -> str:
    return exc.value.code


def test_a_correct_bundle_from_another_server_is_accepted(liar: LyingBoard) -> None:
    liar.publish(_bundle())
    code, files = fetch_family(FAMILY, liar.url)
    assert code.family_id == FAMILY and sorted(files) == ["src/mixing.py", "src/model.py", "src/sizing.py"]


def test_downloads_that_do_not_match_what_was_published_are_refused(liar: LyingBoard) -> None:
    good = _bundle()
    liar.publish(good, sha256="0" * 64)
    with pytest.raises(PrismError) as exc:
        fetch_family(FAMILY, liar.url)
    assert _code_of(exc) == "fetch.sha256_mismatch"
    liar.publish(good)
    liar.headers = {"X-PRISM-SHA256": "1" * 64}
    with pytest.raises(PrismError) as exc:
        fetch_family(FAMILY, liar.url)
    assert _code_of(exc) == "fetch.sha256_mismatch"


def test_oversized_downloads_are_refused_before_and_while_reading(liar: LyingBoard) -> None:
    limits = IntakeLimits(max_compressed_bytes=1000)
    liar.publish(_bundle())  # about 3 KB, advertised truthfully
    with pytest.raises(PrismError) as exc:
        fetch_family(FAMILY, liar.url, limits=limits)
    assert _code_of(exc) == "fetch.too_large"
    big = _bundle()
    liar.publish(big, bytes=500)  # lies about the size: the read stops at the cap
    with pytest.raises(PrismError) as exc:
        fetch_family(FAMILY, liar.url, limits=limits)
    assert _code_of(exc) == "fetch.too_large"


def test_bundles_that_are_not_the_family_asked_for_are_refused(liar: LyingBoard) -> None:
    cases = {
        "fetch.wrong_family": _bundle("fam-ffffffffffffffff"),
        "fetch.not_a_bundle": _bundle(extra={"src/backdoor.py": b"x = 1\n"}),
        "zip.traversal": _traversal_zip(),
    }
    for expected, body in cases.items():
        liar.publish(body)
        with pytest.raises(PrismError) as exc:
            fetch_family(FAMILY, liar.url)
        assert _code_of(exc) == expected


def test_redirects_and_foreign_code_urls_are_refused(liar: LyingBoard) -> None:
    liar.publish(_bundle())
    liar.redirect = "http://192.0.2.1/elsewhere.zip"
    with pytest.raises(PrismError) as exc:
        fetch_family(FAMILY, liar.url)
    assert _code_of(exc) == "fetch.redirect"
    liar.redirect = None
    liar.publish(_bundle(), url="http://192.0.2.1/code.zip")
    with pytest.raises(PrismError) as exc:
        fetch_family(FAMILY, liar.url)
    assert _code_of(exc) == "fetch.bad_response"


def _traversal_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../escape.py", "x = 1\n")
    return buffer.getvalue()
