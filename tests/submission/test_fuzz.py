"""Hypothesis: random bytes, random archives and mutated real archives never crash intake with
anything but a SubmissionError."""

from __future__ import annotations

import stat

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from submission_helpers import EXAMPLES, RawEntry, raw_zip

from prism.submission import SubmissionError, load_submission_bytes, pack_directory, parse_project_manifest

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TINY_ZIP = pack_directory(EXAMPLES / "tiny")


def intake_survives(data: bytes, filename: str = "submission.zip") -> None:
    try:
        load_submission_bytes(data, filename=filename)
    except SubmissionError as exc:
        assert exc.code and exc.fault == "miner"


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    intake_survives(data)
    intake_survives(data, filename="model.py")


names = st.one_of(
    st.text(alphabet=st.sampled_from("abcXY_./\\:-\x00é "), min_size=0, max_size=24),
    st.sampled_from(["model.py", "prism.yaml", "src/model.py", "../x.py", "/abs.py", "a/", "M.PY"]),
)
entries = st.builds(
    lambda name, content, deflate, flags, mode, size_delta, crc_flip: _entry(
        name, content, deflate, flags, mode, size_delta, crc_flip
    ),
    names,
    st.binary(max_size=512)
    | st.sampled_from([b"import os\n", b"def build_model(ctx):\n    pass\n", b"kind: full\n"]),
    st.booleans(),
    st.sampled_from([0, 0x1, 0x8, 0x800]),
    st.sampled_from([stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777, stat.S_IFDIR | 0o755, 0, stat.S_IFCHR]),
    st.integers(-5, 5),
    st.booleans(),
)


def _entry(name, content, deflate, flags, mode, size_delta, crc_flip) -> RawEntry:
    entry = RawEntry.of(name.encode("utf-8"), content, deflate=deflate, flags=flags, mode=mode)
    entry.size = max(0, entry.size + size_delta)
    if crc_flip:
        entry.crc ^= 1
    return entry


@FUZZ
@given(st.lists(entries, max_size=6))
def test_random_archives(items: list[RawEntry]) -> None:
    intake_survives(raw_zip(items))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(TINY_ZIP) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_real_archive(flips: list[tuple[int, int]]) -> None:
    data = bytearray(TINY_ZIP)
    for position, value in flips:
        data[position] = value
    intake_survives(bytes(data))


@FUZZ
@given(st.text(max_size=300))
def test_random_manifest_text(text: str) -> None:
    try:
        parse_project_manifest(text)
    except SubmissionError as exc:
        assert exc.code.startswith("manifest.")
