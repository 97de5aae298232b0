"""The PRISM miner: pack a submission, commit its hash on chain, and serve it over the axon.

Flow (``Miner.start`` then ``Miner.step`` every ``sync_interval_s`` until SIGTERM/SIGINT):

1. load the wallet and check the hotkey is registered on the subnet (an unregistered hotkey
   stops the miner; a chain that cannot be read is retried later);
2. pack the submission deterministically (``prism.miner_pack``) and run intake (the same checks
   validators run); a rejected submission stops the miner with every problem code;
3. optionally (``--check.smoke``) run a local smoke evaluation (``local_cpu_smoke`` profile);
4. start the axon (``prism.net.axon``) and publish its endpoint unless the chain already holds
   the same address (compared as addresses, not text);
5. commit ``prism:v1:<sha256>`` unless the chain already holds it;
6. each step re-reads the submission; an edit that passes intake and changes the code
   fingerprint (not a comment-only edit) is committed and, once it landed, served.

Chain writes that fail for a transient reason (a timeout, a refused extrinsic, a rate limit, an
unreachable node) stay pending and are retried on later steps, after the rate limit's window
when the chain named one; the axon keeps serving throughout. Before a retry the chain is read
again, so a write that landed after its timeout is not repeated.

Run it with ``python -m prism.miner ...`` or ``python neurons/miner.py ...`` (see docs/miner.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prism.chain import Chain, NotRegistered, RateLimited, open_chain
from prism.chain.commitments import format_commitment, parse_commitment
from prism.chain.errors import ChainError, InsufficientBalance, NotPermitted
from prism.errors import OperatorError
from prism.miner_pack import PackedSubmission, SubmissionRejected, pack_and_check, smoke_check
from prism.net.axon import Axon, AxonConfig
from prism.net.endpoint import Probe, outward_interface_ip, resolve_published_ip
from prism.neuron_config import (
    ChainConfig,
    WalletConfig,
    add_common_args,
    chain_config,
    neuron_parser,
    setup_logging,
    wallet_config,
)

logger = logging.getLogger(__name__)

__all__ = ["Miner", "MinerConfig", "PackedSubmission", "SubmissionRejected", "main", "pack_and_check"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SmokeConfig(_Strict):
    enabled: bool = False
    data_dir: Path | None = Field(
        default=None, description="prepared byte-level shards; offline corpus if unset"
    )


class MinerConfig(_Strict):
    """Everything the miner needs, built once from the flags."""

    netuid: int = Field(ge=0)
    wallet: WalletConfig
    chain: ChainConfig
    submission: Path
    axon_ip: str = "0.0.0.0"  # address the server binds
    axon_port: int = Field(default=8091, ge=0, le=65535)
    axon_external_ip: str | None = None  # address published on chain (see prism.net.endpoint)
    axon_external_port: int | None = Field(default=None, ge=1, le=65535)
    min_validator_stake: float | None = Field(default=None, ge=0, description="alpha on a real subnet")
    rate_limit_per_min: float = Field(default=60.0, gt=0)
    sync_interval_s: float = Field(default=12.0, gt=0)
    watch: bool = True  # re-read the submission each step and re-commit when its code changed
    smoke: SmokeConfig = SmokeConfig()


def published_ip(config: MinerConfig, *, probe: Probe = outward_interface_ip) -> str:
    """The IP validators should dial (``prism.net.endpoint.resolve_published_ip``)."""
    return resolve_published_ip(
        config.axon_ip, config.axon_external_ip, real_chain=config.chain.kind != "local", probe=probe
    )


class Miner:
    """One miner process. Chain calls are blocking, so they run on worker threads."""

    def __init__(self, config: MinerConfig, *, chain: Chain | None = None, wallet: Any | None = None) -> None:
        from prism.chain.wallets import hotkey_ss58, load_wallet

        self.config = config
        self.wallet = wallet or load_wallet(config.wallet.name, config.wallet.hotkey, config.wallet.path)
        self.hotkey = hotkey_ss58(self.wallet)
        self._owns_chain = chain is None  # an injected chain belongs to the caller
        self.chain = chain or open_chain(
            config.chain.kind,
            netuid=config.netuid,
            path=config.chain.path,
            network=config.chain.network,
            endpoint=config.chain.endpoint,
            read_timeout_s=config.chain.read_timeout_s,
            write_timeout_s=config.chain.write_timeout_s,
        )
        self.axon: Axon | None = None
        self.served: PackedSubmission | None = None
        self.pending: PackedSubmission | None = None  # packed but not yet committed
        self.committed_sha256: str | None = None
        self.endpoint: tuple[str, int] | None = None
        self.endpoint_pending = False
        self.retry_after_block: dict[str, int] = {}  # chain action -> first block to try it again
        self._ignored_sha256: str | None = None  # the last edit judged cosmetic (logged once)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        endpoint_ip = published_ip(self.config)  # a config mistake fails before anything starts
        await self._check_registered()
        packed = pack_and_check(self.config.submission)
        logger.info("submission %s: %s (%d bytes, kind %s)", self.config.submission, packed.sha256,
                    len(packed.zip_bytes), packed.kind)  # fmt: skip
        if self.config.smoke.enabled:
            await asyncio.to_thread(smoke_check, self.config.submission, self.config.smoke.data_dir)
        self.axon = Axon(
            self.wallet,
            self.chain,
            AxonConfig(host=self.config.axon_ip, port=self.config.axon_port,
                       min_validator_stake=self.config.min_validator_stake,
                       rate_limit_per_min=self.config.rate_limit_per_min),
            hotkey=self.hotkey,
        )  # fmt: skip
        port = await self.axon.start()
        try:
            self.endpoint = (endpoint_ip, self.config.axon_external_port or port)
            self.endpoint_pending = True
            # Serve the new ZIP at once: validators holding the old commitment get a retryable 404.
            self._serve(packed)
            self.pending = packed
            await self._chain_work()
        except BaseException:
            await self.stop()
            raise

    async def step(self) -> None:
        """One maintenance pass: pick up submission changes, then retry pending chain writes."""
        if self.config.watch:
            await self._watch()
        await self._chain_work()

    async def stop(self) -> None:
        if self.axon is not None:
            await self.axon.stop()
            self.axon = None
        close = getattr(self.chain, "close", None)
        if self._owns_chain and callable(close):
            close()

    async def run_until(self, stop: asyncio.Event) -> None:
        """Start, then step every ``sync_interval_s`` until ``stop`` is set; always stops cleanly."""
        try:
            await self.start()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.config.sync_interval_s)
                if stop.is_set():
                    break
                try:
                    await self.step()
                except ChainError as exc:
                    logger.warning("chain unavailable this step (%s); retrying next step", exc)
        finally:
            await self.stop()

    # ----------------------------------------------------------------- watching the submission

    async def _watch(self) -> None:
        try:
            packed = await asyncio.to_thread(pack_and_check, self.config.submission)
        except SubmissionRejected as exc:
            logger.error("the changed submission is rejected, still serving the previous one: %s", exc)
            return
        except OperatorError as exc:
            logger.error("cannot read the submission, still serving the previous one: %s", exc)
            return
        reference = self.pending or self.served
        if reference is None or packed.sha256 == reference.sha256:
            return
        served = self.served
        if served is not None and packed.sha256 == served.sha256 == self.committed_sha256:
            logger.info("submission reverted to the committed %s; dropping the pending change", packed.sha256)
            self.pending = None
        elif packed.code_fingerprint == reference.code_fingerprint:
            if self._ignored_sha256 != packed.sha256:
                logger.info("submission edited without changing its code (comments or formatting only): "
                            "not re-committing %s", packed.sha256)  # fmt: skip
                self._ignored_sha256 = packed.sha256
        else:
            logger.info("submission changed: %s", packed.sha256)
            self.pending = packed

    # ----------------------------------------------------------------- chain writes

    async def _chain_work(self) -> None:
        """Publish the endpoint and commit the pending submission; trouble leaves them pending."""
        if self.endpoint_pending:
            await self._attempt("serve_axon", self._publish_endpoint)
        if self.pending is not None:
            await self._attempt("commit", self._commit_pending)

    async def _attempt(self, what: str, action: Callable[[], Awaitable[None]]) -> None:
        retry_at = self.retry_after_block.get(what)
        try:
            if retry_at is not None and await asyncio.to_thread(self.chain.block) < retry_at:
                return
            await action()
            self.retry_after_block.pop(what, None)
        except RateLimited as exc:
            await self._back_off(what, exc)
        except ChainError as exc:
            logger.warning("%s failed (%s); retrying in %g s", what, exc, self.config.sync_interval_s)
        except (NotRegistered, NotPermitted, InsufficientBalance) as exc:
            logger.error("%s refused by the chain (%s); still serving, retrying in %g s", what, exc,
                         self.config.sync_interval_s)  # fmt: skip

    async def _back_off(self, what: str, exc: RateLimited) -> None:
        """Wait out the chain's window before the next (fee-paying) attempt."""
        try:
            graph = await asyncio.to_thread(self.chain.metagraph)
        except ChainError:
            return  # no block to count from: retry next step
        window = graph.hyperparams.serving_rate_limit if what == "serve_axon" else graph.hyperparams.tempo
        wait = exc.retry_after_blocks if exc.retry_after_blocks is not None else max(1, window)
        self.retry_after_block[what] = graph.block + wait
        logger.warning("%s rate-limited (%s); retrying from block %d", what, exc.message, graph.block + wait)

    async def _check_registered(self) -> None:
        try:
            graph = await asyncio.to_thread(self.chain.metagraph)
        except ChainError as exc:
            logger.warning("cannot check the registration now (%s); chain writes will tell", exc)
            return
        if graph.neuron(self.hotkey) is None:
            raise NotRegistered(
                f"hotkey {self.hotkey} ({self.config.wallet.name}/{self.config.wallet.hotkey}) is not registered "
                f"on subnet {self.config.netuid}; register it first"
                + (" with `prism chain register`" if self.config.chain.kind == "local" else " with btcli")
            )

    async def _publish_endpoint(self) -> None:
        assert self.endpoint is not None
        ip, port = self.endpoint
        neuron = (await asyncio.to_thread(self.chain.metagraph)).neuron(self.hotkey)
        if neuron is not None and neuron.axon is not None and neuron.axon.matches(ip, port):
            logger.info("axon endpoint %s already on chain", neuron.axon.url)
        else:
            await asyncio.to_thread(self.chain.serve_axon, self.wallet, ip, port)
            logger.info("published axon endpoint %s:%d", ip, port)
        self.endpoint_pending = False

    async def _commit_pending(self) -> None:
        """Commit ``self.pending`` unless the chain already holds it (read again before each try)."""
        packed = self.pending
        assert packed is not None and self.axon is not None
        commitment = (await asyncio.to_thread(self.chain.commitments)).get(self.hotkey)
        self.committed_sha256 = parse_commitment(commitment.data).sha256 if commitment else None
        self.axon.set_committed(self.committed_sha256)
        if self.committed_sha256 != packed.sha256:
            block = await asyncio.to_thread(self.chain.commit, self.wallet, format_commitment(packed.sha256))
            logger.info("committed %s at block %d", packed.sha256, block)
            self.committed_sha256 = packed.sha256
        self.pending = None
        if self.served is None or self.served.sha256 != packed.sha256:
            self._serve(packed)
        self.axon.set_committed(self.committed_sha256)

    def _serve(self, packed: PackedSubmission) -> None:
        assert self.axon is not None
        self.axon.set_submission(packed.zip_bytes)
        self.served = packed


