"""``BittensorChain``: the ``Chain`` protocol on a real subtensor through bittensor 11.

Every SDK call runs on a worker thread and is awaited with a bounded timeout, so a stalled
websocket cannot freeze a validator step. The SDK surface used (bittensor 11.3.0):

* reads: ``Subtensor.block``, ``block_info(block).hash``, ``subnets.metagraph(netuid,
  commitments=False)`` (one ``get_metagraph`` runtime call: neurons, stakes, axons,
  ``LastUpdate``, owner and the weight hyperparameters), ``subnets.commitments(netuid)``,
  ``subnets.info(netuid).tempo``, ``hyperparameters.weights_rate_limit(netuid)``;
* writes: ``execute(ServeAxon(...))``, ``execute(SetWeights(...))`` (preflight, max-weight clip,
  u16 quantization, plaintext or timelocked commit-reveal by the subnet's setting) and
  ``submit_call(calls.Commitments.set_commitment(...), signer="hotkey")``. The runtime charges
  the fee of all three to the coldkey that owns the signing hotkey.

Errors are mapped by the chain's own error name first, then by the SDK's ``ErrorCode``
(``map_sdk_error``); the name is kept as ``chain_name`` on the raised error.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import bittensor as bt
from bittensor import ErrorCode

from prism.chain.base import AxonInfo, Commitment, Metagraph, Neuron, SubnetHyperparams, Wallet, canonical_ip
from prism.chain.errors import (
    BlockUnavailable,
    ChainError,
    ChainRejected,
    ChainTimeout,
    ChainUnavailable,
    InsufficientBalance,
    NamedByChain,
    NotPermitted,
    NotRegistered,
    RateLimited,
    SubnetMissing,
)
from prism.chain.wallets import hotkey_ss58
from prism.errors import OperatorError, PrismError

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_READ_TIMEOUT_S = 30.0
# Extrinsics wait for inclusion (not finalization): one or two 12 s blocks, plus the preflight reads.
DEFAULT_WRITE_TIMEOUT_S = 120.0
MAX_COMMITMENT_BYTES = 128
MAX_IN_FLIGHT = 8  # chain calls running at once (hung ones included)

# Chain error names whose SDK code does not say what PRISM needs to know.
RATE_LIMIT_NAMES = frozenset({"SpaceLimitExceeded"})  # the commitment quota of this epoch is used up
NOT_REGISTERED_NAMES = frozenset({"AccountNotAllowedCommit"})  # commits need a uid on the subnet
NOT_PERMITTED_NAMES = frozenset(
    {"NeuronNoValidatorPermit", "NotEnoughStakeToSetWeights", "StakeAmountTooLow"}
)

# PRISM hyperparameter field -> (key in the get_metagraph record, storage item when the key is absent).
HYPERPARAMS = {
    "weights_rate_limit": ("weights_rate_limit", bt.storage.SubtensorModule.WeightsSetRateLimit),
    "weights_version_key": ("weights_version", bt.storage.SubtensorModule.WeightsVersionKey),
    "commit_reveal": ("commit_reveal_weights_enabled", bt.storage.SubtensorModule.CommitRevealWeightsEnabled),
    "min_allowed_weights": ("min_allowed_weights", bt.storage.SubtensorModule.MinAllowedWeights),
    "serving_rate_limit": ("serving_rate_limit", bt.storage.SubtensorModule.ServingRateLimit),
}


def parse_axon_endpoint(endpoint: str | None) -> AxonInfo | None:
    """``"1.2.3.4:8091"`` / ``"[::1]:8091"`` (the SDK's format) -> AxonInfo; None when unserved."""
    if not endpoint:
        return None
    host, _, port = endpoint.rpartition(":")
    try:
        ip = canonical_ip(host)
        port_number = int(port)
    except ValueError:
        return None
    if not 0 < port_number < 65536 or ip in {"0.0.0.0", "::"}:
        return None
    return AxonInfo(ip=ip, port=port_number)


N = TypeVar("N", bound=NamedByChain)


def _named(error: N, name: str | None) -> N:
    error.chain_name = name
    return error


def _map_chain_error(exc: bt.ChainError, what: str) -> PrismError:
    """By the chain's error name first (exact), then by the SDK's semantic code."""
    name, code = exc.name, exc.code
    message = f"{what}: {exc.message} ({name or code.value})"
    if name in RATE_LIMIT_NAMES:
        return _named(RateLimited(message), name)
    if name in NOT_REGISTERED_NAMES:
        return _named(NotRegistered(message), name)
    if name in NOT_PERMITTED_NAMES:
        return _named(
            NotPermitted(f"{message}; stake more to the hotkey or wait for a validator permit"), name
        )
    by_code: dict[ErrorCode, type[ChainError | NotRegistered | SubnetMissing]] = {
        ErrorCode.RATE_LIMITED: RateLimited,
        ErrorCode.NOT_REGISTERED: NotRegistered,
        ErrorCode.SUBNET_NOT_EXISTS: SubnetMissing,
    }
    if code is ErrorCode.INSUFFICIENT_BALANCE:
        return _named(InsufficientBalance(f"{message}; fund the coldkey that owns the hotkey"), name)
    return _named(by_code.get(code, ChainRejected)(message), name)


def map_sdk_error(exc: BaseException, what: str) -> PrismError:
    """Translate an SDK exception into PRISM's typed chain errors (see docs/protocol.md)."""
    if isinstance(exc, bt.RpcPolicyError):
        detail = f"{exc} (retry after {exc.retry_after} s)" if exc.retry_after else str(exc)
        return ChainUnavailable(
            f"{what}: the RPC endpoint refused the request: {detail}", code="chain.rpc_refused"
        )
    if isinstance(exc, bt.RpcConnectionError | bt.ConnectionNotReady):
        return ChainUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, bt.ChainError):
        return _map_chain_error(exc, what)
    if isinstance(exc, TimeoutError | concurrent.futures.TimeoutError):
        return ChainTimeout(f"{what}: timed out")
    if isinstance(exc, OSError):
        return ChainUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, bt.BittensorError):  # refused by the SDK before anything was signed
        return ChainRejected(f"{what}: {exc}")
    return ChainError(f"{what}: {type(exc).__name__}: {exc}")


