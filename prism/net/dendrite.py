"""The dendrite: the validator's signed HTTP client for miners' axons.

``fetch_submission(neuron, expected_sha256)`` downloads a miner's ZIP and checks it against the
hash the miner committed on chain. Outcomes (``FetchResult.status``):

* ``ok``: bytes whose SHA-256 equals the commitment;
* ``hash_mismatch`` (miner fault ``net.hash_mismatch``): the miner served other bytes for the
  committed hash; ``too_large`` (miner fault ``net.too_large``): over ``max_download_bytes``;
  ``bad_response`` (miner fault ``net.bad_response``): a 200 that is not a ZIP download;
* ``unreachable`` (``net.unreachable`` / ``net.timeout``): refused connection, timeout or 5xx
  after every retry; infrastructure-ish, retried next round, never penalized;
* ``not_served`` (``net.not_served``): 404, the miner serves nothing or another hash right now;
* ``refused`` (``net.refused``): the axon refused *us* (401/403/409/429): our wallet or
  registration is the problem, never the miner's.

Retries (exponential backoff with a fresh signature each time) apply only to infrastructure
failures: connection errors, timeouts, 5xx and 429. A semaphore bounds how many miners are
fetched at once, and every request has a total timeout, so one slow miner cannot stall the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from enum import StrEnum
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field
from yarl import URL

from prism.chain.auth import sign_request
from prism.chain.base import Neuron
from prism.errors import Fault
from prism.net.protocol import HEADER_SHA256, INFO_PATH, SUBMISSION_PATH, InfoResponse

logger = logging.getLogger(__name__)

DEFAULT_MAX_DOWNLOAD_BYTES = 5 * 1024 * 1024


class DendriteConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout_s: float = Field(default=30.0, gt=0)  # whole request, download included
    connect_timeout_s: float = Field(default=5.0, gt=0)
    retries: int = Field(default=2, ge=0)  # extra attempts after the first
    backoff_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=8.0, ge=0)
    max_concurrency: int = Field(default=8, ge=1)
    max_download_bytes: int = Field(default=DEFAULT_MAX_DOWNLOAD_BYTES, ge=1)


class FetchStatus(StrEnum):
    OK = "ok"
    HASH_MISMATCH = "hash_mismatch"
    TOO_LARGE = "too_large"
    BAD_RESPONSE = "bad_response"
    NOT_SERVED = "not_served"
    UNREACHABLE = "unreachable"
    REFUSED = "refused"


# status -> (error code, fault, retry next round?)
_OUTCOMES: dict[FetchStatus, tuple[str | None, Fault | None, bool]] = {
    FetchStatus.OK: (None, None, False),
    FetchStatus.HASH_MISMATCH: ("net.hash_mismatch", "miner", False),
    FetchStatus.TOO_LARGE: ("net.too_large", "miner", False),
    FetchStatus.BAD_RESPONSE: ("net.bad_response", "miner", False),
    FetchStatus.NOT_SERVED: ("net.not_served", "miner", True),
    FetchStatus.UNREACHABLE: ("net.unreachable", "infrastructure", True),
    FetchStatus.REFUSED: ("net.refused", "operator", True),
}


class FetchResult(BaseModel):
    """The outcome of fetching one miner's submission."""

    model_config = ConfigDict(extra="forbid")

    hotkey: str
    uid: int
    status: FetchStatus
    expected_sha256: str
    data: bytes | None = Field(default=None, repr=False)
    sha256: str | None = None  # of the bytes received, when any were
    code: str | None = None
    fault: Fault | None = None
    retryable: bool = False
    message: str = ""
    http_status: int | None = None
    attempts: int = 0
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is FetchStatus.OK

    @property
    def is_miner_fault(self) -> bool:
        """A permanent miner fault: record it, score zero, do not fetch this hash again."""
        return self.fault == "miner" and not self.retryable


class _Attempt(BaseModel):
    """One HTTP attempt's raw outcome (internal)."""

    model_config = ConfigDict(extra="forbid")

    status: FetchStatus
    http_status: int | None = None
    data: bytes | None = None
    message: str = ""
    timeout: bool = False
    retry_after_s: float | None = None


