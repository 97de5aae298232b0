"""The PRISM miner: pack a submission, commit its hash on chain, and serve it over the axon.

Flow (``Miner.start`` then ``Miner.step`` every ``sync_interval_s`` until SIGTERM/SIGINT):

1. load the wallet and check the hotkey is registered on the subnet;
2. pack the submission deterministically (``prism.submission``) and run intake (the same checks
   validators run); a rejected submission stops the miner with every problem code;
3. optionally (``--check.smoke``) run a local smoke evaluation (``local_cpu_smoke`` profile);
4. start the axon (``prism.net.axon``) and publish its endpoint (only when it changed);
5. commit ``prism:v1:<sha256>`` unless the chain already holds it; inside the commitment rate
   limit the commit is retried on a later step;
6. each step re-reads the submission; when its hash changes (and intake accepts it) the new
   hash is committed and, once it landed, served.

Run it with ``python -m prism.miner ...`` or ``python neurons/miner.py ...`` (see docs/miner.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prism.chain import Chain, NotRegistered, RateLimited, open_chain
from prism.chain.commitments import format_commitment, parse_commitment
from prism.chain.errors import ChainError
from prism.errors import NotImplementedYet, OperatorError
from prism.net.axon import Axon, AxonConfig
from prism.neuron_config import (
    ChainConfig,
    WalletConfig,
    add_common_args,
    chain_config,
    setup_logging,
    wallet_config,
)

logger = logging.getLogger(__name__)


class SubmissionRejected(OperatorError):
    """Intake refused the miner's own submission; ``problems`` lists every reason with its code."""

    default_code = "miner.submission_rejected"

    def __init__(self, message: str, problems: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.problems = problems


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
    axon_external_ip: str | None = None  # address published on chain (defaults to axon_ip)
    axon_external_port: int | None = Field(default=None, ge=1, le=65535)
    min_validator_stake: float | None = Field(default=None, ge=0)
    rate_limit_per_min: float = Field(default=60.0, gt=0)
    sync_interval_s: float = Field(default=12.0, gt=0)
    watch: bool = True  # re-read the submission each step and re-commit when it changed
    smoke: SmokeConfig = SmokeConfig()


@dataclass(frozen=True)
class PackedSubmission:
    zip_bytes: bytes
    sha256: str
    kind: str


def pack_and_check(path: Path) -> PackedSubmission:
    """Deterministic ZIP of ``path`` (a project dir, a .zip or a .py) that passed intake."""
    from prism.submission import check_submission

    report = check_submission(Path(path))
    if not report.ok or report.submission is None:
        problems = [problem.to_dict() for problem in report.problems]
        codes = ", ".join(sorted({str(p.get("code")) for p in problems})) or "unknown"
        details = "; ".join(str(problem) for problem in report.problems)
        raise SubmissionRejected(f"intake rejected {path} ({codes}): {details}", problems)
    submission = report.submission
    return PackedSubmission(
        zip_bytes=submission.zip_bytes, sha256=submission.zip_sha256, kind=submission.kind
    )


def smoke_check(path: Path, config: SmokeConfig) -> None:
    """Train the submission briefly on CPU (``local_cpu_smoke``) exactly as a validator would."""
    try:
        from prism.evaluator.host import evaluate
    except ImportError as exc:
        raise NotImplementedYet(f"--check.smoke needs prism.evaluator.host.evaluate: {exc}") from exc
    from prism.profiles import load_profile

    profile = load_profile("local_cpu_smoke")
    data_dir = config.data_dir
    if data_dir is None:
        from prism.data import ensure_offline_corpus

        data_dir = Path(tempfile.gettempdir()) / "prism-miner-smoke-data" / profile.tokenizer
        ensure_offline_corpus(data_dir, tokenizer=profile.tokenizer)
    with tempfile.TemporaryDirectory(prefix="prism-miner-smoke-") as out:
        manifests = evaluate(
            path,
            profile=profile,
            data_dir=data_dir,
            out_dir=Path(out),
            recipe_mode="reference",
            progress=False,
        )
    failed = [m for m in manifests if m.status.state != "succeeded"]
    if not manifests or failed:
        reasons = [f"{m.status.failure.code}: {m.status.failure.message}" for m in failed if m.status.failure]
        raise SubmissionRejected(f"smoke evaluation failed: {'; '.join(reasons) or 'no run'}", [])
    logger.info("smoke evaluation passed (%d runs)", len(manifests))


def published_ip(config: MinerConfig) -> str:
    """The IP validators should dial: --axon.external_ip, else a concrete --axon.ip."""
    ip = config.axon_external_ip or config.axon_ip
    try:
        address = ipaddress.ip_address(ip)
    except ValueError as exc:
        raise OperatorError(f"axon ip {ip!r} is not an IP address", code="config.invalid") from exc
    if address.is_unspecified:
        if config.chain.kind == "local":
            return "127.0.0.1"
        raise OperatorError(
            f"--axon.ip {ip} is a wildcard; pass --axon.external_ip with the address validators can reach",
            code="config.invalid",
        )
    return ip


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
        )
        self.axon: Axon | None = None
        self.served: PackedSubmission | None = None
        self.pending: PackedSubmission | None = None  # packed but not yet committed
        self.committed_sha256: str | None = None

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        endpoint_ip = published_ip(self.config)  # a config mistake fails before anything starts
        await self._check_registered()
        packed = pack_and_check(self.config.submission)
        logger.info(
            "submission %s: %s (%d bytes, kind %s)",
            self.config.submission,
            packed.sha256,
            len(packed.zip_bytes),
            packed.kind,
        )
        if self.config.smoke.enabled:
            await asyncio.to_thread(smoke_check, self.config.submission, self.config.smoke)
        self.axon = Axon(
            self.wallet,
            self.chain,
            AxonConfig(
                host=self.config.axon_ip,
                port=self.config.axon_port,
                min_validator_stake=self.config.min_validator_stake,
                rate_limit_per_min=self.config.rate_limit_per_min,
            ),
            hotkey=self.hotkey,
        )
        port = await self.axon.start()
        try:
            await self._publish_endpoint(endpoint_ip, self.config.axon_external_port or port)
            self.committed_sha256 = await self._chain_sha256()
            self.axon.set_committed(self.committed_sha256)
            # Serve the new ZIP at once: validators holding the old commitment get a retryable 404.
            self._serve(packed)
            await self._commit_if_needed(packed)
        except BaseException:
            await self.stop()
            raise

    async def step(self) -> None:
        """One maintenance pass: pick up submission changes and retry a pending commitment."""
        if self.config.watch:
            try:
                packed = await asyncio.to_thread(pack_and_check, self.config.submission)
            except SubmissionRejected as exc:
                logger.error("the changed submission is rejected, still serving the previous one: %s", exc)
                packed = None
            except OperatorError as exc:
                logger.error("cannot read the submission, still serving the previous one: %s", exc)
                packed = None
            if packed is not None:
                settled = (
                    self.served is not None and packed.sha256 == self.served.sha256 == self.committed_sha256
                )
                if settled:
                    self.pending = None  # also drops a pending change the operator reverted
                elif self.pending is None or self.pending.sha256 != packed.sha256:
                    logger.info("submission changed: %s", packed.sha256)
                    self.pending = packed
        if self.pending is not None:
            await self._commit_if_needed(self.pending)

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

    # ----------------------------------------------------------------- pieces

    def _serve(self, packed: PackedSubmission) -> None:
        assert self.axon is not None
        self.axon.set_submission(packed.zip_bytes)
        self.served = packed

    async def _check_registered(self) -> None:
        graph = await asyncio.to_thread(self.chain.metagraph)
        if graph.neuron(self.hotkey) is None:
            raise NotRegistered(
                f"hotkey {self.hotkey} ({self.config.wallet.name}/{self.config.wallet.hotkey}) is not registered "
                f"on subnet {self.config.netuid}; register it first"
                + (" with `prism chain register`" if self.config.chain.kind == "local" else " with btcli")
            )

    async def _chain_sha256(self) -> str | None:
        commitment = (await asyncio.to_thread(self.chain.commitments)).get(self.hotkey)
        return parse_commitment(commitment.data).sha256 if commitment else None

    async def _publish_endpoint(self, ip: str, port: int) -> None:
        neuron = (await asyncio.to_thread(self.chain.metagraph)).neuron(self.hotkey)
        if (
            neuron is not None
            and neuron.axon is not None
            and (neuron.axon.ip, neuron.axon.port) == (ip, port)
        ):
            logger.info("axon endpoint %s:%d already on chain", ip, port)
            return
        await asyncio.to_thread(self.chain.serve_axon, self.wallet, ip, port)
        logger.info("published axon endpoint %s:%d", ip, port)

    async def _commit_if_needed(self, packed: PackedSubmission) -> None:
        """Commit ``packed`` unless the chain already holds it; on a rate limit, keep it pending."""
        if self.committed_sha256 == packed.sha256:
            self._commit_landed(packed)
            return
        try:
            block = await asyncio.to_thread(self.chain.commit, self.wallet, format_commitment(packed.sha256))
        except RateLimited as exc:
            self.pending = packed
            logger.warning("commitment rate-limited (%s); will retry", exc.message)
            return
        logger.info("committed %s at block %d", packed.sha256, block)
        self.committed_sha256 = packed.sha256
        self._commit_landed(packed)

    def _commit_landed(self, packed: PackedSubmission) -> None:
        self.pending = None
        if self.served is None or self.served.sha256 != packed.sha256:
            self._serve(packed)
        assert self.axon is not None
        self.axon.set_committed(self.committed_sha256)


