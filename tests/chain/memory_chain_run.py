"""Run a PRISM entry point unmodified, with bittensor's RPC backend replaced by the in-memory chain.

    python tests/chain/memory_chain_run.py SCENARIO.json JOURNAL.jsonl neurons/validator.py --flags...

The scenario (JSON) describes the chain at genesis and the faults to inject; every extrinsic and
every injected fault is appended to the journal (JSON lines) as it happens, so a test can watch
the run from outside. The only substitution is the backend class bittensor's ``Client``
constructs (``MemorySubstrate.install``); the entry point, PRISM and the whole SDK run as they
would against a node.

Scenario keys: ``start_block``, ``block_time_s`` (the head advances with wall time), ``slot_ms``,
``subnets`` (``netuid``, ``tempo``, ``owner_hotkey``, ``owner_coldkey``, ``hyperparams``: storage
item -> value), ``neurons`` (``netuid``, ``hotkey``, ``coldkey``, ``alpha``, ``permit``, ``axon``,
``last_update``), ``funds`` (account -> TAO), ``commitments`` (``netuid``, ``hotkey``, ``text``,
``block``), ``faults`` (``memory_faults.Fault`` fields).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path
from typing import Any

from memory_faults import Fault
from memory_substrate import MemorySubstrate


def backend_from_scenario(scenario: dict[str, Any], *, journal: Path | None = None) -> MemorySubstrate:
    backend = MemorySubstrate(
        journal=journal,
        start_block=scenario.get("start_block", 1000),
        block_time_s=scenario.get("block_time_s"),
        slot_ms=scenario.get("slot_ms", 250),
    )
    runtime = backend.runtime
    for subnet in scenario.get("subnets", []):
        runtime.add_subnet(subnet["netuid"], tempo=subnet["tempo"], owner_hotkey=subnet["owner_hotkey"],
                           owner_coldkey=subnet["owner_coldkey"], **subnet.get("hyperparams", {}))  # fmt: skip
    for neuron in scenario.get("neurons", []):
        runtime.register(neuron["netuid"], neuron["hotkey"], neuron["coldkey"], alpha=neuron.get("alpha", 0.0),
                         permit=neuron.get("permit", False), last_update=neuron.get("last_update"),
                         axon=tuple(neuron["axon"]) if neuron.get("axon") else None)  # fmt: skip
    for account, tao in scenario.get("funds", {}).items():
        runtime.fund(account, tao)
    for entry in scenario.get("commitments", []):
        payload = entry["text"].encode()
        fields = [{f"Raw{len(payload)}": "0x" + payload.hex()}]
        runtime.put_commitment(entry["netuid"], entry["hotkey"], fields, block=entry["block"])
    backend.inject(*(Fault(**fault) for fault in scenario.get("faults", [])))
    return backend


def main() -> None:
    scenario_path, journal_path, script, *args = sys.argv[1:]
    backend = backend_from_scenario(json.loads(Path(scenario_path).read_text()), journal=Path(journal_path))
    backend.install()
    sys.argv = [script, *args]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
