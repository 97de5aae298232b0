"""The state and rules of the in-memory Bittensor chain behind ``MemorySubstrate``.

Storage is keyed exactly like subtensor's (``SubtensorModule.Uids[netuid, hotkey]``,
``SubtensorModule.LastUpdate[netuid]``, ``Commitments.CommitmentOf[netuid, who]``, ...) and
every item and call name is checked against bittensor's generated catalogs, so a read or write
the real runtime does not have fails here too. Values carry the runtime's decoded shapes: rao
integers tagged by the SDK as alpha per netuid, u16 score vectors, axon records with integer IPs
(IPv4 and IPv6), commitment ``Registration`` records with ``Raw<N>`` or ``TimelockEncrypted``
fields, the ``LastUpdate`` vector.

Storage is versioned by block, so block-pinned reads (the SDK's snapshots) see the state of
that block. Extrinsics dispatch with the pallets' rules and error names (a subset: the calls
PRISM makes); ``dispatch`` returns the error name for the receipt, never raises for a chain-side
refusal.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import inspect
import ipaddress
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from bittensor._generated import calls as generated_calls
from bittensor._generated import constants as generated_constants
from bittensor._generated import runtime_apis as generated_apis
from bittensor._generated import storage as generated_storage

SUBTENSOR = "SubtensorModule"
COMMITMENTS = "Commitments"
RAO_PER_TAO = 10**9
U16_MAX = 65535
U64_MAX = 2**64 - 1
COMMITMENT_MIN_SPACE = 100  # each set_commitment uses at least this many bytes of the quota
MAX_COMMITMENT_FIELDS = 3

# Hyperparameter storage items a subnet gets at genesis (the runtime's defaults, or close).
DEFAULT_HYPERPARAMS: dict[str, Any] = {
    "WeightsSetRateLimit": 100,
    "WeightsVersionKey": 0,
    "CommitRevealWeightsEnabled": False,
    "MinAllowedWeights": 0,
    "MaxWeightsLimit": U16_MAX,
    "RevealPeriodEpochs": 1,
    "ServingRateLimit": 50,
    "SubnetEpochConsensus": "Yuma",
    "Burn": RAO_PER_TAO // 2,
    "MaxAllowedUids": 256,
}


def catalog_item(module: str, item: str) -> None:
    """Refuse a storage item the runtime does not have (as a node would)."""
    pallet = getattr(generated_storage, module, None)
    if pallet is None or getattr(pallet, item, None) is None:
        raise KeyError(f"no storage item {module}.{item} in the runtime metadata")


def catalog_call(module: str, function: str, params: dict[str, Any]) -> None:
    """Refuse a call (or parameter names) the runtime does not have."""
    pallet = getattr(generated_calls, module, None)
    builder = getattr(pallet, function, None) if pallet is not None else None
    if builder is None:
        raise KeyError(f"no call {module}.{function} in the runtime metadata")
    expected = list(inspect.signature(builder).parameters)
    if list(params) != expected:
        raise KeyError(f"{module}.{function} takes {expected}, got {list(params)}")


def catalog_runtime(api: str, method: str) -> None:
    container = getattr(generated_apis, api, None)
    if container is None or getattr(container, method, None) is None:
        raise KeyError(f"no runtime API {api}.{method}")


def catalog_constant(module: str, name: str) -> None:
    pallet = getattr(generated_constants, module, None)
    if pallet is None or getattr(pallet, name, None) is None:
        raise KeyError(f"no constant {module}.{name}")


class VersionedStorage:
    """Storage cells with their history: a read at block ``b`` sees the last write at or before ``b``."""

    def __init__(self) -> None:
        self._cells: dict[tuple[str, str, tuple[Any, ...]], list[tuple[int, Any]]] = {}

    def write(self, module: str, item: str, key: tuple[Any, ...], value: Any, block: int) -> None:
        catalog_item(module, item)
        history = self._cells.setdefault((module, item, key), [])
        if history and history[-1][0] > block:
            raise ValueError(f"write to {module}.{item} at block {block} after block {history[-1][0]}")
        if history and history[-1][0] == block:
            history[-1] = (block, copy.deepcopy(value))
        else:
            history.append((block, copy.deepcopy(value)))

    def read(self, module: str, item: str, key: tuple[Any, ...], block: int) -> Any:
        catalog_item(module, item)
        history = self._cells.get((module, item, key))
        if not history:
            return None
        index = bisect.bisect_right([b for b, _ in history], block) - 1
        return copy.deepcopy(history[index][1]) if index >= 0 else None

    def entries(self, module: str, item: str, prefix: tuple[Any, ...], block: int) -> list[tuple[Any, Any]]:
        """``(rest of key, value)`` of every cell under ``prefix`` that has a value at ``block``."""
        catalog_item(module, item)
        out = []
        for cell_module, cell_item, key in list(self._cells):
            if (cell_module, cell_item) != (module, item) or key[: len(prefix)] != prefix:
                continue
            value = self.read(module, item, key, block)
            if value is not None:
                rest = key[len(prefix) :]
                out.append((rest[0] if len(rest) == 1 else rest, value))
        return out


class BlockClock:
    """The chain head. Each extrinsic seals the next block (instant seal); with ``block_time_s``
    the head also advances with wall time, as a producing node would."""

    def __init__(self, start_block: int, block_time_s: float | None) -> None:
        self.block_time_s = block_time_s
        self._start = start_block
        self._sealed = start_block
        self._t0 = time.monotonic()
        self._lock = threading.Lock()

    def head(self) -> int:
        with self._lock:
            return self._head()

    def _head(self) -> int:
        if self.block_time_s:
            ticking = self._start + math.floor((time.monotonic() - self._t0) / self.block_time_s)
            return max(self._sealed, ticking)
        return self._sealed

    def seal(self) -> int:
        """Produce one block for an extrinsic; returns its number."""
        with self._lock:
            self._sealed = self._head() + 1
            return self._sealed

    def advance(self, blocks: int) -> int:
        with self._lock:
            self._sealed = self._head() + blocks
            return self._sealed


def encode_ip(ip: str) -> dict[str, int]:
    address = ipaddress.ip_address(ip)
    return {"ip": int(address), "ip_type": address.version}


def scale_compact_prefix(length: int) -> bytes:
    if length < 64:
        return bytes([length << 2])
    return ((length << 2) | 0b01).to_bytes(2, "little")


@dataclass
class DispatchOutcome:
    """What a dispatched extrinsic did: events on success, or the module error's name."""

    error: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


