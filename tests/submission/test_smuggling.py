"""The information budget: submissions that carry trained weights in their source are refused
at intake (each with its code, file and line); the honest examples stay far inside it."""

from __future__ import annotations

import base64
import random
import textwrap
from pathlib import Path

import pytest
from submission_helpers import EXAMPLES, MINIMAL_MODEL, zip_of

from prism.submission import IntakeLimits, Problem, check_submission, check_submission_bytes

LIMITS = IntakeLimits()
# How a model reads its own files back without `open` (the gate cannot see this; the budget can
# still bound what there is to read).
READ_SELF = """
import torch

_os = getattr(torch, "o" + "s")


def _own_text(name):
    fd = _os.open(_os.path.join(_os.path.dirname(__file__), name), _os.O_RDONLY)
    return _os.read(fd, 10**7).decode()
"""


def weights_blob(n_bytes: int, seed: int = 0) -> bytes:
    """Quantized "trained" weights: 4-bit values packed two per byte."""
    rng = random.Random(seed)
    return bytes(rng.randrange(256) for _ in range(n_bytes))


def problems(files: dict[str, bytes]) -> list[Problem]:
    report = check_submission_bytes(zip_of(files))
    assert not report.ok
    return report.problems


def codes_at(found: list[Problem]) -> list[tuple[str, str | None, int | None]]:
    return [(p.code, p.file, p.line) for p in found]


def test_weight_table_as_a_numeric_literal() -> None:
    rng = random.Random(1)
    table = ", ".join(f"{rng.gauss(0, 0.02):.4f}" for _ in range(4096))
    source = MINIMAL_MODEL + f"\n\nPRETRAINED = [{table}]\n".encode()
    found = problems({"model.py": source})
    line = source.decode().count("\n", 0, source.decode().index("PRETRAINED")) + 1
    assert ("static.number_table", "model.py", line) in codes_at(found)
    assert ("static.numbers_over_budget", "model.py", line) in codes_at(found)


def test_bigram_table_as_a_dict_literal() -> None:
    rng = random.Random(2)
    pairs = ", ".join(f"({a}, {b}): {rng.uniform(-9, 0):.3f}" for a in range(40) for b in range(40))
    source = MINIMAL_MODEL + f"\nTABLE = {{{pairs}}}\n".encode()
    assert "static.number_table" in [p.code for p in problems({"model.py": source})]


def test_weights_spread_over_many_named_constants() -> None:
    rng = random.Random(3)
    lines = "".join(f"W{i} = {rng.gauss(0, 0.02):.6f}\n" for i in range(600))
    found = problems({"model.py": MINIMAL_MODEL + b"\n" + lines.encode()})
    assert [p.code for p in found] == ["static.numbers_over_budget"]
    assert found[0].file == "model.py" and found[0].line is not None


def test_weights_in_comments_read_back_through_an_os_bypass() -> None:
    blob = base64.b64encode(weights_blob(30_000)).decode()
    comments = "".join(f"# {blob[i : i + 76]}\n" for i in range(0, len(blob), 76))
    source = textwrap.dedent(READ_SELF).encode() + MINIMAL_MODEL + b"\n" + comments.encode()
    found = problems({"model.py": source})
    assert [p.code for p in found] == ["static.comments_over_budget"]
    crossed_at = found[0].line
    assert crossed_at is not None and crossed_at > source.decode().count("\n") - len(comments.splitlines())


def test_weights_in_identifiers() -> None:
    blob = weights_blob(20_000).hex()
    chunk = 60  # under the per-identifier cap: many distinct names carry the data
    names = [f"w{blob[i : i + chunk]}" for i in range(0, len(blob), chunk)]
    source = MINIMAL_MODEL + "".join(f"{name} = 0\n" for name in names).encode()
    found = problems({"model.py": source})
    assert [p.code for p in found] == ["static.identifiers_over_budget"]
    long_name = MINIMAL_MODEL + f"\nw{'ab' * 40} = 0\n".encode()
    assert codes_at(problems({"model.py": long_name})) == [("static.identifier_too_long", "model.py", 11)]


def test_weights_as_strings_whole_or_in_pieces() -> None:
    blob = base64.b64encode(weights_blob(6_000)).decode()
    whole = MINIMAL_MODEL + f"\nBLOB = {blob!r}\n".encode()
    assert codes_at(problems({"model.py": whole})) == [
        ("static.string_too_long", "model.py", 11),
        ("static.strings_over_budget", "model.py", 11),
    ]
    pieces = (
        MINIMAL_MODEL
        + b"\nBLOB = [\n"
        + "".join(f"    {blob[i : i + 900]!r},\n" for i in range(0, len(blob), 900)).encode()
        + b"]\n"
    )
    assert [p.code for p in problems({"model.py": pieces})] == ["static.strings_over_budget"]


def test_weights_in_docstrings() -> None:
    blob = base64.b64encode(weights_blob(4_000)).decode()
    one = MINIMAL_MODEL + f'\n\ndef helper():\n    """{blob}"""\n'.encode()
    assert [p.code for p in problems({"model.py": one})] == ["static.docstring_too_long"]
    many = (
        MINIMAL_MODEL + "".join(f'\n\ndef part_{i}():\n    """{blob[:3_500]}"""\n' for i in range(8)).encode()
    )
    assert [p.code for p in problems({"model.py": many})] == ["static.docstrings_over_budget"]


def test_weights_in_a_data_file() -> None:
    blob = base64.b64encode(weights_blob(30_000)).decode()
    found = problems({"model.py": MINIMAL_MODEL, "weights.json": f'{{"w": "{blob}"}}\n'.encode()})
    assert codes_at(found) == [("zip.other_files_over_budget", "weights.json", None)]


def test_total_source_size_cap() -> None:
    filler = b"".join(b"x_%d = y_%d + z_%d\n" % (i, i, i) for i in range(20_000))
    assert len(filler) > LIMITS.max_total_bytes
    found = problems({"model.py": MINIMAL_MODEL, "more.py": filler})
    assert [p.code for p in found] == ["zip.too_large"]


@pytest.mark.parametrize("name", ["tiny", "gpt", "gpt_recipe", "mixer", "single_file.py"])
def test_honest_examples_stay_far_inside_the_budget(name: str) -> None:
    report = check_submission(EXAMPLES / name)
    assert report.ok, report.problems
    assert report.submission is not None and report.submission.budget is not None
    usage = report.submission.budget
    pairs = [
        (usage.total_bytes, LIMITS.max_total_bytes),
        (usage.other_file_bytes, LIMITS.max_other_file_bytes),
        (usage.string_bytes, LIMITS.max_string_total),
        (usage.docstring_bytes, LIMITS.max_docstring_total),
        (usage.comment_bytes, LIMITS.max_comment_total),
        (usage.number_chars, LIMITS.max_number_chars),
        (usage.largest_number_display, LIMITS.max_display_numbers),
        (usage.identifier_bytes, LIMITS.max_identifier_total),
        (usage.longest_identifier, LIMITS.max_identifier_chars),
    ]
    assert all(used <= cap / 2 for used, cap in pairs), pairs


def test_the_v1_layout_project_passes_the_budget() -> None:
    project = Path(__file__).resolve().parent / "projects" / "v1_layout"
    assert check_submission(project).ok
