"""``prism serve``: the public leaderboard, an aiohttp app over a read-only :class:`StoreReader`.

Pages (HTML, no scripts)::

    /                              families, training variants, weights history
    /families/{family_id}          one family: versions, variants, runs, its canonical code
    /runs/{run_id}                 one run: summary, loss curve, manifest

JSON API (``/api/v1``)::

    /leaderboard                   everything the front page shows
    /families, /families/{id}      families (with code url, sha256 and size), one family in detail
    /families/{id}/code.zip        the canonical code bundle (docs/leaderboard.md)
    /variants                      training variants (?family=ID)
    /weights                       weight sets, newest first (?limit=N, 1..1000, default 100)
    /runs, /runs/{run_id}          finished runs (?family=ID), one run with its manifest
    /runs/{run_id}/manifest.json   the manifest file as the validator wrote it
    /runs/{run_id}/plots/{name}    a loss-curve image named by the manifest's artifacts
    /status                        the validator's own status file (prism.validator.status), or 404

Every error is JSON, ``{"error": {"code": ..., "message": ...}}``, with a 4xx status for a bad
request and 5xx when the store cannot answer. Only GET and HEAD exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from prism.errors import OperatorError, PrismError
from prism.leaderboard import pages
from prism.leaderboard.board import API, Board, run_summary
from prism.leaderboard.bundle import FAMILY_ID_PATTERN
from prism.leaderboard.reader import RunEntry, StoreReader
from prism.manifest import RunManifest

logger = logging.getLogger(__name__)

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
FAMILY_ID = re.compile(FAMILY_ID_PATTERN)
DEFAULT_PORT = 8095
MAX_WEIGHT_SETS = 1000
PAGE_WEIGHT_SETS = 20
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
BOARD_KEY = web.AppKey("board", Board)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """A request the server refuses: an HTTP status, a stable code and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _error(status: int, code: str, message: str) -> web.Response:
    response = web.json_response({"error": {"code": code, "message": message}}, status=status)
    response.headers.update(SECURITY_HEADERS)
    return response


@web.middleware
async def _errors_and_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:  # aiohttp's own: unknown path (404), wrong method (405)
        code = {404: "serve.not_found", 405: "serve.method_not_allowed"}.get(exc.status, "serve.bad_request")
        return _error(exc.status, code, f"{request.method} {request.path}: {exc.reason}")
    except OperatorError as exc:
        return _error(503, exc.code, exc.message)
    except PrismError as exc:
        logger.warning("%s %s: %s", request.method, request.path, exc)
        return _error(500, exc.code, exc.message)
    response.headers.update(SECURITY_HEADERS)
    return response


def _board(request: web.Request) -> Board:
    return request.app[BOARD_KEY]


def _family_id(request: web.Request) -> str:
    family_id = request.match_info["family_id"]
    if not FAMILY_ID.match(family_id):
        raise ApiError(400, "serve.bad_family_id", f"not a family id: {family_id[:80]!r}")
    return family_id


def _run_id(request: web.Request) -> str:
    run_id = request.match_info["run_id"]
    if not RUN_ID_PATTERN.match(run_id):
        raise ApiError(400, "serve.bad_run_id", f"not a run id: {run_id[:80]!r}")
    return run_id


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_WEIGHT_SETS:
        raise ApiError(400, "serve.bad_limit", f"limit must be an integer from 1 to {MAX_WEIGHT_SETS}")
    return int(raw)


def _family_query(request: web.Request) -> str | None:
    family = request.query.get("family")
    if family is not None and not FAMILY_ID.match(family):
        raise ApiError(400, "serve.bad_family_id", f"not a family id: {family[:80]!r}")
    return family


def _family_detail(request: web.Request) -> dict[str, Any]:
    family_id = _family_id(request)
    detail = _board(request).family(family_id)
    if detail is None:
        raise ApiError(404, "serve.unknown_family", f"no scored family {family_id} in this validator's store")
    return detail


def _run(request: web.Request) -> tuple[RunEntry, RunManifest]:
    run_id = _run_id(request)
    found = _board(request).run(run_id)
    if found is None:
        raise ApiError(404, "serve.unknown_run", f"no finished run {run_id} in this validator's store")
    return found


def _html(text: str) -> web.Response:
    return web.Response(text=text, content_type="text/html", charset="utf-8")


# --- pages ----------------------------------------------------------------------------------------


async def index_page(request: web.Request) -> web.Response:
    board = _board(request)
    return _html(
        pages.leaderboard_page({**board.leaderboard(), "weight_history": board.weights(PAGE_WEIGHT_SETS)})
    )


async def family_page(request: web.Request) -> web.Response:
    return _html(pages.family_page(_family_detail(request), str(request.url.origin())))