# --------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    parser = neuron_parser("neurons/miner.py", "PRISM miner: commit and serve a submission")
    add_common_args(parser)
    parser.add_argument("--submission", required=True, type=Path, help="project directory, .zip or .py")
    parser.add_argument("--axon.ip", dest="axon_ip", default="0.0.0.0", help="address the axon binds")
    parser.add_argument("--axon.port", dest="axon_port", type=int, default=8091,
                        help="port the axon binds (0: any free port)")  # fmt: skip
    parser.add_argument("--axon.external_ip", dest="axon_external_ip", default=None,
                        help="address published on chain; unset: --axon.ip, or for a wildcard bind the "
                        "detected public address of the outward interface")  # fmt: skip
    parser.add_argument("--axon.external_port", dest="axon_external_port", type=int, default=None,
                        help="port published on chain; unset: the bound port")  # fmt: skip
    parser.add_argument("--min_validator_stake", type=float, default=None,
                        help="also serve callers without a validator permit whose stake on this subnet "
                        "(alpha) is at least this")  # fmt: skip
    parser.add_argument("--axon.rate_limit", dest="rate_limit_per_min", type=float, default=60.0,
                        help="requests per minute per validator hotkey")  # fmt: skip
    parser.add_argument("--sync_interval", type=float, default=12.0,
                        help="seconds between maintenance steps (re-pack, retry chain writes)")  # fmt: skip
    parser.add_argument("--no-watch", dest="watch", action="store_false",
                        help="never re-read the submission after start-up")  # fmt: skip
    parser.add_argument("--check.smoke", dest="check_smoke", action="store_true",
                        help="run a CPU smoke evaluation before serving")  # fmt: skip
    parser.add_argument("--check.data", dest="check_data", type=Path, default=None,
                        help="prepared byte-level shards for --check.smoke (unset: the offline corpus)")  # fmt: skip
    return parser


