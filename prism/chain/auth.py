"""Signed HTTP requests (``bittensor.http_auth``, protocol ``btauth/1``) behind PRISM's own types.

The axon and the dendrite (``prism.net``) use these wrappers so that only ``prism.chain`` imports
bittensor. Every request signs the method, the path with its query, the SHA-256 of the whole
body, a nanosecond nonce, the sender hotkey and the receiver hotkey.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bittensor import http_auth

from prism.errors import OperatorError

# Header names, for servers that list or log them.
AUTH_HEADERS = (
    http_auth.HEADER_VERSION,
    http_auth.HEADER_HOTKEY,
    http_auth.HEADER_RECEIVER,
    http_auth.HEADER_NONCE,
    http_auth.HEADER_CRYPTO,
    http_auth.HEADER_SIGNATURE,
)
HEADER_HOTKEY = http_auth.HEADER_HOTKEY
DEFAULT_MAX_AGE_S = http_auth.DEFAULT_MAX_AGE


class AuthRejected(OperatorError):
    """A request failed authentication. ``status`` is the HTTP status to answer with.

    The messages come from bittensor, which never echoes signatures or payloads, so they are
    safe to return to an unauthenticated caller.
    """

    default_code = "auth.rejected"

    def __init__(self, message: str, *, code: str, status: int = 401) -> None:
        super().__init__(message, code=code)
        self.status = status


# bittensor error class -> (stable code, HTTP status). Order matters: most specific first.
_ERROR_MAP: tuple[tuple[type[http_auth.AuthError], str, int], ...] = (
    (http_auth.ReplayedRequest, "auth.replayed", 409),
    (http_auth.WrongReceiver, "auth.wrong_receiver", 401),
    (http_auth.StaleRequest, "auth.stale", 401),
    (http_auth.BadSignature, "auth.bad_signature", 401),
    (http_auth.MalformedAuth, "auth.malformed", 401),
)


def new_nonce_store(retention_s: float = 60.0) -> Any:
    """A per-process replay store; ``retention_s`` must cover the freshness window."""
    return http_auth.InMemoryNonceStore(retention=retention_s)


def sign_request(
    wallet: Any, *, method: str, path: str, body: bytes, receiver_hotkey: str, nonce_ns: int | None = None
) -> dict[str, str]:
    """Auth headers for one request. Each retry must call this again (fresh nonce).

    ``nonce_ns`` (nanoseconds since the epoch) defaults to now; tests pass old ones.
    """
    return http_auth.sign(
        wallet, method=method, path=path, body=body, receiver_ss58=receiver_hotkey, nonce_ns=nonce_ns
    )


def verify_request(
    headers: Mapping[str, str],
    body: bytes,
    *,
    method: str,
    path: str,
    self_hotkey: str,
    nonce_store: Any,
    max_age_s: float = DEFAULT_MAX_AGE_S,
) -> str:
    """Authenticate a received request; returns the caller's hotkey or raises ``AuthRejected``."""
    try:
        caller = http_auth.verify(
            headers,
            body,
            method=method,
            path=path,
            self_hotkey_ss58=self_hotkey,
            nonce_store=nonce_store,
            max_age=max_age_s,
        )
    except http_auth.AuthError as exc:
        for error_type, code, status in _ERROR_MAP:
            if isinstance(exc, error_type):
                raise AuthRejected(str(exc), code=code, status=status) from None
        raise AuthRejected(str(exc), code="auth.rejected") from None
    return caller.hotkey_ss58