def landed_block(result: bt.ExtrinsicResult) -> int | None:
    """The block an extrinsic was included in, from ``ExtrinsicResult.extrinsic_id`` ("block-index")."""
    head, _, _ = str(result.extrinsic_id or "").partition("-")
    return int(head) if head.isdigit() else None


def _stake(balance: bt.Balance) -> float:
    """A metagraph stake in its own unit: alpha on a subnet, TAO on the root network (netuid 0)."""
    return balance.alpha if balance.netuid else balance.tao


class BittensorChain:
    """A subnet on a subtensor node. ``substrate`` replaces the SDK's RPC backend (tests)."""

    def __init__(
        self,
        netuid: int,
        *,
        network: str = "finney",
        endpoint: str | None = None,
        substrate: bt.Substrate | None = None,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
    ) -> None:
        self.netuid = netuid
        self.network = endpoint or network
        # Construction is cold in bittensor 11 (no socket until the first call).
        try:
            self._client = bt.Subtensor(self.network, substrate=substrate)
        except ValueError as exc:  # an unknown network name
            raise OperatorError(str(exc), code="config.invalid") from exc
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        self._in_flight = threading.BoundedSemaphore(MAX_IN_FLIGHT)

    def close(self) -> None:
        try:
            self._client.close()
        except Exception as exc:  # closing is best effort; the process may be exiting
            logger.debug("closing the subtensor client failed: %s", exc)

    def _call(self, what: str, fn: Callable[[], T], *, timeout_s: float) -> T:
        """Run ``fn`` on a daemon thread and wait at most ``timeout_s``.

        Daemon threads, not a pool: a call still hanging on a dead websocket when the neuron
        stops must not keep the process alive. At most ``MAX_IN_FLIGHT`` calls run at once.
        """
        if not self._in_flight.acquire(blocking=False):
            raise ChainUnavailable(
                f"{what}: {MAX_IN_FLIGHT} earlier calls to {self.network} are still hanging"
            )
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting caller below
                future.set_exception(exc)
            finally:
                self._in_flight.release()

        threading.Thread(target=run, name=f"prism-chain-{what}", daemon=True).start()
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise ChainTimeout(f"{what}: no answer from {self.network} within {timeout_s:g} s") from None
        except PrismError:
            raise
        except Exception as exc:
            raise map_sdk_error(exc, what) from exc

    def _read(self, what: str, fn: Callable[[], T]) -> T:
        return self._call(what, fn, timeout_s=self.read_timeout_s)

    def _execute(self, what: str, fn: Callable[[], bt.ExtrinsicResult]) -> bt.ExtrinsicResult:
        """Run an extrinsic and raise on failure (what ``ExtrinsicResult.raise_for_failure`` raises)."""
        result = self._call(what, fn, timeout_s=self.write_timeout_s)
        if not result.success:
            raise map_sdk_error(result.error or bt.ChainError(result.message or "extrinsic failed"), what)
        fee = (
            f", fee {result.fee.tao:.9f} TAO (paid by the hotkey's coldkey)" if result.fee is not None else ""
        )
        logger.info("%s included in block %s%s", what, landed_block(result), fee)
        return result

    # ----------------------------------------------------------------- reads

    def block(self) -> int:
        return int(self._read("block", lambda: self._client.block))

    def block_hash(self, block: int) -> str:
        info = self._read("block_hash", lambda: self._client.block_info(block))
        if info is None or not info.hash:
            raise BlockUnavailable(f"block {block} does not exist on {self.network} yet")
        return str(info.hash)

    def tempo(self) -> int:
        return int(self._read("tempo", lambda: self._client.subnets.info(self.netuid)).tempo)

    def weights_rate_limit(self) -> int:
        return int(
            self._read(
                "weights_rate_limit", lambda: self._client.hyperparameters.weights_rate_limit(self.netuid)
            )
        )

    def _raw_metagraph(self) -> bt.Metagraph:
        graph = self._read(
            "metagraph", lambda: self._client.subnets.metagraph(self.netuid, commitments=False)
        )
        if graph is None:
            raise SubnetMissing(f"subnet {self.netuid} does not exist on {self.network}")
        return graph

    def _hyperparams(self, graph: bt.Metagraph) -> SubnetHyperparams:
        """From the metagraph record; a runtime that leaves a field out is read from storage at the
        metagraph's block."""
        values: dict[str, Any] = {"tempo": int(graph.tempo)}
        for field, (key, item) in HYPERPARAMS.items():
            raw = graph.raw.get(key)
            if raw is None:
                raw = self._read(
                    key, lambda item=item: self._client.query(item, [self.netuid], block=graph.block)
                )
            values[field] = bool(raw) if field == "commit_reveal" else int(raw or 0)
        return SubnetHyperparams(**values)

    def metagraph(self) -> Metagraph:
        graph = self._raw_metagraph()
        neurons = [
            Neuron(
                uid=int(n.uid),
                hotkey=str(n.hotkey),
                coldkey=str(n.coldkey),
                stake=_stake(n.total_stake),
                validator_permit=bool(n.validator_permit),
                axon=parse_axon_endpoint(n.axon),
                last_update=int(n.last_update) or None,
            )
            for n in graph.neurons
        ]
        owner = str(graph.owner_hotkey) if graph.owner_hotkey else None
        return Metagraph(netuid=self.netuid, block=int(graph.block), neurons=neurons,
                         hyperparams=self._hyperparams(graph), owner_hotkey=owner)  # fmt: skip

    def incentives(self) -> dict[int, float]:
        return {int(n.uid): float(n.incentive) for n in self._raw_metagraph().neurons}

    def commitments(self) -> dict[str, Commitment]:
        raw = self._read("commitments", lambda: self._client.subnets.commitments(self.netuid))
        result: dict[str, Commitment] = {}
        for hotkey, entry in raw.items():
            value = entry.value  # None while a timelocked (sealed) payload is not revealed
            if value is None:
                continue
            result[str(hotkey)] = Commitment(hotkey=str(hotkey), data=str(value), block=int(entry.block))
        return result

    def blocks_since_last_update(self, hotkey: str) -> int | None:
        return self.metagraph().blocks_since_last_update(hotkey)

    # ----------------------------------------------------------------- writes

    def commit(self, wallet: Wallet, data: str) -> int:
        payload = data.encode("utf-8")
        if not 0 < len(payload) <= MAX_COMMITMENT_BYTES:
            raise ChainRejected(
                f"commitment must be 1..{MAX_COMMITMENT_BYTES} bytes, got {len(payload)}",
                code="chain.bad_commitment",
            )
        # One Raw<N> field, the Commitments pallet's plain-bytes variant (N = byte length).
        call = bt.calls.Commitments.set_commitment(
            netuid=self.netuid, info={"fields": [{f"Raw{len(payload)}": payload}]}
        )
        result = self._execute(
            "commit",
            lambda: self._client.submit_call(call, wallet, signer="hotkey", wait_for_finalization=False),
        )
        logger.info("committed %r for %s on netuid %d", data, hotkey_ss58(wallet), self.netuid)
        block = landed_block(result)
        return block if block is not None else self.block()

    def serve_axon(self, wallet: Wallet, ip: str, port: int) -> None:
        endpoint = AxonInfo(ip=ip, port=port)
        intent = bt.ServeAxon(netuid=self.netuid, ip=endpoint.ip, port=endpoint.port)
        self._execute("serve_axon", lambda: self._client.execute(intent, wallet, wait_for_finalization=False))

    def set_weights(self, wallet: Wallet, weights: dict[int, float], version_key: int) -> int:
        clean = {int(uid): float(w) for uid, w in weights.items()}
        intent = bt.SetWeights(netuid=self.netuid, uids=None, weights=clean, version_key=version_key)
        result = self._execute(
            "set_weights",
            lambda: self._client.execute(intent, wallet, retries=2, wait_for_finalization=False),
        )
        reveal_round = result.data.get("reveal_round")
        if reveal_round is not None:
            logger.info(
                "weights committed timelocked; the chain reveals them at drand round %s", reveal_round
            )
        block = landed_block(result)
        return block if block is not None else self.block()
