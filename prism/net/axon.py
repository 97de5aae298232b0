"""The axon: the miner's aiohttp server that hands its submission ZIP to validators.

Each request goes through, in order:

1. size cap: a declared or actual body above ``max_request_bytes`` -> 413 ``request.too_large``;
2. authentication (``btauth/1``, whole body, receiver = this miner's hotkey, replay store)
   -> 401 ``auth.*`` / 409 ``auth.replayed``;
3. authorization against the cached metagraph: the caller must be registered
   (401 ``authz.unregistered``) and hold a validator permit or at least ``min_validator_stake``
   (403 ``authz.not_validator``);
4. a token bucket per caller hotkey -> 429 ``rate.limited`` with ``Retry-After``;
5. the PRISM protocol (``prism.net.protocol``).

A bad request never stops the server: every handler failure becomes a JSON error response.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from prism import __version__
from prism.chain.auth import AuthRejected, new_nonce_store, verify_request
from prism.chain.base import Chain, Metagraph, Neuron
from prism.chain.errors import ChainError
from prism.errors import OperatorError
from prism.net.protocol import (
    ERROR_STATUS,
    HEADER_PROTOCOL,
    HEADER_SHA256,
    INFO_PATH,
    PROTOCOL_VERSION,
    SUBMISSION_PATH,
    InfoResponse,
    error_body,
)
from prism.net.ratelimit import TokenBucketLimiter

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AxonConfig(BaseModel):
    """How the axon listens and whom it serves."""

    model_config = ConfigDict(extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(default=8091, ge=0, le=65535)  # 0 = any free port (tests)
    max_request_bytes: int = Field(default=16 * 1024, ge=0)
    # A caller qualifies with a validator permit, or (when set) with at least this much stake: the
    # neuron's stake weight on this subnet, in alpha on a real subnet (prism.chain.base).
    allow_validator_permit: bool = True
    min_validator_stake: float | None = Field(default=None, ge=0)
    rate_limit_per_min: float = Field(default=60.0, gt=0)
    rate_limit_burst: int = Field(default=10, ge=1)
    # Background metagraph refresh period, and the shortest gap between on-demand refreshes
    # (triggered when an unknown hotkey calls, so a newly registered validator is served soon).
    metagraph_refresh_s: float = Field(default=120.0, gt=0)
    metagraph_min_refresh_s: float = Field(default=10.0, ge=0)
    auth_max_age_s: float = Field(default=10.0, gt=0)


class MetagraphCache:
    """The last metagraph read from the chain, refreshed in the background and on demand.

    Chain reads are blocking, so they run on a worker thread; one refresh at a time.
    """

    def __init__(
        self, chain: Chain, *, min_refresh_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._chain = chain
        self._min_refresh_s = min_refresh_s
        self._clock = clock
        self._graph: Metagraph | None = None
        self._by_hotkey: dict[str, Neuron] = {}
        self._refreshed_at = -math.inf
        self._lock = asyncio.Lock()

    @property
    def graph(self) -> Metagraph | None:
        return self._graph

    async def refresh(self, *, force: bool = False) -> Metagraph | None:
        async with self._lock:
            if not force and self._clock() - self._refreshed_at < self._min_refresh_s:
                return self._graph
            self._refreshed_at = self._clock()
            try:
                graph = await asyncio.to_thread(self._chain.metagraph)
            except ChainError as exc:
                # Keep serving from the stale metagraph: a flaky chain must not lock validators out.
                logger.warning("metagraph refresh failed, keeping the cached one: %s", exc)
                return self._graph
            self._graph = graph
            self._by_hotkey = graph.by_hotkey()
            return graph

    async def lookup(self, hotkey: str) -> Neuron | None:
        """The neuron for ``hotkey``; refreshes (rate-limited) when it is unknown."""
        if hotkey not in self._by_hotkey:
            await self.refresh()
        return self._by_hotkey.get(hotkey)


class _Refused(Exception):
    """Internal: answer the request with a protocol error."""

    def __init__(self, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}


def _error_response(code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    response = web.json_response(error_body(code, message), status=ERROR_STATUS.get(code, 400))
    response.headers[HEADER_PROTOCOL] = PROTOCOL_VERSION
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


class Axon:
    """Serves one miner's submission. Start with ``await axon.start()``, stop with ``await axon.stop()``."""

    def __init__(self, wallet: Any, chain: Chain, config: AxonConfig, *, hotkey: str | None = None) -> None:
        from prism.chain.wallets import hotkey_ss58

        self.wallet = wallet
        self.hotkey = hotkey or hotkey_ss58(wallet)
        self.config = config
        self.metagraph = MetagraphCache(chain, min_refresh_s=config.metagraph_min_refresh_s)
        # Retention must cover the freshness window plus http_auth's allowed clock skew.
        self._nonces = new_nonce_store(retention_s=max(60.0, config.auth_max_age_s + 5.0))
        self._limiter = TokenBucketLimiter(config.rate_limit_per_min / 60.0, config.rate_limit_burst)
        self._zip: bytes | None = None
        self._sha256: str | None = None
        self._committed_sha256: str | None = None
        self._runner: web.AppRunner | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self.port: int | None = None
        self.stats: dict[str, int] = {}

    # ----------------------------------------------------------------- what is served

    def set_submission(self, data: bytes | None) -> str | None:
        """Serve these ZIP bytes (None: serve nothing); returns their sha256."""
        self._zip = data
        self._sha256 = hashlib.sha256(data).hexdigest() if data is not None else None
        return self._sha256

    def set_committed(self, sha256: str | None) -> None:
        """The hash this miner's on-chain commitment currently holds (reported by ``/info``)."""
        self._committed_sha256 = sha256

    # ----------------------------------------------------------------- lifecycle

    def build_app(self) -> web.Application:
        # client_max_size bounds what aiohttp buffers for a body; the middleware answers first
        # when Content-Length already says the body is too big.
        app = web.Application(
            client_max_size=max(1, self.config.max_request_bytes), middlewares=[self._guard]
        )
        app.router.add_get(INFO_PATH, self._info)
        app.router.add_get(SUBMISSION_PATH, self._submission)
        return app

    async def start(self) -> int:
        """Bind and start serving; returns the bound port. Raises ``OperatorError`` if the port is taken."""
        await self.metagraph.refresh(force=True)
        self._runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            if exc.errno == errno.EADDRINUSE:
                raise OperatorError(
                    f"port {self.config.port} on {self.config.host} is already in use; pick another --axon.port",
                    code="axon.port_in_use",
                ) from exc
            raise OperatorError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc}", code="axon.bind"
            ) from exc
        addresses = self._runner.addresses
        self.port = int(addresses[0][1]) if addresses else self.config.port
        self._refresh_task = asyncio.create_task(self._refresh_forever())
        logger.info("axon of %s listening on %s:%d", self.hotkey, self.config.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresh_task
            self._refresh_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        logger.info("axon of %s stopped", self.hotkey)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.metagraph_refresh_s)
            await self.metagraph.refresh(force=True)

    # ----------------------------------------------------------------- request pipeline

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            caller = await self._admit(request)
            response = await handler(request)
        except _Refused as refused:
            self._count(refused.code)
            logger.info("refused %s %s: %s (%s)", request.method, request.path, refused.code, refused.message)
            return _error_response(refused.code, refused.message, refused.headers)
        except web.HTTPRequestEntityTooLarge:
            self._count("request.too_large")
            return _error_response("request.too_large", f"body over {self.config.max_request_bytes} bytes")
        except web.HTTPNotFound:
            return _error_response("request.not_found", f"no such endpoint {request.path}")
        except web.HTTPMethodNotAllowed:
            return _error_response("request.method_not_allowed", f"{request.method} is not allowed here")
        except Exception:
            logger.exception("axon handler failed on %s %s", request.method, request.path)
            return _error_response("axon.internal", "internal error")
        self._count("ok")
        logger.debug("%s %s -> %d for %s", request.method, request.path, response.status, caller)
        response.headers[HEADER_PROTOCOL] = PROTOCOL_VERSION
        return response

    def _count(self, code: str) -> None:
        self.stats[code] = self.stats.get(code, 0) + 1

    async def _admit(self, request: web.Request) -> str:
        """Size cap, authentication, authorization and rate limit; returns the caller or raises ``_Refused``."""
        declared = request.content_length
        if declared is not None and declared > self.config.max_request_bytes:
            raise _Refused(
                "request.too_large", f"body of {declared} bytes is over {self.config.max_request_bytes}"
            )
        body = await request.read()
        try:
            caller = verify_request(
                request.headers,
                body,
                method=request.method,
                path=request.raw_path,
                self_hotkey=self.hotkey,
                nonce_store=self._nonces,
                max_age_s=self.config.auth_max_age_s,
            )
        except AuthRejected as exc:
            raise _Refused(exc.code, exc.message) from None
        neuron = await self.metagraph.lookup(caller)
        if neuron is None:
            if self.metagraph.graph is None:
                raise _Refused("axon.metagraph_unavailable", "the axon has no metagraph yet; retry later")
            raise _Refused("authz.unregistered", "caller hotkey is not registered on this subnet")
        if not self._is_validator(neuron):
            raise _Refused(
                "authz.not_validator", "caller has neither a validator permit nor the minimum stake"
            )
        if not self._limiter.allow(caller):
            wait = math.ceil(self._limiter.retry_after_s(caller))
            raise _Refused(
                "rate.limited", "too many requests from this hotkey", {"Retry-After": str(max(1, wait))}
            )

    def _is_validator(self, neuron: Neuron) -> bool:
        if self.config.allow_validator_permit and neuron.validator_permit:
            return True
        return self.config.min_validator_stake is not None and neuron.stake >= self.config.min_validator_stake

    # ----------------------------------------------------------------- endpoints

    async def _info(self, request: web.Request) -> web.Response:
        info = InfoResponse(
            prism_version=__version__,
            hotkey=self.hotkey,
            committed_sha256=self._committed_sha256,
            served_sha256=self._sha256,
            size_bytes=len(self._zip) if self._zip is not None else None,
        )
        return web.json_response(info.model_dump())

    async def _submission(self, request: web.Request) -> web.Response:
        data, sha256 = self._zip, self._sha256
        if data is None or sha256 is None:
            raise _Refused("submission.none", "this miner serves no submission")
        wanted = request.query.get("sha256")
        if wanted is not None and wanted.lower() != sha256:
            raise _Refused("submission.not_current", f"serving {sha256}, not {wanted}")
        logger.info("serving submission %s (%d bytes)", sha256[:12], len(data))
        return web.Response(
            body=data,
            content_type="application/zip",
            headers={HEADER_SHA256: sha256},
        )
