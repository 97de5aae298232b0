"""Only prism/chain/ may import bittensor: scan the AST of every prism/ and neurons/ module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports_bittensor(path: Path) -> list[int]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in {
            "import_module",
            "__import__",
        }:
            names = [
                arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            ]
        else:
            continue
        if any(name == "bittensor" or name.startswith("bittensor.") for name in names):
            lines.append(node.lineno)
    return lines


def test_only_prism_chain_imports_bittensor() -> None:
    files = sorted((ROOT / "prism").rglob("*.py")) + sorted((ROOT / "neurons").rglob("*.py"))
    assert len(files) > 10
    chain_dir = ROOT / "prism" / "chain"
    offenders = {
        str(path.relative_to(ROOT)): lines
        for path in files
        if not path.is_relative_to(chain_dir) and (lines := _imports_bittensor(path))
    }
    assert offenders == {}, f"bittensor imported outside prism/chain: {offenders}"


def test_the_scanner_sees_every_import_form(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import bittensor\nfrom bittensor import http_auth\nimport bittensor.wallet as w\n"
        "import importlib\nimportlib.import_module('bittensor')\nimport os\nfrom . import bittensor_chain\n"
    )
    assert _imports_bittensor(sample) == [1, 2, 3, 5]
