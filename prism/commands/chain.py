"""``prism chain ...``: create and inspect the embedded local chain (and read a real one).

prism chain create   --path P --netuid N [--tempo 30] [--block-time 1.0] ...
prism chain register --path P --netuid N --wallet.name W --wallet.hotkey H [--wallet.path D]
                     [--stake S] [--validator-permit] [--create-wallet]
prism chain stake    --path P --netuid N --wallet.name W --wallet.hotkey H --amount A
prism chain show     --path P --netuid N [--json]
prism chain show     --chain bittensor --subtensor.network test --netuid N [--json]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

DEFAULT_NETUID = 1


def _add_local_chain_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", required=True, help="local chain file (SQLite)")
    parser.add_argument("--netuid", type=int, default=DEFAULT_NETUID, help="subnet id (default 1)")


def _add_wallet_args(parser: argparse.ArgumentParser) -> None:
    from prism.chain.wallets import DEFAULT_WALLET_PATH

    parser.add_argument("--wallet.name", dest="wallet_name", required=True)
    parser.add_argument("--wallet.hotkey", dest="wallet_hotkey", default="default")
    parser.add_argument("--wallet.path", dest="wallet_path", default=DEFAULT_WALLET_PATH)


def register(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("chain", help="create and inspect the embedded local chain")
    commands = group.add_subparsers(dest="chain_command", metavar="SUBCOMMAND")

    create = commands.add_parser("create", help="create a local chain file and a subnet in it")
    _add_local_chain_args(create)
    create.add_argument("--tempo", type=int, default=30, help="blocks per epoch (default 30)")
    create.add_argument("--block-time", type=float, default=1.0, help="seconds per block (default 1.0)")
    create.add_argument("--weights-rate-limit", type=int, default=10, help="blocks between weight sets")
    create.add_argument("--commitment-rate-limit", type=int, default=5, help="blocks between commitments")
    create.add_argument("--max-uids", type=int, default=256)
    create.add_argument("--exist-ok", action="store_true", help="succeed if the subnet already exists")
    create.set_defaults(func=cmd_create)

    reg = commands.add_parser("register", help="register a wallet's hotkey with stake and permit")
    _add_local_chain_args(reg)
    _add_wallet_args(reg)
    reg.add_argument("--stake", type=float, default=0.0)
    reg.add_argument("--validator-permit", action="store_true")
    reg.add_argument(
        "--create-wallet", action="store_true", help="create the wallet (keys without password) if missing"
    )
    reg.set_defaults(func=cmd_register)

    stake = commands.add_parser("stake", help="add (or, negative, remove) stake on a registered hotkey")
    _add_local_chain_args(stake)
    _add_wallet_args(stake)
    stake.add_argument("--amount", type=float, required=True)
    stake.set_defaults(func=cmd_stake)

    show = commands.add_parser("show", help="print neurons, commitments, weights and incentives")
    show.add_argument("--chain", choices=("local", "bittensor"), default="local")
    show.add_argument("--path", help="local chain file (with --chain local)")
    show.add_argument("--netuid", type=int, default=DEFAULT_NETUID)
    show.add_argument("--subtensor.network", dest="network", default="finney")
    show.add_argument("--subtensor.chain_endpoint", dest="endpoint", default=None)
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=cmd_show)

    group.set_defaults(func=lambda args: group.print_help() or 2)


def _wallet(args: argparse.Namespace, *, create: bool = False) -> Any:
    from prism.chain.wallets import create_wallet, load_wallet

    if create:
        return create_wallet(args.wallet_name, args.wallet_hotkey, args.wallet_path)
    return load_wallet(args.wallet_name, args.wallet_hotkey, args.wallet_path)


def cmd_create(args: argparse.Namespace) -> int:
    from prism.chain.local import LocalChain, SubnetParams

    params = SubnetParams(
        netuid=args.netuid,
        tempo=args.tempo,
        weights_rate_limit=args.weights_rate_limit,
        commitment_rate_limit=args.commitment_rate_limit,
        max_uids=args.max_uids,
    )
    chain = LocalChain.create(args.path, params, block_time_s=args.block_time, exist_ok=args.exist_ok)
    print(
        f"local chain {chain.path}: subnet {chain.netuid} (tempo {chain.tempo()}, block time "
        f"{chain.block_time_s:g} s), block {chain.block()}"
    )
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from prism.chain.local import LocalChain
    from prism.chain.wallets import hotkey_ss58

    chain = LocalChain(args.path, args.netuid)
    wallet = _wallet(args, create=args.create_wallet)
    uid = chain.register_wallet(wallet, stake=args.stake, validator_permit=args.validator_permit)
    permit = "validator permit" if args.validator_permit else "no permit"
    print(f"uid {uid}: {hotkey_ss58(wallet)} stake {args.stake:g} ({permit}) on subnet {chain.netuid}")
    return 0


def cmd_stake(args: argparse.Namespace) -> int:
    from prism.chain.local import LocalChain
    from prism.chain.wallets import hotkey_ss58

    chain = LocalChain(args.path, args.netuid)
    hotkey = hotkey_ss58(_wallet(args))
    print(f"{hotkey}: stake {chain.add_stake(hotkey, args.amount):g}")
    return 0


def _state(args: argparse.Namespace) -> dict[str, Any]:
    if args.chain == "local":
        from prism.chain.local import LocalChain
        from prism.errors import OperatorError

        if not args.path:
            raise OperatorError("prism chain show --chain local needs --path", code="config.invalid")
        return LocalChain(args.path, args.netuid).state()
    from prism.chain.bittensor_chain import BittensorChain

    chain = BittensorChain(args.netuid, network=args.network, endpoint=args.endpoint)
    try:
        graph = chain.metagraph()
        incentives = chain.incentives()
        return {
            "network": chain.network,
            "netuid": chain.netuid,
            "block": graph.block,
            "stake_unit": "alpha" if chain.netuid else "TAO",
            "owner_hotkey": graph.owner_hotkey,
            "hyperparams": graph.hyperparams.model_dump(),
            "neurons": [{**n.model_dump(), "incentive": incentives.get(n.uid, 0.0)} for n in graph.neurons],
            "commitments": {h: c.model_dump() for h, c in chain.commitments().items()},
            "weights": {},
        }
    finally:
        chain.close()


def cmd_show(args: argparse.Namespace) -> int:
    from prism.chain.commitments import parse_commitment

    state = _state(args)
    if args.json:
        print(json.dumps(state, indent=2, sort_keys=True))
        return 0
    print(f"subnet {state['netuid']} at block {state['block']}")
    if "hyperparams" in state:
        pairs = ", ".join(f"{key} {value}" for key, value in state["hyperparams"].items())
        print(f"owner {state['owner_hotkey']}; {pairs}; stake in {state['stake_unit']}")
    print(f"{'uid':>4}  {'hotkey':<50} {'stake':>10} {'permit':>6} {'incentive':>9}  axon")
    for n in state["neurons"]:
        axon = "-"
        if n["axon"]:
            host = n["axon"]["ip"]
            axon = f"[{host}]:{n['axon']['port']}" if ":" in host else f"{host}:{n['axon']['port']}"
        permit = "yes" if n["validator_permit"] else "no"
        print(
            f"{n['uid']:>4}  {n['hotkey']:<50} {n['stake']:>10.2f} {permit:>6} {n['incentive']:>9.4f}  {axon}"
        )
    print("commitments:")
    for hotkey, commitment in sorted(state["commitments"].items()):
        parsed = parse_commitment(commitment["data"])
        shown = parsed.sha256 if parsed.ok else f"{commitment['data']!r} ({parsed.error_code})"
        print(f"  {hotkey}  block {commitment['block']}: {shown}")
    if state["weights"]:
        print("weights (latest per validator):")
        for hotkey, weight_set in sorted(state["weights"].items()):
            pairs = ", ".join(f"{uid}: {w:.4f}" for uid, w in sorted(weight_set["weights"].items()))
            print(f"  uid {weight_set['uid']} {hotkey} at block {weight_set['block']}: {{{pairs}}}")
    return 0
