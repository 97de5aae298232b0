"""`prism chain create/register/stake/show` on a real local chain file with real wallets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prism.chain.local import LocalChain
from prism.cli import main


def test_create_register_stake_and_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, wallets = str(tmp_path / "chain.db"), str(tmp_path / "wallets")
    assert (
        main(["chain", "create", "--path", db, "--netuid", "5", "--tempo", "12", "--block-time", "0.5"]) == 0
    )
    common = ["--path", db, "--netuid", "5", "--wallet.path", wallets, "--create-wallet"]
    assert (
        main(["chain", "register", *common, "--wallet.name", "val", "--stake", "100", "--validator-permit"])
        == 0
    )
    assert main(["chain", "register", *common, "--wallet.name", "miner", "--wallet.hotkey", "m1"]) == 0
    stake = ["chain", "stake", "--path", db, "--netuid", "5", "--wallet.path", wallets]
    assert main([*stake, "--wallet.name", "miner", "--wallet.hotkey", "m1", "--amount", "2.5"]) == 0
    capsys.readouterr()
    assert main(["chain", "show", "--path", db, "--netuid", "5", "--json"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["params"]["tempo"] == 12 and state["block_time_s"] == 0.5
    assert [(n["uid"], n["stake"], n["validator_permit"]) for n in state["neurons"]] == [
        (0, 100.0, True),
        (1, 2.5, False),
    ]
    assert LocalChain(db, 5).metagraph().neurons[1].hotkey == state["neurons"][1]["hotkey"]
    assert main(["chain", "show", "--path", db, "--netuid", "5"]) == 0
    assert "subnet 5 at block" in capsys.readouterr().out


def test_operator_mistakes_exit_1_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "chain.db")
    assert main(["chain", "show", "--path", db]) == 1
    assert "chain.subnet_missing" in capsys.readouterr().err
    assert main(["chain", "create", "--path", db]) == 0
    assert main(["chain", "create", "--path", db]) == 1
    assert "chain.subnet_exists" in capsys.readouterr().err
    missing = [
        "chain",
        "register",
        "--path",
        db,
        "--wallet.name",
        "ghost",
        "--wallet.path",
        str(tmp_path / "w"),
    ]
    assert main(missing) == 1
    assert "wallet.missing" in capsys.readouterr().err
