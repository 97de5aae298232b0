"""The PRISM wire protocol between a validator's dendrite and a miner's axon (version ``prism/1``).

Every request is an HTTP GET signed with ``btauth/1`` (``bittensor.http_auth``; see
``prism.chain.auth``): the signature covers the method, the path including its query string, the
SHA-256 of the whole body (empty for GET), a nanosecond nonce, and the sender and receiver
hotkeys. The receiver must be the miner's hotkey.

Endpoints:

* ``GET /prism/v1/info`` -> 200 JSON ``InfoResponse``.
* ``GET /prism/v1/submission?sha256=<hex>`` -> 200 ``application/zip`` with ``X-Prism-Sha256``;
  404 ``submission.none`` when nothing is served, 404 ``submission.not_current`` when the served
  ZIP is not the requested hash (the miner re-committed; the validator re-reads the chain).
  Without ``sha256`` the current ZIP is returned.

Errors are JSON ``{"protocol": "prism/1", "error": {"code": ..., "message": ...}}`` with the
statuses listed in ``ERROR_STATUS``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

PROTOCOL_VERSION = "prism/1"
INFO_PATH = "/prism/v1/info"
SUBMISSION_PATH = "/prism/v1/submission"

HEADER_SHA256 = "X-Prism-Sha256"
HEADER_PROTOCOL = "X-Prism-Protocol"

# Stable error codes and the HTTP status each is answered with.
ERROR_STATUS: dict[str, int] = {
    "auth.malformed": 401,
    "auth.bad_signature": 401,
    "auth.wrong_receiver": 401,
    "auth.stale": 401,
    "auth.replayed": 409,
    "authz.unregistered": 401,
    "authz.not_validator": 403,
    "rate.limited": 429,
    "request.too_large": 413,
    "request.not_found": 404,
    "request.method_not_allowed": 405,
    "submission.none": 404,
    "submission.not_current": 404,
    "axon.metagraph_unavailable": 503,
    "axon.internal": 500,
}


class InfoResponse(BaseModel):
    """Body of ``GET /prism/v1/info``."""

    model_config = ConfigDict(extra="forbid")

    protocol: str = PROTOCOL_VERSION
    prism_version: str
    hotkey: str
    committed_sha256: str | None
    served_sha256: str | None
    size_bytes: int | None


def error_body(code: str, message: str) -> dict[str, object]:
    return {"protocol": PROTOCOL_VERSION, "error": {"code": code, "message": message}}
