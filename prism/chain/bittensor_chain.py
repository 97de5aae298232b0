"""``BittensorChain``: the ``Chain`` protocol on a real subtensor through bittensor 11.

Every SDK call runs on a worker thread and is awaited with a bounded timeout, so a stalled
websocket cannot freeze a validator step. SDK failures are mapped to PRISM's typed errors:

* ``bt.ChainError`` with code ``rate_limited`` -> ``RateLimited``; ``not_registered`` ->
  ``NotRegistered``; any other on-chain refusal -> ``ChainRejected``;
* connection problems (``RpcConnectionError``, ``ConnectionNotReady``, ``OSError``) ->
  ``ChainUnavailable``; a call over its budget -> ``ChainTimeout``.

The SDK surface used (read from the installed bittensor 11.3.0 source): ``Subtensor.block``,
``subnets.metagraph(netuid, commitments=False)``, ``subnets.commitments(netuid)``,
``subnets.info(netuid).tempo``, ``hyperparameters.weights_rate_limit(netuid)``,
``epochs.blocks_since_last_update(netuid, uid)``, ``execute(ServeAxon(...), wallet)``,
``execute(SetWeights(...), wallet)`` (what ``bt.set_weights`` runs) and
``submit_call(calls.Commitments.set_commitment(...), wallet, signer="hotkey")``.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import bittensor as bt

from prism.chain.base import AxonInfo, Commitment, Metagraph, Neuron, Wallet
from prism.chain.errors import (
    ChainError,
    ChainRejected,
    ChainTimeout,
    ChainUnavailable,
    NotRegistered,
    RateLimited,
    SubnetMissing,
)
from prism.chain.wallets import hotkey_ss58
from prism.errors import OperatorError

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_READ_TIMEOUT_S = 30.0
# Extrinsics wait for inclusion (and finalization): a few 12 s blocks.
DEFAULT_WRITE_TIMEOUT_S = 120.0


def _balance_to_float(value: Any) -> float:
    """A ``bt.Balance`` (or a plain number in fakes) as a float in its own units."""
    if value is None:
        return 0.0
    tao = getattr(value, "tao", None)
    return float(tao if tao is not None else value)


def parse_axon_endpoint(endpoint: str | None) -> AxonInfo | None:
    """``"1.2.3.4:8091"`` / ``"[::1]:8091"`` (the SDK's format) -> AxonInfo; None when unserved."""
    if not endpoint:
        return None
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        port_number = int(port)
        if not 0 < port_number < 65536:
            return None
    except ValueError:
        return None
    if host in {"0.0.0.0", "::"}:
        return None
    return AxonInfo(ip=host, port=port_number)


def map_sdk_error(exc: BaseException, what: str) -> ChainError | NotRegistered:
    """Translate an SDK exception into PRISM's typed chain errors."""
    if isinstance(exc, bt.ChainError):
        code = getattr(getattr(exc, "code", None), "value", None)
        if code == "rate_limited":
            return RateLimited(f"{what}: {exc.message}")
        if code == "not_registered":
            return NotRegistered(f"{what}: {exc.message}")
        return ChainRejected(f"{what}: {exc.message} ({exc.name or code})")
    if isinstance(exc, bt.RpcConnectionError | bt.ConnectionNotReady | OSError | ConnectionError):
        return ChainUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, TimeoutError | concurrent.futures.TimeoutError):
        return ChainTimeout(f"{what}: timed out")
    return ChainError(f"{what}: {type(exc).__name__}: {exc}")


def landed_block(result: Any) -> int | None:
    """The block an extrinsic was included in, from ``ExtrinsicResult.extrinsic_id`` ("block-index")."""
    extrinsic_id = getattr(result, "extrinsic_id", None)
    if not extrinsic_id:
        return None
    head, _, _ = str(extrinsic_id).partition("-")
    return int(head) if head.isdigit() else None