async def run_page(request: web.Request) -> web.Response:
    entry, manifest = _run(request)
    return _html(pages.run_page(run_summary(entry, manifest), manifest))


async def stylesheet(_request: web.Request) -> web.Response:
    return web.Response(text=pages.STYLESHEET, content_type="text/css", charset="utf-8")


# --- API ------------------------------------------------------------------------------------------


async def api_leaderboard(request: web.Request) -> web.Response:
    return web.json_response(_board(request).leaderboard())


async def api_families(request: web.Request) -> web.Response:
    return web.json_response(_board(request).family_rows())


async def api_family(request: web.Request) -> web.Response:
    return web.json_response(_family_detail(request))


async def api_family_code(request: web.Request) -> web.Response:
    family_id = _family_id(request)
    found = _board(request).code_for(family_id)
    if found is None:
        raise ApiError(404, "serve.unknown_family", f"no scored family {family_id} in this validator's store")
    data, _ = found
    return web.Response(
        body=data,
        content_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="{family_id}.zip"',
            "X-PRISM-SHA256": hashlib.sha256(data).hexdigest(),
        },
    )


async def api_variants(request: web.Request) -> web.Response:
    return web.json_response(_board(request).variant_rows(_family_query(request)))


async def api_weights(request: web.Request) -> web.Response:
    return web.json_response(_board(request).weights(_limit(request)))


async def api_runs(request: web.Request) -> web.Response:
    family = _family_query(request)
    rows = _board(request).run_rows()
    return web.json_response([r for r in rows if family is None or r["family_id"] == family])


async def api_run(request: web.Request) -> web.Response:
    entry, manifest = _run(request)
    return web.json_response({**run_summary(entry, manifest), "manifest": manifest.model_dump(mode="json")})


async def api_run_manifest(request: web.Request) -> web.Response:
    entry, _ = _run(request)
    data = _board(request).reader.manifest_bytes(entry)  # re-checked against the recorded sha256
    return web.Response(body=data, content_type="application/json", charset="utf-8")


async def api_run_plot(request: web.Request) -> web.FileResponse:
    entry, manifest = _run(request)
    name = request.match_info["name"]
    plots = run_summary(entry, manifest)["plots"]
    if name not in plots:
        raise ApiError(
            404, "serve.unknown_plot", f"run {entry.run_id} has no plot {name[:40]!r} (has {sorted(plots)})"
        )
    path = _board(request).reader.artifact(entry, plots[name])
    content_type = "image/png" if path.suffix.lower() == ".png" else "image/svg+xml"
    return web.FileResponse(path, headers={"Content-Type": content_type})


async def api_status(request: web.Request) -> web.Response:
    """What the validator wrote last (block, queue, runs in flight, weights), read by the same code
    as ``prism localnet``; never an input to anything shown as a score."""
    from prism.validator.status import read_status

    status = read_status(_board(request).reader.root)
    if status is None:
        raise ApiError(404, "serve.no_status", "this validator has not written a status file yet")
    return web.json_response(status.model_dump(mode="json"))


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True, "schema_version": _board(request).reader.schema_version})


def build_app(reader: StoreReader) -> web.Application:
    app = web.Application(middlewares=[_errors_and_headers])
    app[BOARD_KEY] = Board(reader)
    routes = [
        ("/", index_page), ("/families/{family_id}", family_page), ("/runs/{run_id}", run_page),
        ("/static/leaderboard.css", stylesheet), ("/healthz", healthz),
        (f"{API}/leaderboard", api_leaderboard), (f"{API}/families", api_families),
        (f"{API}/families/{{family_id}}", api_family), (f"{API}/families/{{family_id}}/code.zip", api_family_code),
        (f"{API}/variants", api_variants), (f"{API}/weights", api_weights), (f"{API}/runs", api_runs),
        (f"{API}/runs/{{run_id}}", api_run), (f"{API}/runs/{{run_id}}/manifest.json", api_run_manifest),
        (f"{API}/runs/{{run_id}}/plots/{{name}}", api_run_plot), (f"{API}/status", api_status),
    ]  # fmt: skip
    for path, handler in routes:
        app.router.add_get(path, handler)
    return app


async def serve(reader: StoreReader, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Serve until SIGINT or SIGTERM; ``on_ready`` gets the base URL once the socket is bound."""
    runner = web.AppRunner(build_app(reader), access_log=logger)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise OperatorError(f"cannot listen on {host}:{port}: {exc}", code="serve.port_in_use") from exc
        bound_host, bound_port = runner.addresses[0][:2]
        on_ready(f"http://{_url_host(bound_host)}:{bound_port}")
        await stop.wait()
    finally:
        await runner.cleanup()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
