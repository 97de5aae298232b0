"""The pallet rules and runtime API of the in-memory chain (see ``memory_runtime``).

Each handler dispatches one call the way its pallet does, with the pallet's error names, and
returns a ``DispatchOutcome``; ``get_metagraph`` is ``SubnetInfoRuntimeApi.get_metagraph`` built
from storage at a block (the fields the SDK's metagraph decoder reads, and the weight
hyperparameters the runtime's record carries).
"""

from __future__ import annotations

from typing import Any

from memory_runtime import (
    COMMITMENT_MIN_SPACE,
    COMMITMENTS,
    MAX_COMMITMENT_FIELDS,
    RAO_PER_TAO,
    SUBTENSOR,
    U16_MAX,
    DispatchOutcome,
    MemoryRuntime,
)


def get_metagraph(
    rt: MemoryRuntime, netuid: int, block: int, *, with_hyperparams: bool = True
) -> dict[str, Any] | None:
    """``SubnetInfoRuntimeApi.get_metagraph`` as the runtime decodes it (a subset of its fields)."""
    if not rt.read(SUBTENSOR, "NetworksAdded", (netuid,), block):
        return None
    count = int(rt.read(SUBTENSOR, "SubnetworkN", (netuid,), block) or 0)
    hotkeys = [rt.read(SUBTENSOR, "Keys", (netuid, uid), block) for uid in range(count)]
    alpha = [int(rt.read(SUBTENSOR, "TotalHotkeyAlpha", (hk, netuid), block) or 0) for hk in hotkeys]
    root = [int(rt.read(SUBTENSOR, "TotalHotkeyAlpha", (hk, 0), block) or 0) for hk in hotkeys]
    last_epoch, _, since_step = rt._epoch(netuid, block)
    vector = {
        name: rt.read(SUBTENSOR, name, (netuid,), block) or []
        for name in ("LastUpdate", "ValidatorPermit", "Active", "Incentive", "Dividends", "Emission")
    }
    graph: dict[str, Any] = {
        "netuid": netuid,
        "name": list(f"subnet {netuid}".encode()),
        "symbol": list(bytes(rt.read(SUBTENSOR, "TokenSymbol", (netuid,), block) or b"")),
        "identity": None,
        "network_registered_at": rt.read(SUBTENSOR, "NetworkRegisteredAt", (netuid,), block),
        "owner_hotkey": rt.read(SUBTENSOR, "SubnetOwnerHotkey", (netuid,), block),
        "owner_coldkey": rt.read(SUBTENSOR, "SubnetOwner", (netuid,), block),
        "block": block,
        "tempo": rt.read(SUBTENSOR, "Tempo", (netuid,), block),
        "last_step": last_epoch,
        "blocks_since_last_step": since_step,
        "num_uids": count,
        "max_uids": rt.read(SUBTENSOR, "MaxAllowedUids", (netuid,), block),
        "tao_in": 1000 * RAO_PER_TAO,
        "alpha_in": 4000 * RAO_PER_TAO,
        "moving_price": {"bits": 2**30},
        "hotkeys": hotkeys,
        "coldkeys": [rt.read(SUBTENSOR, "Owner", (hk,), block) for hk in hotkeys],
        "identities": [None] * count,
        "axons": [
            rt.read(SUBTENSOR, "Axons", (netuid, hk), block)
            or {
                "block": 0,
                "version": 0,
                "ip": 0,
                "port": 0,
                "ip_type": 0,
                "protocol": 0,
                "placeholder1": 0,
                "placeholder2": 0,
            }
            for hk in hotkeys
        ],
        "active": vector["Active"],
        "validator_permit": vector["ValidatorPermit"],
        "pruning_score": [0] * count,
        "last_update": vector["LastUpdate"],
        "emission": vector["Emission"],
        "dividends": vector["Dividends"],
        "incentives": vector["Incentive"],
        "consensus": [0] * count,
        "trust": [0] * count,
        "rank": [0] * count,
        "block_at_registration": [
            rt.read(SUBTENSOR, "BlockAtRegistration", (netuid, uid), block) for uid in range(count)
        ],
        "alpha_stake": alpha,
        "tao_stake": root,
        "total_stake": [rt.stake_weight(netuid, hk, block) for hk in hotkeys],
    }
    if with_hyperparams:
        graph.update(
            weights_version=rt.read(SUBTENSOR, "WeightsVersionKey", (netuid,), block),
            weights_rate_limit=rt.read(SUBTENSOR, "WeightsSetRateLimit", (netuid,), block),
            commit_reveal_weights_enabled=rt.read(SUBTENSOR, "CommitRevealWeightsEnabled", (netuid,), block),
            commit_reveal_period=rt.read(SUBTENSOR, "RevealPeriodEpochs", (netuid,), block),
            min_allowed_weights=rt.read(SUBTENSOR, "MinAllowedWeights", (netuid,), block),
            max_weights_limit=rt.read(SUBTENSOR, "MaxWeightsLimit", (netuid,), block),
            serving_rate_limit=rt.read(SUBTENSOR, "ServingRateLimit", (netuid,), block),
        )
    return graph