class BittensorChain:
    """A subnet on a subtensor node. ``client`` may be injected (tests use a fake at this edge)."""

    def __init__(
        self,
        netuid: int,
        *,
        network: str = "finney",
        endpoint: str | None = None,
        client: Any | None = None,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
    ) -> None:
        self.netuid = netuid
        self.network = endpoint or network
        # Construction is cold in bittensor 11 (no socket until the first call).
        try:
            self._client = client if client is not None else bt.Subtensor(self.network)
        except ValueError as exc:  # an unknown network name
            raise OperatorError(str(exc), code="config.invalid") from exc
        self.read_timeout_s = read_timeout_s
        self.write_timeout_s = write_timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="prism-chain")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        close = getattr(self._client, "close", None)
        if callable(close):
            try:
                close()
            except Exception as exc:  # closing is best effort; the process may be exiting
                logger.debug("closing the subtensor client failed: %s", exc)

    def _call(self, what: str, fn: Callable[[], T], *, timeout_s: float) -> T:
        future = self._pool.submit(fn)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ChainTimeout(f"{what}: no answer from {self.network} within {timeout_s:g} s") from None
        except (ChainError, NotRegistered, SubnetMissing):
            raise
        except Exception as exc:
            raise map_sdk_error(exc, what) from exc

    def _execute(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run an extrinsic and raise on failure (``ExtrinsicResult.raise_for_failure``)."""
        result = self._call(what, fn, timeout_s=self.write_timeout_s)
        if result is not None and not getattr(result, "success", True):
            raise map_sdk_error(result.error or bt.ChainError(result.message or "extrinsic failed"), what)
        return result

    # ----------------------------------------------------------------- reads

    def block(self) -> int:
        return int(self._call("block", lambda: self._client.block, timeout_s=self.read_timeout_s))

    def tempo(self) -> int:
        info = self._call(
            "tempo", lambda: self._client.subnets.info(self.netuid), timeout_s=self.read_timeout_s
        )
        return int(info.tempo)

    def weights_rate_limit(self) -> int:
        return int(
            self._call(
                "weights_rate_limit",
                lambda: self._client.hyperparameters.weights_rate_limit(self.netuid),
                timeout_s=self.read_timeout_s,
            )
        )

    def _raw_metagraph(self) -> Any:
        graph = self._call(
            "metagraph",
            lambda: self._client.subnets.metagraph(self.netuid, commitments=False),
            timeout_s=self.read_timeout_s,
        )
        if graph is None:
            raise SubnetMissing(f"subnet {self.netuid} does not exist on {self.network}")
        return graph

    def metagraph(self) -> Metagraph:
        graph = self._raw_metagraph()
        neurons = [
            Neuron(
                uid=int(n.uid),
                hotkey=str(n.hotkey),
                coldkey=str(n.coldkey),
                stake=_balance_to_float(n.total_stake),
                validator_permit=bool(n.validator_permit),
                axon=parse_axon_endpoint(n.axon),
            )
            for n in graph.neurons
        ]
        return Metagraph(netuid=self.netuid, block=int(graph.block), neurons=neurons)

    def incentives(self) -> dict[int, float]:
        return {int(n.uid): float(n.incentive) for n in self._raw_metagraph().neurons}

    def commitments(self) -> dict[str, Commitment]:
        raw = self._call(
            "commitments",
            lambda: self._client.subnets.commitments(self.netuid),
            timeout_s=self.read_timeout_s,
        )
        result: dict[str, Commitment] = {}
        for hotkey, entry in (raw or {}).items():
            # Sealed (timelocked) commitments have no readable value yet; PRISM never uses them.
            value = getattr(entry, "value", None)
            if value is None:
                continue
            result[str(hotkey)] = Commitment(hotkey=str(hotkey), data=str(value), block=int(entry.block))
        return result

    def blocks_since_last_update(self, hotkey: str) -> int | None:
        uid = self.metagraph().hotkey_to_uid.get(hotkey)
        if uid is None:
            return None
        value = self._call(
            "blocks_since_last_update",
            lambda: self._client.epochs.blocks_since_last_update(self.netuid, uid),
            timeout_s=self.read_timeout_s,
        )
        return None if value is None else int(value)

    # ----------------------------------------------------------------- writes

    def commit(self, wallet: Wallet, data: str) -> int:
        payload = data.encode("utf-8")
        if not 0 < len(payload) <= 128:
            raise ChainRejected(
                f"commitment must be 1..128 bytes, got {len(payload)}", code="chain.bad_commitment"
            )
        # One Raw<N> field, the Commitments pallet's plain-bytes variant (N = byte length).
        call = bt.calls.Commitments.set_commitment(
            netuid=self.netuid, info={"fields": [{f"Raw{len(payload)}": payload}]}
        )
        result = self._execute("commit", lambda: self._client.submit_call(call, wallet, signer="hotkey"))
        logger.info("committed %r for %s on netuid %d", data, hotkey_ss58(wallet), self.netuid)
        block = landed_block(result)
        return block if block is not None else self.block()

    def serve_axon(self, wallet: Wallet, ip: str, port: int) -> None:
        AxonInfo(ip=ip, port=port)
        intent = bt.ServeAxon(netuid=self.netuid, ip=ip, port=port)
        self._execute("serve_axon", lambda: self._client.execute(intent, wallet))

    def set_weights(self, wallet: Wallet, weights: dict[int, float], version_key: int) -> int:
        clean = {int(uid): float(w) for uid, w in weights.items()}
        intent = bt.SetWeights(netuid=self.netuid, uids=None, weights=clean, version_key=version_key)
        result = self._execute("set_weights", lambda: self._client.execute(intent, wallet, retries=2))
        block = landed_block(result)
        return block if block is not None else self.block()
