"""The client side of ``prism fetch-family``: download a family's code bundle from a leaderboard.

Checks, in order: the family id and URL are well formed; the server knows the family and
publishes its code (size and sha256, from ``/api/v1/families/{id}``); the advertised size is
within intake's compressed-size limit; the download is read with that cap, no redirects, and
must have exactly the advertised size and sha256 (and the ``X-PRISM-SHA256`` header's, when
sent); finally the ZIP is read with intake's archive limits and must be a bundle of the family
asked for (:func:`prism.leaderboard.bundle.read_family_zip`).

The sha256 comes from the same server, so it proves the download is complete and intact, not
that the server is honest: fetch from a validator you trust, and `prism eval` the result (the
measured family must equal the architecture id).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

from prism.errors import InfrastructureFault, OperatorError
from prism.leaderboard.bundle import FAMILY_ID_PATTERN, FamilyCode, read_family_zip
from prism.submission import IntakeLimits

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 4_000_000
USER_AGENT = "prism-fetch-family/1"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        raise OperatorError(
            f"{req.full_url} redirects to {newurl}; pass the final URL", code="fetch.redirect"
        )


_OPENER = urllib.request.build_opener(_NoRedirect)


def base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise OperatorError(
            f"--from must be an http(s) URL of a PRISM leaderboard, got {url!r}", code="fetch.bad_url"
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _get(url: str, cap: int, timeout_s: float) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    try:
        with _OPENER.open(request, timeout=timeout_s) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > cap:
                raise OperatorError(f"{url} is {declared} bytes; the limit is {cap}", code="fetch.too_large")
            data = response.read(cap + 1)
            headers = {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        raise _server_error(url, exc) from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise InfrastructureFault(f"cannot reach {url}: {exc}", code="fetch.unreachable") from exc
    if len(data) > cap:
        raise OperatorError(f"{url} sent more than {cap} bytes", code="fetch.too_large")
    return data, headers


def _server_error(url: str, exc: urllib.error.HTTPError) -> OperatorError:
    """The server's JSON error ({"error": {"code", "message"}}) when it sent one."""
    detail = f"HTTP {exc.code}"
    try:
        error = json.loads(exc.read(MAX_JSON_BYTES))["error"]
        detail += f" [{error['code']}] {error['message']}"
    except (ValueError, KeyError, TypeError, OSError):
        pass
    code = "fetch.unknown_family" if exc.code == 404 else "fetch.server_error"
    return OperatorError(f"{url}: {detail}", code=code)


def family_info(family_id: str, base: str, timeout_s: float = 30.0) -> dict[str, Any]:
    data, _ = _get(f"{base}/api/v1/families/{quote(family_id, safe='')}", MAX_JSON_BYTES, timeout_s)
    try:
        info = json.loads(data)
        return dict(info["family"])
    except (ValueError, KeyError, TypeError) as exc:
        raise OperatorError(
            f"{base} did not answer like a PRISM leaderboard: {exc}", code="fetch.bad_response"
        ) from exc


def fetch_family(
    family_id: str, url: str, *, limits: IntakeLimits | None = None, timeout_s: float = 30.0
) -> tuple[FamilyCode, dict[str, bytes]]:
    """Download and check the family's code bundle; returns its metadata and code files."""
    limits = limits or IntakeLimits()
    if not re.match(FAMILY_ID_PATTERN, family_id):
        raise OperatorError(
            f"not a family id: {family_id!r} (e.g. fam-0123456789abcdef)", code="fetch.bad_family_id"
        )
    base = base_url(url)
    code = family_info(family_id, base, timeout_s).get("code")
    if not isinstance(code, dict) or not {"url", "sha256", "bytes"} <= set(code):
        raise OperatorError(f"{base} does not publish the code of {family_id}", code="fetch.no_code")
    size, sha256 = code["bytes"], str(code["sha256"])
    if not isinstance(size, int) or size > limits.max_compressed_bytes:
        raise OperatorError(
            f"the code of {family_id} is {size} bytes; the limit is {limits.max_compressed_bytes}",
            code="fetch.too_large",
        )
    target = urljoin(base + "/", str(code["url"]))
    if urlsplit(target)[:2] != urlsplit(base)[:2]:
        raise OperatorError(f"the code URL {target} is not on {base}", code="fetch.bad_response")
    data, headers = _get(target, limits.max_compressed_bytes, timeout_s)
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != size or digest != sha256 or headers.get("x-prism-sha256", sha256) != sha256:
        raise OperatorError(
            f"the download of {family_id} is {len(data)} bytes with sha256 {digest}; the server "
            f"published {size} bytes with sha256 {sha256}",
            code="fetch.sha256_mismatch",
        )
    logger.info("fetched %s (%d bytes, sha256 %s)", family_id, size, digest)
    return read_family_zip(data, family_id=family_id, limits=limits)