def _weights_common(
    rt: MemoryRuntime, params: dict[str, Any], hotkey: str, block: int
) -> tuple[str | None, int]:
    """Checks shared by plain and timelocked weights: subnet, registration, rate limit."""
    netuid = int(params["netuid"])
    if not rt.read(SUBTENSOR, "NetworksAdded", (netuid,), block):
        return "MechanismDoesNotExist", -1
    uid = rt.uid_of(netuid, hotkey, block)
    if uid is None:
        return "HotKeyNotRegisteredInSubNet", -1
    last = (rt.read(SUBTENSOR, "LastUpdate", (netuid,), block) or [0])[uid]
    limit = int(rt.read(SUBTENSOR, "WeightsSetRateLimit", (netuid,), block) or 0)
    if last and block - int(last) < limit:
        return "TooFast", uid
    return None, uid


def _bump_last_update(rt: MemoryRuntime, netuid: int, uid: int, block: int) -> None:
    vector = rt.read(SUBTENSOR, "LastUpdate", (netuid,), block)
    vector[uid] = block
    rt.storage.write(SUBTENSOR, "LastUpdate", (netuid,), vector, block)


def _set_weights(rt: MemoryRuntime, params: dict[str, Any], hotkey: str, block: int) -> DispatchOutcome:
    netuid = int(params["netuid"])
    error, uid = _weights_common(rt, params, hotkey, block)
    if error is not None:
        return DispatchOutcome(error="SettingWeightsTooFast" if error == "TooFast" else error)
    dests, values = list(params["dests"]), list(params["weights"])
    count = int(rt.read(SUBTENSOR, "SubnetworkN", (netuid,), block))
    is_self = dests == [uid]
    checks = [
        ("CommitRevealEnabled", bool(rt.read(SUBTENSOR, "CommitRevealWeightsEnabled", (netuid,), block))),
        (
            "IncorrectWeightVersionKey",
            int(params["version_key"]) < int(rt.read(SUBTENSOR, "WeightsVersionKey", (netuid,), block) or 0),
        ),
        (
            "NeuronNoValidatorPermit",
            not is_self and not rt.read(SUBTENSOR, "ValidatorPermit", (netuid,), block)[uid],
        ),
        (
            "NotEnoughStakeToSetWeights",
            rt.stake_weight(netuid, hotkey, block)
            < int(rt.read(SUBTENSOR, "StakeThreshold", (), block) or 0),
        ),
        ("WeightVecNotEqualSize", len(dests) != len(values)),
        ("DuplicateUids", len(set(dests)) != len(dests)),
        ("UidVecContainInvalidOne", any(not 0 <= int(d) < count for d in dests)),
        (
            "WeightVecLengthIsLow",
            not is_self and len(dests) < int(rt.read(SUBTENSOR, "MinAllowedWeights", (netuid,), block) or 0),
        ),
        (
            "MaxWeightExceeded",
            bool(values)
            and not is_self
            and max(values) * U16_MAX
            > int(rt.read(SUBTENSOR, "MaxWeightsLimit", (netuid,), block)) * sum(values),
        ),
    ]
    for name, failed in checks:
        if failed:
            return DispatchOutcome(error=name)
    top = max(values) if values else 1
    stored = [(int(d), round(int(v) * U16_MAX / top)) for d, v in zip(dests, values, strict=True)]
    rt.storage.write(SUBTENSOR, "Weights", (netuid, uid), stored, block)
    _bump_last_update(rt, netuid, uid, block)
    return DispatchOutcome(events=[_event(SUBTENSOR, "WeightsSet", {"netuid": netuid, "uid": uid})])


