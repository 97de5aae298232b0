"""Length-prefixed frames: how the host talks to every sandboxed process (no torch).

A frame is ``>II`` (header length, payload length), a UTF-8 JSON header with a string ``type``,
then the raw payload. Both sides bound the sizes; the reader enforces a deadline with ``select``
so a stalled peer never hangs the host. The same framing carries the training feed (a Unix
socket per rank) and the held-out protocol (a pipe pair).

Whose fault a broken stream is, is not decided here: :class:`ProtocolError` is raised to the
caller, and ``prism.evaluator.verdicts`` decides (after ``hello``, the submission's).
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
from typing import Any

from prism.errors import InfrastructureFault

FRAME_PREFIX = struct.Struct(">II")
MAX_HEADER_BYTES = 1 << 20
#: Largest payload either side accepts (one batch of logit rows or commitments).
MAX_PAYLOAD_BYTES = 1 << 30
_READ_CHUNK = 1 << 20


def loads_untrusted(data: bytes | str) -> Any:
    """``json.loads`` for text a sandboxed process wrote. Every way it can be bad is a
    ``ValueError``: not UTF-8, not JSON, nested past Python's recursion limit (``json`` raises
    ``RecursionError`` there, which would escape a caller's ``except ValueError``), or holding a
    string that cannot be written back as UTF-8 (a lone surrogate escape such as ``\\ud800``, which
    would make a manifest that copied it unreadable)."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    except UnicodeError as exc:
        raise ValueError(f"JSON text or strings are not UTF-8: {exc}") from exc
    return value


class ProtocolError(InfrastructureFault):
    """The byte stream broke the framing rules (the caller decides whose fault that is)."""

    default_code = "eval.protocol"


class ChannelClosed(ProtocolError):
    """The other side closed its end (usually: the process exited or was killed)."""


class ChannelTimeout(ProtocolError):
    """No complete frame before the deadline."""


def encode_frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(head) > MAX_HEADER_BYTES or len(payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"frame too large (header {len(head)} B, payload {len(payload)} B)")
    return FRAME_PREFIX.pack(len(head), len(payload)) + head + payload


class FrameReader:
    """Reads frames from a file descriptor (pipe or socket) with an optional deadline."""

    def __init__(
        self, fd: int, *, deadline: float | None = None, max_payload: int = MAX_PAYLOAD_BYTES
    ) -> None:
        self.fd = fd
        self.deadline = deadline
        self.max_payload = max_payload

    def _read_exact(self, n: int) -> bytes:
        chunks: list[bytes] = []
        remaining = n
        while remaining:
            if self.deadline is not None:
                wait = self.deadline - time.monotonic()
                if wait <= 0:
                    raise ChannelTimeout("timed out waiting for the sandboxed process")
                ready, _, _ = select.select([self.fd], [], [], wait)
                if not ready:
                    continue
            try:
                chunk = os.read(self.fd, min(remaining, _READ_CHUNK))
            except OSError as exc:  # reset, broken, or shut down by the other side
                raise ChannelClosed(f"the channel failed: {exc}") from exc
            if not chunk:
                raise ChannelClosed("the channel closed")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def read(self) -> tuple[dict[str, Any], bytes]:
        head_len, payload_len = FRAME_PREFIX.unpack(self._read_exact(FRAME_PREFIX.size))
        if head_len > MAX_HEADER_BYTES or payload_len > self.max_payload:
            raise ProtocolError(f"frame exceeds limits (header {head_len} B, payload {payload_len} B)")
        try:
            header = loads_untrusted(self._read_exact(head_len))
        except ValueError as exc:
            raise ProtocolError(f"frame header is not JSON: {exc}") from exc
        if not isinstance(header, dict) or not isinstance(header.get("type"), str):
            raise ProtocolError("frame header must be an object with a string 'type'")
        return header, self._read_exact(payload_len)

    def expect(self, kind: str) -> tuple[dict[str, Any], bytes]:
        """Read one frame that must be of type ``kind``."""
        header, payload = self.read()
        if header["type"] != kind:
            raise ProtocolError(f"expected a {kind!r} frame, got {header['type']!r}")
        return header, payload


class FrameWriter:
    """Writes frames to a file descriptor; with a deadline the fd is made non-blocking."""

    def __init__(self, fd: int, *, deadline: float | None = None) -> None:
        self.fd = fd
        self.deadline = deadline
        if deadline is not None:
            os.set_blocking(fd, False)

    def write(self, header: dict[str, Any], payload: bytes = b"") -> None:
        view = memoryview(encode_frame(header, payload))
        while view:
            if self.deadline is not None:
                wait = self.deadline - time.monotonic()
                if wait <= 0:
                    raise ChannelTimeout("timed out writing to the sandboxed process")
                _, ready, _ = select.select([], [self.fd], [], wait)
                if not ready:
                    continue
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise ChannelClosed("the sandboxed process closed its end") from exc
            view = view[written:]


__all__ = [
    "FRAME_PREFIX",
    "MAX_HEADER_BYTES",
    "MAX_PAYLOAD_BYTES",
    "ChannelClosed",
    "ChannelTimeout",
    "FrameReader",
    "FrameWriter",
    "ProtocolError",
    "encode_frame",
]