class Dendrite:
    """Signed client; use as ``async with Dendrite(wallet, config) as dendrite: ...``."""

    def __init__(self, wallet: Any, config: DendriteConfig | None = None) -> None:
        self.wallet = wallet
        self.config = config or DendriteConfig()
        self._semaphore: asyncio.Semaphore | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Dendrite:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        # Created here, inside the running loop, so one Dendrite can serve several asyncio.run calls.
        if self._session is None:
            self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
            timeout = aiohttp.ClientTimeout(
                total=self.config.timeout_s, sock_connect=self.config.connect_timeout_s
            )
            self._session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._semaphore = None

    # ----------------------------------------------------------------- public API

    async def fetch_submission(self, neuron: Neuron, expected_sha256: str) -> FetchResult:
        """Download ``neuron``'s ZIP and verify it against ``expected_sha256`` (from its commitment)."""
        expected = expected_sha256.strip().lower()
        started = time.monotonic()
        if neuron.axon is None:
            return self._result(
                neuron,
                expected,
                _Attempt(status=FetchStatus.UNREACHABLE, message="no axon published"),
                0,
                started,
            )
        path = f"{SUBMISSION_PATH}?sha256={expected}"
        await self.open()
        assert self._semaphore is not None
        async with self._semaphore:
            attempt, attempts = await self._with_retries(neuron, path)
        if attempt.status is FetchStatus.OK and attempt.data is not None:
            digest = hashlib.sha256(attempt.data).hexdigest()
            if digest != expected:
                attempt = attempt.model_copy(
                    update={
                        "status": FetchStatus.HASH_MISMATCH,
                        "message": f"served bytes hash to {digest}, commitment says {expected}",
                    }
                )
            result = self._result(neuron, expected, attempt, attempts, started)
            return result.model_copy(update={"sha256": digest})
        return self._result(neuron, expected, attempt, attempts, started)

    async def fetch_many(self, targets: list[tuple[Neuron, str]]) -> list[FetchResult]:
        """Fetch many miners concurrently (bounded by ``max_concurrency``); results in input order."""
        return list(await asyncio.gather(*(self.fetch_submission(n, sha) for n, sha in targets)))

    async def fetch_info(self, neuron: Neuron) -> InfoResponse | None:
        """The miner's ``/info``; None when it cannot be read (unreachable or refused)."""
        if neuron.axon is None:
            return None
        await self.open()
        assert self._semaphore is not None
        async with self._semaphore:
            attempt, _ = await self._with_retries(neuron, INFO_PATH, expect_zip=False)
        if attempt.status is not FetchStatus.OK or attempt.data is None:
            return None
        try:
            return InfoResponse.model_validate_json(attempt.data)
        except ValueError:
            return None

    # ----------------------------------------------------------------- internals

    def _result(
        self, neuron: Neuron, expected: str, attempt: _Attempt, attempts: int, started: float
    ) -> FetchResult:
        status = attempt.status
        code, fault, retryable = _OUTCOMES[status]
        if status is FetchStatus.UNREACHABLE and attempt.timeout:
            code = "net.timeout"
        if status is not FetchStatus.OK:
            logger.info(
                "fetch from uid %d (%s): %s %s", neuron.uid, neuron.hotkey[:10], code, attempt.message
            )
        return FetchResult(
            hotkey=neuron.hotkey,
            uid=neuron.uid,
            status=status,
            expected_sha256=expected,
            data=attempt.data if status is FetchStatus.OK else None,
            code=code,
            fault=fault,
            retryable=retryable,
            message=attempt.message,
            http_status=attempt.http_status,
            attempts=attempts,
            elapsed_s=time.monotonic() - started,
        )

    async def _with_retries(
        self, neuron: Neuron, path: str, *, expect_zip: bool = True
    ) -> tuple[_Attempt, int]:
        delay = self.config.backoff_s
        attempt = _Attempt(status=FetchStatus.UNREACHABLE)
        for number in range(1, self.config.retries + 2):
            attempt = await self._attempt(neuron, path, expect_zip=expect_zip)
            retry = attempt.status is FetchStatus.UNREACHABLE or attempt.http_status == 429
            if not retry or number > self.config.retries:
                return attempt, number
            wait = min(self.config.backoff_max_s, max(delay, attempt.retry_after_s or 0.0))
            await asyncio.sleep(wait)
            delay = min(self.config.backoff_max_s, delay * 2 if delay else 0.0)
        return attempt, self.config.retries + 1

    async def _attempt(self, neuron: Neuron, path: str, *, expect_zip: bool) -> _Attempt:
        assert neuron.axon is not None
        await self.open()
        assert self._session is not None
        # Sign exactly the request target we send; encoded=True stops yarl from rewriting it.
        headers = sign_request(self.wallet, method="GET", path=path, body=b"", receiver_hotkey=neuron.hotkey)
        url = URL(neuron.axon.url + path, encoded=True)
        try:
            async with self._session.get(url, headers=headers) as response:
                if response.status != 200:
                    return await self._non_200(response)
                declared = response.content_length
                if declared is not None and declared > self.config.max_download_bytes:
                    return _Attempt(
                        status=FetchStatus.TOO_LARGE, http_status=200, message=f"declares {declared} bytes"
                    )
                data = await self._read_capped(response)
                if data is None:
                    return _Attempt(
                        status=FetchStatus.TOO_LARGE, http_status=200, message="body over the download cap"
                    )
                if expect_zip and not self._looks_like_zip(response, data):
                    return _Attempt(
                        status=FetchStatus.BAD_RESPONSE, http_status=200, message="200 without a ZIP body"
                    )
                return _Attempt(status=FetchStatus.OK, http_status=200, data=data)
        except TimeoutError:
            return _Attempt(status=FetchStatus.UNREACHABLE, timeout=True, message="timed out")
        except (aiohttp.ClientError, OSError) as exc:
            return _Attempt(status=FetchStatus.UNREACHABLE, message=f"{type(exc).__name__}: {exc}")

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            total += len(chunk)
            if total > self.config.max_download_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _looks_like_zip(response: aiohttp.ClientResponse, data: bytes) -> bool:
        # The served hash header is informative only: the commitment is the authority.
        return data[:2] == b"PK" or HEADER_SHA256 in response.headers

    async def _non_200(self, response: aiohttp.ClientResponse) -> _Attempt:
        text = (await response.content.read(4096)).decode("utf-8", errors="replace")
        message = f"HTTP {response.status}: {text[:300]}"
        if response.status == 404:
            return _Attempt(status=FetchStatus.NOT_SERVED, http_status=404, message=message)
        if response.status in (401, 403, 409, 429):
            retry_after = response.headers.get("Retry-After")
            return _Attempt(
                status=FetchStatus.REFUSED,
                http_status=response.status,
                message=message,
                retry_after_s=float(retry_after) if retry_after and retry_after.isdigit() else None,
            )
        if response.status >= 500:
            return _Attempt(status=FetchStatus.UNREACHABLE, http_status=response.status, message=message)
        return _Attempt(status=FetchStatus.BAD_RESPONSE, http_status=response.status, message=message)
