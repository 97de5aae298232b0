"""What a sandboxed process writes is parsed without ever crashing the host, and the weights
file leaves no room the budget does not count (issue 9, classes 3, 7 and 8)."""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from prism.errors import MinerFault
from prism.evaluator.artifacts import parse_probe_lines
from prism.evaluator.budgets import inspect_weights
from prism.evaluator.framing import FRAME_PREFIX, FrameReader, ProtocolError, loads_untrusted

DEEP = "[" * 100_000
LONE_SURROGATE = '{"type": "done", "advisory": ["\\ud800"]}'


@pytest.mark.parametrize(
    "text", [DEEP, LONE_SURROGATE, "{not json", b"\xff\xfe"], ids=["deep", "surrogate", "junk", "bytes"]
)
def test_every_bad_json_is_a_value_error(text):  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        loads_untrusted(text)


def test_good_json_round_trips():
    assert loads_untrusted(b'{"type": "go", "n": [1, 2.5, "\\u00e9"]}') == {"type": "go", "n": [1, 2.5, "é"]}


@pytest.mark.parametrize("header", ["[" * 20_000, LONE_SURROGATE], ids=["deep", "surrogate"])
def test_a_frame_header_the_host_cannot_use_is_a_protocol_error(header):  # type: ignore[no-untyped-def]
    read_fd, write_fd = os.pipe()
    data = header.encode("utf-8")  # under a pipe's buffer: the write does not block
    os.write(write_fd, FRAME_PREFIX.pack(len(data), 0) + data)
    os.close(write_fd)
    try:
        with pytest.raises(ProtocolError):
            FrameReader(read_fd, deadline=time.monotonic() + 30).read()
    finally:
        os.close(read_fd)


def test_probe_lines_nested_too_deep_are_skipped():
    good = json.dumps({"step": 1, "tokens_seen": 8, "loss_nats": 1.0, "bpb": 1.0, "tokens": 8, "bytes": 8})
    records = parse_probe_lines("\n".join([DEEP, good, LONE_SURROGATE]))
    assert [r["step"] for r in records] == [1]


def _rewrite_header(path: Path, text: bytes) -> None:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])


def _weights(tmp_path: Path) -> tuple[Path, dict]:  # type: ignore[type-arg]
    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(4, 4), "q": torch.zeros(8, dtype=torch.int32)}, str(path))
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    return path, json.loads(raw[8 : 8 + size])


def test_the_file_safetensors_writes_is_accepted_and_integers_cost_their_bytes(tmp_path):  # type: ignore[no-untyped-def]
    path, _ = _weights(tmp_path)
    inventory = inspect_weights(path)
    costs = {entry.name: entry.counted_values for entry in inventory.tensors}
    # a float32 costs one value; an int32 costs its four bytes (shifts take it apart into four int8)
    assert costs == {"w": 16 + 1, "q": 32 + 1}


@pytest.mark.parametrize(
    "spell",
    [
        lambda h: json.dumps(h).encode(),  # spaces after separators: room for bits
        lambda h: json.dumps(h, separators=(",", ":")).encode() + b" " * 16,  # padding past alignment
        lambda h: json.dumps(h, separators=(",", ":")).replace('"w"', '"\\u0077"').encode(),  # an escape
        lambda h: DEEP.encode(),
    ],
    ids=["whitespace", "padding", "escape", "deep"],
)
def test_any_other_spelling_of_the_header_is_refused(tmp_path, spell):  # type: ignore[no-untyped-def]
    path, header = _weights(tmp_path)
    _rewrite_header(path, spell(header))
    with pytest.raises(MinerFault) as excinfo:
        inspect_weights(path)
    assert excinfo.value.code == "budget.weights_invalid"
