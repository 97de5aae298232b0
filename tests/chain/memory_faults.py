"""Injected failures and composed calls of the in-memory chain (see ``memory_substrate``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from bittensor._generated.errors import ERRORS
from bittensor.error_map import DISPATCH_ERRORS

# Module errors of the runtime catalog, and the dispatch-level ones (BadOrigin, Token errors).
KNOWN_ERRORS = {info.name: info.docs for info in ERRORS.values()} | {
    name: description for name, (_code, description) in DISPATCH_ERRORS.items()
}
FaultKind = Literal["dispatch", "pool", "rpc_timeout", "rpc_policy", "hang"]


@dataclass
class Fault:
    """A failure injected into the calls whose name is ``where``.

    ``where`` is ``submit:<call function>`` for extrinsics, ``query:<storage item>``,
    ``query_map:<storage item>``, ``runtime_call:<method>``, or a backend method name
    (``block_number``, ``get_block``, ``connect``). Kinds:

    * ``dispatch``: included in a block, fee paid, failed with the module error ``name``;
    * ``pool``: refused by the node before inclusion with the JSON-RPC error ``payload``;
    * ``rpc_timeout`` / ``rpc_policy``: what ``RpcSubstrate`` raises for a transport timeout and
      for an endpoint refusing traffic (HTTP 429);
    * ``hang``: answers after ``seconds``. A hung write lands ``before`` the delay (the answer is
      lost), ``after`` it (the write lands after the caller gave up) or ``never``.
    """

    where: str
    kind: FaultKind
    name: str | None = None
    payload: dict[str, Any] | None = None
    seconds: float = 0.0
    land: Literal["before", "after", "never"] = "after"
    times: int = 1
    skip: int = 0  # let this many matching calls through first

    def __post_init__(self) -> None:
        if self.kind == "dispatch" and self.name not in KNOWN_ERRORS:
            raise ValueError(f"{self.name!r} is not an error the runtime has")


@dataclass(frozen=True)
class ComposedCall:
    """A call composed against the runtime catalog (the transport's ``GenericCall`` stand-in)."""

    module: str
    function: str
    params: dict[str, Any]

    @property
    def data(self) -> bytes:
        return json.dumps([self.module, self.function, jsonable(self.params)], sort_keys=True).encode()

    @property
    def value(self) -> dict[str, Any]:
        args = [{"name": k, "value": v} for k, v in self.params.items()]
        return {"call_module": self.module, "call_function": self.function, "call_args": args}


def jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
