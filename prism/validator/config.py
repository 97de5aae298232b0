"""The validator's configuration: typed models built once from the flags, passed down."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prism.chain.weights import FallbackRule
from prism.neuron_config import (
    ChainConfig,
    WalletConfig,
    add_common_args,
    chain_config,
    neuron_parser,
    wallet_config,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FetchConfig(_Strict):
    timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=2, ge=0)
    max_concurrency: int = Field(default=8, ge=1)


class WandbConfig(_Strict):
    mode: Literal["off", "offline", "online"] = "off"
    project: str = "prism-validator"
    dir: Path | None = None


class EvaluationConfig(_Strict):
    """Where runs execute: worker processes on this machine, or a Ray cluster."""

    backend: Literal["local", "ray"] = "local"
    workers: int = Field(default=1, ge=1, description="runs in flight at once (local: one per device slot)")
    devices: str | None = Field(default=None, description="GPU indexes for the local slots, e.g. 0,1,2,3")
    ray_address: str | None = Field(default=None, description="host:port of the Ray head (backend ray)")


class ValidatorConfig(_Strict):
    """Everything the validator needs, built once at the entry point and passed down."""

    netuid: int = Field(ge=0)
    wallet: WalletConfig
    chain: ChainConfig
    state_dir: Path
    profile: str = "gpu_proxy_eval"
    data_dir: Path | None = Field(default=None, description="prepared token shards (prism data prepare)")
    heldout_seed: int | None = Field(
        default=None,
        description="held-out sampling seed for non-official profiles; official ones take it from the chain",
    )
    waive_reasons: tuple[str, ...] = Field(
        default=(), description="ineligibility reasons scoring tolerates (local demo: profile.not_official)"
    )
    max_attempts: int = Field(default=3, ge=1, description="infrastructure retries per run")
    loop_interval_s: float = Field(default=5.0, gt=0)
    fetch: FetchConfig = FetchConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    wandb: WandbConfig = WandbConfig()
    max_steps: int | None = Field(default=None, ge=1, description="stop after this many loop steps (tests)")
    weights_fallback: FallbackRule = Field(
        default="owner", description="when nothing qualifies: owner (burn to the subnet owner's uid) or skip"
    )


def build_arg_parser() -> argparse.ArgumentParser:
    parser = neuron_parser("neurons/validator.py", "PRISM validator")
    add_common_args(parser)
    parser.add_argument("--neuron.state_dir", dest="state_dir", default="~/.prism/validator",
                        help="store, fetched ZIPs, run manifests and artifacts")  # fmt: skip
    parser.add_argument(
        "--profile", default="gpu_proxy_eval", help="evaluation profile (see docs/evaluator.md)"
    )
    parser.add_argument("--data", dest="data_dir", default=None,
                        help="prepared token shards (prism data prepare); unset: the offline corpus, "
                        "non-official profiles only")  # fmt: skip
    parser.add_argument("--heldout_seed", type=int, default=None,
                        help="seed of the held-out windows (non-official profiles); unset: the profile's")  # fmt: skip
    parser.add_argument("--scoring.waive", dest="waive", action="append", default=[],
                        help="ineligibility reason to tolerate (local demos: profile.not_official)")  # fmt: skip
    parser.add_argument("--max_attempts", type=int, default=3, help="infrastructure retries per run")
    parser.add_argument("--loop_interval", type=float, default=5.0, help="seconds between idle steps")
    parser.add_argument(
        "--max_steps", type=int, default=None, help="stop after N loop steps; unset: run until stopped"
    )
    parser.add_argument("--weights.fallback", dest="weights_fallback", choices=("owner", "skip"), default="owner",
                        help="when no miner qualifies: owner sets all weight on the subnet owner's uid "
                        "(burns this validator's share of miner emission), skip sets no weights")  # fmt: skip
    parser.add_argument("--fetch.timeout", dest="fetch_timeout", type=float, default=30.0,
                        help="seconds per download attempt from a miner")  # fmt: skip
    parser.add_argument("--fetch.concurrency", dest="fetch_concurrency", type=int, default=8,
                        help="miners downloaded from at once")  # fmt: skip
    _add_evaluation_args(parser)
    parser.add_argument("--wandb.off", dest="wandb_off", action="store_true", help="disable wandb logging")
    parser.add_argument("--wandb.mode", dest="wandb_mode", choices=("offline", "online"), default="offline",
                        help="wandb mode when enabled")  # fmt: skip
    parser.add_argument(
        "--wandb.project", dest="wandb_project", default="prism-validator", help="wandb project"
    )
    return parser


def _add_evaluation_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--evaluation.backend", dest="evaluation_backend", choices=("local", "ray"), default="local",
                        help="local: worker processes on this machine; ray: tasks on a Ray cluster")  # fmt: skip
    parser.add_argument("--evaluation.workers", dest="evaluation_workers", type=int, default=1,
                        help="runs in flight at once (local: device slots; CPU profiles split the cores)")  # fmt: skip
    parser.add_argument("--evaluation.devices", dest="evaluation_devices", default=None,
                        help="GPU indexes the local slots use, e.g. 0,1,2,3 (default 0..workers-1)")  # fmt: skip
    parser.add_argument("--evaluation.ray_address", dest="evaluation_ray_address", default=None,
                        help="host:port of the Ray head node (with --evaluation.backend ray)")  # fmt: skip


def config_from_args(args: argparse.Namespace) -> ValidatorConfig:
    state_dir = Path(args.state_dir).expanduser().resolve()  # manifests are stored by absolute path
    return ValidatorConfig(
        netuid=args.netuid,
        wallet=wallet_config(args),
        chain=chain_config(args),
        state_dir=state_dir,
        profile=args.profile,
        data_dir=Path(args.data_dir).expanduser().resolve() if args.data_dir else None,
        heldout_seed=args.heldout_seed,
        waive_reasons=tuple(args.waive),
        max_attempts=args.max_attempts,
        loop_interval_s=args.loop_interval,
        max_steps=args.max_steps,
        weights_fallback=args.weights_fallback,
        fetch=FetchConfig(timeout_s=args.fetch_timeout, max_concurrency=args.fetch_concurrency),
        evaluation=EvaluationConfig(
            backend=args.evaluation_backend,
            workers=args.evaluation_workers,
            devices=args.evaluation_devices,
            ray_address=args.evaluation_ray_address,
        ),
        wandb=WandbConfig(
            mode="off" if args.wandb_off else args.wandb_mode, project=args.wandb_project, dir=state_dir
        ),
    )
