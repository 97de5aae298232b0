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
from prism.evaluator.budgets import check_budgets, count_layers_from_names, inspect_weights
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


def test_byte_identical_tensors_are_counted_once_and_a_near_copy_in_full(tmp_path):  # type: ignore[no-untyped-def]
    """A tied weight, cloned into two tensors, is one tensor's worth of values; a tensor that
    differs from it in one value is not a repeat and costs its own size."""
    emb = torch.randn(64, 16)
    near = emb.clone()
    near[3, 5] += 1.0
    path = tmp_path / "weights.safetensors"
    save_file({"emb.weight": emb, "head.weight": emb.clone(), "other.weight": near}, str(path))
    inventory = inspect_weights(path)
    by_name = {entry.name: entry for entry in inventory.tensors}
    repeats = {name: entry.repeat_of for name, entry in by_name.items() if entry.repeat_of}
    assert repeats in ({"head.weight": "emb.weight"}, {"emb.weight": "head.weight"})
    assert by_name["other.weight"].repeat_of is None
    assert inventory.parameter_count == 2 * 64 * 16  # emb (once) and the near copy
    assert inventory.tied_values == 64 * 16
    assert inventory.file_elements == 3 * 64 * 16
    (repeat,) = repeats
    # a repeat costs its name and one value (which tensor it repeats), never its elements
    assert by_name[repeat].counted_values == 1 + 3
    assert inventory.counted_values == 2 * (64 * 16 + 3) + 1 + 3
    check_budgets(inventory, max_parameters=inventory.counted_values, max_layers=1)
    with pytest.raises(MinerFault) as excinfo:
        check_budgets(inventory, max_parameters=inventory.counted_values - 1, max_layers=1)
    assert excinfo.value.code == "budget.parameters_exceeded"


def test_same_bytes_in_another_dtype_or_shape_are_not_a_repeat(tmp_path):  # type: ignore[no-untyped-def]
    base = torch.arange(16, dtype=torch.int32)
    path = tmp_path / "weights.safetensors"
    save_file({"a": base, "b": base.clone().view(4, 4), "c": base.clone().view(torch.float32)}, str(path))
    inventory = inspect_weights(path)
    assert inventory.tied_values == 0
    assert all(entry.repeat_of is None for entry in inventory.tensors)
    assert inventory.parameter_count == 48


def test_one_module_listed_n_times_is_one_layer(tmp_path):  # type: ignore[no-untyped-def]
    """``nn.ModuleList([block] * 4)``: four keys per tensor, one module, one layer (as the model's
    own count reads it); four distinct blocks are four layers even when their shapes match."""
    block = torch.nn.Linear(8, 8)
    shared = torch.nn.ModuleDict({"blocks": torch.nn.ModuleList([block] * 4)})
    distinct = torch.nn.ModuleDict({"blocks": torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(4)])})
    for model, layers, elements in ((shared, 1, 72), (distinct, 4, 4 * 72)):
        path = tmp_path / f"{layers}.safetensors"
        save_file({k: v.detach().clone() for k, v in model.state_dict().items()}, str(path))
        inventory = inspect_weights(path)
        assert (inventory.layer_count, inventory.parameter_count) == (layers, elements)
    assert count_layers_from_names(["blocks.0.w", "blocks.1.w", "blocks.2.w"]) == 3
    same = {"blocks.0.w": "x", "blocks.1.w": "x", "blocks.2.w": "y"}
    assert count_layers_from_names(list(same), same) == 2
