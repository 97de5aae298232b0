"""An in-memory implementation of bittensor 11.3.0's ``Substrate`` backend (``bittensor/_substrate.py``).

This is the only simulated layer in the chain tests. Everything above it is the real SDK:
``bt.Subtensor`` / ``SyncClient``, ``Client``, the typed namespaces and reads, the metagraph
decoder, the ``SetWeights`` / ``ServeAxon`` intents with their preflight and commit-reveal
branch, the ``Executor``, the fee filters and the error classification. Two ways in:

* ``bt.Subtensor(network, substrate=backend)``: what ``BittensorChain(..., substrate=backend)``
  builds;
* ``backend.install()``: every ``bittensor.Client`` built afterwards gets this backend instead of
  ``RpcSubstrate`` (how the neuron entry points are run unmodified, see ``memory_chain_run.py``).

Writes behave like a node: the call is composed against the runtime catalog, signed by the
wallet's real key and the signature verified, the fee charged to whoever the runtime charges
(the hotkey owner's coldkey for weights, serving and commitments), dispatched with the pallet's
rules (``memory_runtime``) in a freshly sealed block, and the receipt decoded by the SDK's own
``RpcSubstrate`` receipt decoder. Faults are injected at this layer with :class:`Fault`: module
errors by their real names, pool rejections (the node's JSON-RPC error payloads), RPC timeouts
and policy refusals as the RPC backend raises them, hangs, and writes that land after the caller
stopped waiting.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bittensor
from bittensor import Balance, ChainError, ConnectionNotReady, ExtrinsicResult
from bittensor._generated.calls import Call
from bittensor._substrate import RpcSubstrate, _public_rpc_error
from bittensor._transport.contract import InclusionReport
from bittensor._transport.errors import RpcPolicyRejection, SubstrateRequestException
from bittensor.fee_filters import charges_coldkey_fee
from bittensor.result import chain_error_from_substrate_request
from bittensor.sp_core import verify
from memory_faults import KNOWN_ERRORS, ComposedCall, Fault, jsonable
from memory_runtime import (
    RAO_PER_TAO,
    MemoryRuntime,
    catalog_call,
    catalog_constant,
    catalog_runtime,
)

# Fee per call in rao (the runtime's weight fee is of this order: ~0.0001 TAO).
FEES = {
    "set_mechanism_weights": 120_000,
    "commit_timelocked_mechanism_weights": 310_000,
    "serve_axon": 70_000,
    "set_commitment": 95_000,
}
PAYMENT_REJECTION = {
    "error": {
        "code": 1010,
        "message": "Invalid Transaction",
        "data": "Inability to pay some fees (e.g. account balance too low)",
    }
}


class MemorySubstrate:
    """bittensor's ``Substrate`` protocol over a :class:`MemoryRuntime`."""

    def __init__(
        self, runtime: MemoryRuntime | None = None, *, journal: Path | None = None, **runtime_options: Any
    ):
        self.runtime = runtime or MemoryRuntime(**runtime_options)
        self.token_symbols: dict[int, str] = {}
        self.faults: list[Fault] = []
        self.calls: collections.Counter[str] = collections.Counter()
        self.extrinsics: list[dict[str, Any]] = []
        self.endpoints: list[str] = []
        self.metagraph_hyperparams = True  # False: a runtime whose metagraph omits hyperparameters
        self._journal = journal
        self._connections = 0
        self._lock = threading.Lock()
        self._decoder = RpcSubstrate("ws://memory.invalid:9944")  # cold: only its receipt decoder is used

    # ----------------------------------------------------------------- test controls

    def inject(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def install(self) -> None:
        """Make every ``bittensor.Client`` built from now on use this backend instead of RPC."""
        bittensor.client.RpcSubstrate = self.rpc_factory

    def rpc_factory(self, endpoint: str, **_options: Any) -> MemorySubstrate:
        self.endpoints.append(endpoint)
        return self

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.extrinsics.append(entry)
        if self._journal is not None:
            with self._journal.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")

    def _take_fault(self, where: str) -> Fault | None:
        with self._lock:
            self.calls[where] += 1
            for fault in self.faults:
                if fault.where == where and fault.times > 0:
                    if fault.skip > 0:
                        fault.skip -= 1
                        return None
                    fault.times -= 1
                    return fault
        return None

    async def _enter(self, where: str) -> Fault | None:
        """Count the call and apply an injected RPC failure or read hang; returns write faults."""
        fault = self._take_fault(where)
        if fault is None:
            return None
        self._record(
            {"fault": where, "kind": fault.kind, "name": fault.name, "block": self.runtime.clock.head()}
        )
        if fault.kind == "rpc_timeout":
            raise _public_rpc_error(TimeoutError())
        if fault.kind == "rpc_policy":
            raise _public_rpc_error(
                RpcPolicyRejection(
                    "HTTP 429 Too Many Requests",
                    status_code=429,
                    retry_after="6",
                    policy="public-rpc",
                    reason="rate",
                )
            )
        if fault.kind == "hang" and not where.startswith("submit:"):
            await asyncio.sleep(fault.seconds)
            return None
        return fault

    def _require_connection(self) -> None:
        if self._connections == 0:
            raise ConnectionNotReady("Client connection is not open. Use `async with Client(...)` first.")

    def _block_at(self, block_hash: str | None) -> int:
        self._require_connection()
        if block_hash is None:
            return self.runtime.clock.head()
        try:
            return self.runtime.block_of_hash(block_hash)
        except KeyError as exc:
            raise ChainError(f"State for block {block_hash} not found") from exc

    # ----------------------------------------------------------------- display metadata, lifecycle

    def balance(self, rao: int, netuid: int = 0) -> Balance:
        return Balance(int(rao), netuid, self.token_symbols.get(netuid) if netuid else None)

    async def connect(self) -> None:
        """Each client sharing this backend opens its own connection (counted, like sockets)."""
        await self._enter("connect")
        with self._lock:
            self._connections += 1

    async def close(self) -> None:
        with self._lock:
            self._connections = max(0, self._connections - 1)

    # ----------------------------------------------------------------- reads

    async def block_hash(self, block: int | None = None) -> str:
        await self._enter("block_hash")
        head = self._block_at(None)
        block = head if block is None else block
        if not 0 <= block <= head:
            raise ChainError(f"block {block} not found (head is {head})")
        return self.runtime.block_hash(block)

    async def block_number(self) -> int:
        await self._enter("block_number")
        return self._block_at(None)

    async def finalized_block_number(self) -> int:
        return self._block_at(None)

    async def block_time(self) -> float:
        return self.runtime.slot_ms / 1000.0

    async def spec_version(self) -> int:
        return 400

    async def get_block(self, block_number: int | None = None, block_hash: str | None = None) -> dict | None:
        await self._enter("get_block")
        head = self._block_at(None)
        number = (
            self._block_at(block_hash)
            if block_hash is not None
            else (head if block_number is None else block_number)
        )
        if not 0 <= number <= head:
            return None
        header = {
            "number": number,
            "hash": self.runtime.block_hash(number),
            "parentHash": self.runtime.block_hash(number - 1) if number else "0x" + "00" * 32,
        }
        stamp = {
            "call": {
                "call_module": "Timestamp",
                "call_function": "set",
                "call_args": [{"name": "now", "value": self.runtime.timestamp_ms(number)}],
            }
        }
        return {"header": header, "extrinsics": [stamp, *self.runtime.extrinsics.get(number, [])]}

    async def query(
        self, module: str, storage_function: str, params: list | None = None, block_hash: str | None = None
    ) -> Any:
        await self._enter(f"query:{storage_function}")
        block = self._block_at(block_hash)
        return self._storage_read(module, storage_function, tuple(params or ()), block)

    def _storage_read(self, module: str, item: str, key: tuple[Any, ...], block: int) -> Any:
        try:
            return self.runtime.read(module, item, key, block)
        except KeyError as exc:
            raise ChainError(str(exc)) from exc

    async def map_has_entries(
        self, module: str, storage_function: str, params: list, block_hash: str | None = None
    ) -> bool:
        return bool(await self.query_map(module, storage_function, params, block_hash))

    async def query_map(
        self, module: str, storage_function: str, params: list | None = None, block_hash: str | None = None
    ) -> list[tuple[Any, Any]]:
        await self._enter(f"query_map:{storage_function}")
        block = self._block_at(block_hash)
        try:
            with self.runtime.lock:
                return self.runtime.storage.entries(module, storage_function, tuple(params or ()), block)
        except KeyError as exc:
            raise ChainError(str(exc)) from exc

    async def query_batch(
        self, module: str, storage_function: str, param_sets: list[list], block_hash: str | None = None
    ) -> list[Any]:
        return [await self.query(module, storage_function, params, block_hash) for params in param_sets]

    async def runtime_call(self, api: str, method: str, params: list, block_hash: str | None = None) -> Any:
        await self._enter(f"runtime_call:{method}")
        block = self._block_at(block_hash)
        try:
            catalog_runtime(api, method)
        except KeyError as exc:
            raise ChainError(str(exc)) from exc
        if method == "get_metagraph":
            return self.runtime.metagraph(int(params[0]), block, with_hyperparams=self.metagraph_hyperparams)
        if method == "get_next_epoch_start_block":
            tempo = int(self._storage_read("SubtensorModule", "Tempo", (int(params[0]),), block) or 0)
            last = self._storage_read("SubtensorModule", "LastEpochBlock", (int(params[0]),), block)
            return None if tempo == 0 else int(last) + tempo + 1
        raise ChainError(f"the in-memory runtime does not model {api}.{method}")

    async def constant(self, module: str, name: str) -> Any:
        try:
            catalog_constant(module, name)
        except KeyError as exc:
            raise ChainError(str(exc)) from exc
        values = {("Aura", "SlotDuration"): self.runtime.slot_ms, ("Commitments", "MaxFields"): 3}
        if (module, name) not in values:
            raise ChainError(f"the in-memory runtime does not model the constant {module}.{name}")
        return values[(module, name)]

    async def decode_scale(self, type_string: str, data: Any) -> Any:
        raise ChainError(f"the in-memory chain does not decode SCALE ({type_string})")

    async def blocks(self, *, finalized: bool = False) -> AsyncIterator[dict]:
        seen = self._block_at(None)
        while True:
            await asyncio.sleep(self.runtime.slot_ms / 2000.0)
            head = self._block_at(None)
            for number in range(seen + 1, head + 1):
                yield {"header": {"number": number, "parentHash": self.runtime.block_hash(number - 1)}}
            seen = max(seen, head)

    async def events(self, block_hash: str | None = None) -> list[dict]:
        return list(self.runtime.events.get(self._block_at(block_hash), []))

    # ----------------------------------------------------------------- calls and fees

    async def compose(self, call: Call) -> ComposedCall:
        module, function, params = call
        try:
            catalog_call(module, function, dict(params))
        except KeyError as exc:
            raise ChainError(str(exc)) from exc
        if (module, function) == ("Commitments", "set_commitment"):
            for entry in params["info"]["fields"]:
                for variant, value in entry.items():
                    if variant.startswith("Raw") and len(bytes(value)) != int(variant[3:]):
                        raise ChainError(f"cannot encode {variant} from {len(bytes(value))} bytes")
        return ComposedCall(module, function, dict(params))

    async def estimate_fee(self, call: ComposedCall, keypair: Any) -> Balance:
        return Balance.from_rao(FEES.get(call.function, 100_000))

    async def estimate_weight(self, call: ComposedCall, keypair: Any) -> dict:
        return {"ref_time": 1_000_000_000, "proof_size": 4096}

    async def account_next_index(self, address: str) -> int:
        info = self._storage_read("System", "Account", (address,), self._block_at(None))
        return int(info["nonce"]) if info else 0

    async def mev_next_key(self) -> bytes | None:
        return None  # no MevShield on this chain

    async def sign_extrinsic(self, call: Any, keypair: Any, *, nonce: int, period: int) -> tuple[bytes, str]:
        raise ChainError("the in-memory chain does not model shielded submission")

    async def find_extrinsic(self, extrinsic_hash: str, block_hash: str) -> ExtrinsicResult | None:
        raise ChainError("the in-memory chain does not model shielded submission")

    async def prepare(self, call: Any, **_kwargs: Any) -> Any:
        raise ChainError("the in-memory chain does not model out-of-process signing")

    async def submit_signature(self, unsigned: Any, signature: Any, **_kwargs: Any) -> ExtrinsicResult:
        raise ChainError("the in-memory chain does not model out-of-process signing")

    async def submit_signed(self, extrinsic: Any, keypair: Any, **_kwargs: Any) -> ExtrinsicResult:
        raise ChainError("the in-memory chain does not model pre-signed extrinsics")

    def multisig_account(self, signatories: list[str], threshold: int) -> Any:
        raise ChainError("the in-memory chain does not model multisig")

    async def submit_multisig(
        self, call: Any, keypair: Any, multisig_account: Any, **_kwargs: Any
    ) -> ExtrinsicResult:
        raise ChainError("the in-memory chain does not model multisig")

    # ----------------------------------------------------------------- writes

    async def submit(
        self,
        call: ComposedCall,
        keypair: Any,
        *,
        nonce: int | None = None,
        period: int | None = 128,
        wait_for_inclusion: bool = True,
        wait_for_finalization: bool = True,
    ) -> ExtrinsicResult:
        self._require_connection()
        fault = await self._enter(f"submit:{call.function}")
        if fault is not None and fault.kind == "pool":
            return self._pool_rejected(fault.payload or {}, call, keypair.ss58_address)
        rejection = await self._pool_checks(call, keypair)
        if rejection is not None:
            return self._pool_rejected(rejection, call, keypair.ss58_address)
        waited = wait_for_inclusion or wait_for_finalization
        forced = fault.name if fault is not None and fault.kind == "dispatch" else None
        if fault is None or fault.kind != "hang":
            return self._include(call, keypair.ss58_address, forced, waited)
        if fault.land == "before":
            result = self._include(call, keypair.ss58_address, None, waited)
            await asyncio.sleep(fault.seconds)
            return result
        await asyncio.sleep(fault.seconds)
        if fault.land == "never":
            raise _public_rpc_error(TimeoutError())
        return self._include(call, keypair.ss58_address, None, waited)

    async def _pool_checks(self, call: ComposedCall, keypair: Any) -> dict[str, Any] | None:
        """What the node's transaction pool checks: the signature, and that the payer can pay."""
        payload = call.data
        signature = keypair.sign(payload)
        if inspect.isawaitable(signature):
            signature = await signature
        if not verify(payload, bytes(signature), keypair.ss58_address, int(keypair.crypto_type)):
            return {
                "error": {
                    "code": 1010,
                    "message": "Invalid Transaction",
                    "data": "Transaction has a bad signature",
                }
            }
        if self.runtime.free_balance(self._payer(call, keypair.ss58_address)) < FEES.get(
            call.function, 100_000
        ):
            return PAYMENT_REJECTION
        return None

    def _payer(self, call: ComposedCall, signer: str) -> str:
        """The runtime's fee filter: weights, serving and commitments are paid by the hotkey's owner."""
        if charges_coldkey_fee(call):
            owner = self.runtime.read("SubtensorModule", "Owner", (signer,))
            if owner is not None:
                return str(owner)
        return signer

    def _pool_rejected(self, payload: dict[str, Any], call: ComposedCall, signer: str) -> ExtrinsicResult:
        """As ``RpcSubstrate._failed_submit`` reports a pool rejection."""
        error = chain_error_from_substrate_request(SubstrateRequestException(payload))
        self._record(
            {
                "call": f"{call.module}.{call.function}",
                "signer": signer,
                "success": False,
                "included": False,
                "error": error.name,
                "message": error.message,
                "block": self.runtime.clock.head(),
            }
        )
        return ExtrinsicResult(success=False, message=error.message, error=error)

    def _include(
        self, call: ComposedCall, signer: str, forced_error: str | None, waited: bool
    ) -> ExtrinsicResult:
        """Seal a block holding this extrinsic: charge the fee, dispatch, decode the receipt."""
        runtime = self.runtime
        fee = FEES.get(call.function, 100_000)
        with runtime.lock:
            block = runtime.clock.seal()
            self._charge(self._payer(call, signer), signer, fee)
            if forced_error is not None:
                outcome_error, events = forced_error, []
            else:
                outcome = runtime.dispatch(call.module, call.function, call.params, signer, block)
                outcome_error, events = outcome.error, outcome.events
            events = [
                *events,
                _fee_event(signer, fee),
                _system_event("ExtrinsicSuccess" if outcome_error is None else "ExtrinsicFailed"),
            ]
            runtime.events.setdefault(block, []).extend(events)
            runtime.extrinsics.setdefault(block, []).append({"call": call.value})
        self._record(
            {
                "call": f"{call.module}.{call.function}",
                "signer": signer,
                "success": outcome_error is None,
                "included": True,
                "error": outcome_error,
                "block": block,
                "fee": fee,
                "params": jsonable(call.params),
            }
        )
        error_message = None
        if outcome_error is not None:
            error_message = {
                "type": "Module",
                "name": outcome_error,
                "docs": [KNOWN_ERRORS[outcome_error]],
            }
        report = InclusionReport(
            extrinsic_hash="0x" + runtime.block_hash(block)[2:34],
            finalized=True,
            block_hash=runtime.block_hash(block),
            block_number=block,
            extrinsic_idx=1,
            is_success=outcome_error is None,
            total_fee_amount=fee,
            triggered_events=events,
            error_message=error_message,
        )
        return self._decoder._result_from_report(report, waited)

    def _charge(self, payer: str, signer: str, fee: int) -> None:
        runtime = self.runtime
        info = runtime.read("System", "Account", (payer,))
        info["data"]["free"] -= fee
        runtime.write("System", "Account", (payer,), info)
        signer_info = runtime.read("System", "Account", (signer,)) or {"nonce": 0, "data": {"free": 0}}
        signer_info["nonce"] = int(signer_info["nonce"]) + 1
        runtime.write("System", "Account", (signer,), signer_info)


def _fee_event(who: str, fee: int) -> dict[str, Any]:
    return {
        "phase": "ApplyExtrinsic",
        "event": {
            "module_id": "TransactionPayment",
            "event_id": "TransactionFeePaid",
            "attributes": {"who": who, "actual_fee": fee, "tip": 0},
        },
    }


def _system_event(name: str) -> dict[str, Any]:
    return {"phase": "ApplyExtrinsic", "event": {"module_id": "System", "event_id": name, "attributes": {}}}


def tao(amount: float) -> int:
    return round(amount * RAO_PER_TAO)