def _commit_timelocked(rt: MemoryRuntime, params: dict[str, Any], hotkey: str, block: int) -> DispatchOutcome:
    netuid = int(params["netuid"])
    error, uid = _weights_common(rt, params, hotkey, block)
    if error is not None:
        return DispatchOutcome(error="CommittingWeightsTooFast" if error == "TooFast" else error)
    if not rt.read(SUBTENSOR, "CommitRevealWeightsEnabled", (netuid,), block):
        return DispatchOutcome(error="CommitRevealDisabled")
    _, epoch, _ = rt._epoch(netuid, block)
    commits = rt.read(SUBTENSOR, "TimelockedWeightCommits", (netuid, epoch), block) or []
    commit = "0x" + bytes(params["commit"]).hex()
    commits.append((hotkey, block, commit, int(params["reveal_round"])))
    rt.storage.write(SUBTENSOR, "TimelockedWeightCommits", (netuid, epoch), commits, block)
    _bump_last_update(rt, netuid, uid, block)
    attributes = {"netuid": netuid, "who": hotkey, "reveal_round": int(params["reveal_round"])}
    return DispatchOutcome(events=[_event(SUBTENSOR, "TimelockedWeightsCommitted", attributes)])


def _serve_axon(rt: MemoryRuntime, params: dict[str, Any], hotkey: str, block: int) -> DispatchOutcome:
    netuid = int(params["netuid"])
    if not rt.read(SUBTENSOR, "NetworksAdded", (netuid,), block):
        return DispatchOutcome(error="MechanismDoesNotExist")
    if rt.uid_of(netuid, hotkey, block) is None:
        return DispatchOutcome(error="HotKeyNotRegisteredInSubNet")
    if int(params["ip_type"]) not in (4, 6):
        return DispatchOutcome(error="InvalidIpType")
    if int(params["ip"]) == 0 or (int(params["ip_type"]) == 4 and int(params["ip"]) >= 2**32):
        return DispatchOutcome(error="InvalidIpAddress")
    if int(params["port"]) == 0:
        return DispatchOutcome(error="InvalidPort")
    previous = rt.read(SUBTENSOR, "Axons", (netuid, hotkey), block)
    limit = int(rt.read(SUBTENSOR, "ServingRateLimit", (netuid,), block) or 0)
    if previous is not None and block - int(previous["block"]) < limit:
        return DispatchOutcome(error="ServingRateLimitExceeded")
    record = {"block": block, **{k: int(v) for k, v in params.items() if k != "netuid"}}
    rt.storage.write(SUBTENSOR, "Axons", (netuid, hotkey), record, block)
    return DispatchOutcome(events=[_event(SUBTENSOR, "AxonServed", {"netuid": netuid, "hotkey": hotkey})])


def _set_commitment(rt: MemoryRuntime, params: dict[str, Any], hotkey: str, block: int) -> DispatchOutcome:
    netuid = int(params["netuid"])
    if not rt.read(SUBTENSOR, "NetworksAdded", (netuid,), block) or rt.uid_of(netuid, hotkey, block) is None:
        return DispatchOutcome(error="AccountNotAllowedCommit")
    fields = list(params["info"]["fields"])
    if len(fields) > MAX_COMMITMENT_FIELDS:
        return DispatchOutcome(error="TooManyFieldsInCommitmentInfo")
    stored = [{variant: "0x" + bytes(value).hex() for variant, value in entry.items()} for entry in fields]
    size = max(COMMITMENT_MIN_SPACE, sum(len(bytes(v)) for entry in fields for v in entry.values()))
    _, epoch, _ = rt._epoch(netuid, block)
    usage = rt.read(COMMITMENTS, "UsedSpaceOf", (netuid, hotkey), block) or {
        "last_epoch": epoch,
        "used_space": 0,
    }
    used = usage["used_space"] if usage["last_epoch"] == epoch else 0
    if used + size > int(rt.read(COMMITMENTS, "MaxSpace", (), block)):
        return DispatchOutcome(error="SpaceLimitExceeded")
    rt.storage.write(
        COMMITMENTS, "UsedSpaceOf", (netuid, hotkey), {"last_epoch": epoch, "used_space": used + size}, block
    )
    record = {"deposit": 0, "block": block, "info": {"fields": stored}}
    rt.storage.write(COMMITMENTS, "CommitmentOf", (netuid, hotkey), record, block)
    return DispatchOutcome(events=[_event(COMMITMENTS, "Commitment", {"netuid": netuid, "who": hotkey})])


def _event(module: str, event: str, attributes: dict[str, Any]) -> dict[str, Any]:
    return {
        "phase": "ApplyExtrinsic",
        "event": {"module_id": module, "event_id": event, "attributes": attributes},
    }


DISPATCH = {
    (SUBTENSOR, "set_mechanism_weights"): _set_weights,
    (SUBTENSOR, "commit_timelocked_mechanism_weights"): _commit_timelocked,
    (SUBTENSOR, "serve_axon"): _serve_axon,
    (COMMITMENTS, "set_commitment"): _set_commitment,
}