def config_from_args(args: argparse.Namespace) -> MinerConfig:
    return MinerConfig(
        netuid=args.netuid,
        wallet=wallet_config(args),
        chain=chain_config(args),
        submission=args.submission,
        axon_ip=args.axon_ip,
        axon_port=args.axon_port,
        axon_external_ip=args.axon_external_ip,
        axon_external_port=args.axon_external_port,
        min_validator_stake=args.min_validator_stake,
        rate_limit_per_min=args.rate_limit_per_min,
        sync_interval_s=args.sync_interval,
        watch=args.watch,
        smoke=SmokeConfig(enabled=args.check_smoke, data_dir=args.check_data),
    )


async def serve(config: MinerConfig) -> None:
    """Run the miner until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await Miner(config).run_until(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    logger.info("miner stopped")


def main(argv: list[str] | None = None) -> int:
    from prism.errors import PrismError

    args = build_parser().parse_args(argv)
    setup_logging(args.logging_debug)
    try:
        config = config_from_args(args)
        asyncio.run(serve(config))
    except SubmissionRejected as exc:
        logger.error("%s", exc)
        for problem in exc.problems:
            logger.error("  %s", problem)
        return 1
    except PrismError as exc:
        logger.error("%s", exc)
        return 1
    except ValueError as exc:  # pydantic validation of the flags
        logger.error("invalid configuration: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