class MemoryRuntime:
    """Subtensor's state for a few subnets, and the rules of the calls PRISM makes."""

    def __init__(self, *, start_block: int = 1000, block_time_s: float | None = None, slot_ms: int = 250):
        self.storage = VersionedStorage()
        self.clock = BlockClock(start_block, block_time_s)
        self.slot_ms = slot_ms
        self.genesis_ms = 1_700_000_000_000
        self.seed = hashlib.sha256(f"memory-chain:{time.time_ns()}".encode()).hexdigest()
        self.lock = threading.RLock()
        self.events: dict[int, list[dict[str, Any]]] = {}
        self.extrinsics: dict[int, list[dict[str, Any]]] = {}
        self._write_global(0)

    # ----------------------------------------------------------------- blocks

    def block_hash(self, block: int) -> str:
        return "0x" + hashlib.sha256(f"{self.seed}:{block}".encode()).hexdigest()

    def block_of_hash(self, block_hash: str) -> int:
        head = self.clock.head()
        for block in range(head, -1, -1):
            if self.block_hash(block) == block_hash:
                return block
        raise KeyError(f"unknown block hash {block_hash}")

    def timestamp_ms(self, block: int) -> int:
        return self.genesis_ms + block * self.slot_ms

    # ----------------------------------------------------------------- genesis helpers

    def _write_global(self, block: int) -> None:
        self.storage.write(SUBTENSOR, "TaoWeight", (), U64_MAX // 5, block)  # root stake counts 20 %
        self.storage.write(SUBTENSOR, "StakeThreshold", (), 0, block)
        self.storage.write(COMMITMENTS, "MaxSpace", (), 3100, block)

    def write(
        self, module: str, item: str, key: tuple[Any, ...], value: Any, block: int | None = None
    ) -> None:
        with self.lock:
            self.storage.write(module, item, key, value, self.clock.head() if block is None else block)

    def read(self, module: str, item: str, key: tuple[Any, ...], block: int | None = None) -> Any:
        block = self.clock.head() if block is None else block
        with self.lock:
            derived = self._derived(module, item, key, block)
            return derived if derived is not None else self.storage.read(module, item, key, block)

    def add_subnet(
        self,
        netuid: int,
        *,
        tempo: int,
        owner_hotkey: str,
        owner_coldkey: str,
        symbol: str = "γ",
        **hyperparams: Any,
    ) -> None:
        block = self.clock.head()
        self.write(SUBTENSOR, "NetworksAdded", (netuid,), True, block)
        self.write(SUBTENSOR, "Tempo", (netuid,), tempo, block)
        self.write(SUBTENSOR, "SubnetOwner", (netuid,), owner_coldkey, block)
        self.write(SUBTENSOR, "SubnetOwnerHotkey", (netuid,), owner_hotkey, block)
        self.write(SUBTENSOR, "TokenSymbol", (netuid,), symbol.encode(), block)
        self.write(SUBTENSOR, "NetworkRegisteredAt", (netuid,), max(0, block - 10_000), block)
        self.write(SUBTENSOR, "SubnetworkN", (netuid,), 0, block)
        for vector in ("LastUpdate", "ValidatorPermit", "Active", "Incentive", "Dividends", "Emission"):
            self.write(SUBTENSOR, vector, (netuid,), [], block)
        for item, value in {**DEFAULT_HYPERPARAMS, **hyperparams}.items():
            self.write(SUBTENSOR, item, (netuid,), value, block)

    def register(
        self,
        netuid: int,
        hotkey: str,
        coldkey: str,
        *,
        alpha: float = 0.0,
        root_tao: float = 0.0,
        permit: bool = False,
        axon: tuple[str, int] | None = None,
        last_update: int | None = None,
        incentive: float = 0.0,
    ) -> int:
        """Register ``hotkey`` under ``coldkey`` with a stake in alpha (and optionally root TAO)."""
        with self.lock:
            block = self.clock.head()
            uid = int(self.read(SUBTENSOR, "SubnetworkN", (netuid,)) or 0)
            self.write(SUBTENSOR, "SubnetworkN", (netuid,), uid + 1, block)
            self.write(SUBTENSOR, "Uids", (netuid, hotkey), uid, block)
            self.write(SUBTENSOR, "Keys", (netuid, uid), hotkey, block)
            self.write(SUBTENSOR, "Owner", (hotkey,), coldkey, block)
            self.write(SUBTENSOR, "BlockAtRegistration", (netuid, uid), block, block)
            self.write(SUBTENSOR, "TotalHotkeyAlpha", (hotkey, netuid), round(alpha * RAO_PER_TAO), block)
            self.write(SUBTENSOR, "TotalHotkeyAlpha", (hotkey, 0), round(root_tao * RAO_PER_TAO), block)
            appended = {
                "LastUpdate": block if last_update is None else last_update,
                "ValidatorPermit": permit,
                "Active": True,
                "Incentive": round(incentive * U16_MAX),
                "Dividends": 0,
                "Emission": 0,
            }
            for vector, value in appended.items():
                current = self.read(SUBTENSOR, vector, (netuid,)) or []
                self.write(SUBTENSOR, vector, (netuid,), [*current, value], block)
            if axon is not None:
                record = {
                    "block": block,
                    "version": 1,
                    "port": axon[1],
                    "protocol": 4,
                    "placeholder1": 0,
                    "placeholder2": 0,
                    **encode_ip(axon[0]),
                }
                self.write(SUBTENSOR, "Axons", (netuid, hotkey), record, block)
            return uid

    def fund(self, account: str, tao: float) -> None:
        info = self.read("System", "Account", (account,)) or {
            "nonce": 0,
            "consumers": 0,
            "providers": 1,
            "sufficients": 0,
            "data": {"free": 0, "reserved": 0, "frozen": 0, "flags": 0},
        }
        info["data"]["free"] += round(tao * RAO_PER_TAO)
        self.write("System", "Account", (account,), info)

    def free_balance(self, account: str) -> int:
        info = self.read("System", "Account", (account,))
        return int(info["data"]["free"]) if info else 0

    def put_commitment(self, netuid: int, hotkey: str, fields: list[Any], *, block: int) -> None:
        record = {"deposit": 0, "block": block, "info": {"fields": fields}}
        self.write(COMMITMENTS, "CommitmentOf", (netuid, hotkey), record)

    def put_revealed(self, netuid: int, hotkey: str, text: str, *, reveal_block: int) -> None:
        payload = text.encode()
        data = "0x" + (scale_compact_prefix(len(payload)) + payload).hex()
        current = self.read(COMMITMENTS, "RevealedCommitments", (netuid, hotkey)) or []
        self.write(COMMITMENTS, "RevealedCommitments", (netuid, hotkey), [*current, (data, reveal_block)])

    # ----------------------------------------------------------------- derived storage

    def _epoch(self, netuid: int, block: int) -> tuple[int, int, int]:
        """(last epoch block, epochs run, blocks since the last step): an epoch runs at every block
        where ``(block + netuid + 1) % (tempo + 1) == 0``, as subtensor schedules it."""
        tempo = int(self.storage.read(SUBTENSOR, "Tempo", (netuid,), block) or 0)
        if tempo == 0:
            return 0, 0, 0
        period = tempo + 1
        last = block - ((block + netuid + 1) % period)
        return max(0, last), max(0, last + netuid + 1) // period, block - max(0, last)

    def _derived(self, module: str, item: str, key: tuple[Any, ...], block: int) -> Any:
        if module == "Timestamp" and item == "Now":
            return self.timestamp_ms(block)
        if module != SUBTENSOR or item not in {"LastEpochBlock", "SubnetEpochIndex", "BlocksSinceLastStep"}:
            return None
        last, index, since = self._epoch(int(key[0]), block)
        return {"LastEpochBlock": last, "SubnetEpochIndex": index, "BlocksSinceLastStep": since}[item]

    # ----------------------------------------------------------------- dispatch

    def stake_weight(self, netuid: int, hotkey: str, block: int) -> int:
        """Alpha stake plus root TAO stake times ``TaoWeight``, in rao (the chain's stake weight)."""
        tao_weight = int(self.read(SUBTENSOR, "TaoWeight", (), block)) / U64_MAX
        alpha = int(self.read(SUBTENSOR, "TotalHotkeyAlpha", (hotkey, netuid), block) or 0)
        root = int(self.read(SUBTENSOR, "TotalHotkeyAlpha", (hotkey, 0), block) or 0)
        return alpha + round(root * tao_weight)

    def uid_of(self, netuid: int, hotkey: str, block: int) -> int | None:
        uid = self.read(SUBTENSOR, "Uids", (netuid, hotkey), block)
        return None if uid is None else int(uid)

    def dispatch(
        self, module: str, function: str, params: dict[str, Any], signer: str, block: int
    ) -> DispatchOutcome:
        from memory_pallets import DISPATCH

        handler = DISPATCH.get((module, function))
        if handler is None:
            raise KeyError(f"the in-memory chain does not model {module}.{function}")
        with self.lock:
            return handler(self, params, signer, block)

    def metagraph(self, netuid: int, block: int, *, with_hyperparams: bool = True) -> dict[str, Any] | None:
        """``SubnetInfoRuntimeApi.get_metagraph`` at ``block`` (see ``memory_pallets``)."""
        from memory_pallets import get_metagraph

        with self.lock:
            return get_metagraph(self, netuid, block, with_hyperparams=with_hyperparams)