# --------------------------------------------------------------------------------------------
# entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prism-miner", description="PRISM miner: commit and serve a submission"
    )
    add_common_args(parser)
    parser.add_argument("--submission", required=True, type=Path, help="project directory, .zip or .py")
    parser.add_argument("--axon.ip", dest="axon_ip", default="0.0.0.0", help="address to bind")
    parser.add_argument("--axon.port", dest="axon_port", type=int, default=8091)
    parser.add_argument(
        "--axon.external_ip", dest="axon_external_ip", default=None, help="address published on chain"
    )
    parser.add_argument("--axon.external_port", dest="axon_external_port", type=int, default=None)
    parser.add_argument(
        "--min_validator_stake",
        type=float,
        default=None,
        help="also serve callers without a validator permit that hold at least this stake",
    )
    parser.add_argument(
        "--axon.rate_limit",
        dest="rate_limit_per_min",
        type=float,
        default=60.0,
        help="requests/min per hotkey",
    )
    parser.add_argument("--sync_interval", type=float, default=12.0, help="seconds between maintenance steps")
    parser.add_argument(
        "--no-watch", dest="watch", action="store_false", help="do not re-read the submission"
    )
    parser.add_argument(
        "--check.smoke", dest="check_smoke", action="store_true", help="run a CPU smoke eval first"
    )
    parser.add_argument(
        "--check.data", dest="check_data", type=Path, default=None, help="shards for --check.smoke"
    )
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
