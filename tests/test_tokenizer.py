"""The vendored real CLIP tokenizer against a slow BPE written from the definition, and the world's BPE."""

from __future__ import annotations

import functools
import gzip

import pytest
import regex

from zscir.models.tokenizer import (
    CLIP_BPE_FILE,
    CLIP_MERGES,
    CLIP_VOCAB_SIZE,
    byte_symbols,
    pseudo_token_id,
)

TEXTS = [
    "a photo of a cat",
    "a photo of $ that is red",
    "A Dog, running on the BEACH.",
    "the man's hat",
    "(red) car",
    "two cats; one black",
    "$, $. $'s",
    "it's 2024: 12 photos   of   café crème!!",
    "shoes\twith\nlaces",
]


@functools.lru_cache(maxsize=1)
def _merge_ranks() -> dict:
    lines = gzip.open(CLIP_BPE_FILE, "rt", encoding="utf-8").read().split("\n")[1 : 1 + CLIP_MERGES]
    return {tuple(line.split()): i for i, line in enumerate(lines)}


def slow_clip_bpe(text: str) -> list[int]:
    """CLIP tokenization from its definition: lower case, split, bytes to symbols, merge lowest rank first."""
    rank = _merge_ranks()
    merges = list(rank)
    printable = [b for b in range(256) if chr(b).isprintable() and b not in (32, 127, 160, 173)]
    others = [b for b in range(256) if b not in printable]
    of_byte = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}
    symbols = [of_byte[b] for b in printable + others]
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + specials
    index = {s: i for i, s in enumerate(vocab)}
    text = regex.sub(r"\s+", " ", text).strip().lower()
    pattern = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
    ids = [index["<|startoftext|>"]]
    for piece in regex.findall(pattern, text):
        word = [of_byte[b] for b in piece.encode("utf-8")]
        word[-1] += "</w>"
        while len(word) > 1:
            pairs = [(rank.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
            best, i = min(pairs)
            if best == float("inf"):
                break
            word = word[:i] + [word[i] + word[i + 1]] + word[i + 2 :]
        ids += [index[s] for s in word]
    return ids + [index["<|endoftext|>"]]


def test_real_clip_vocabulary_layout(real_clip_tokenizer):
    tok = real_clip_tokenizer
    assert len(tok) == CLIP_VOCAB_SIZE == 49408
    assert (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)
    assert tok.convert_ids_to_tokens([0, 255, 256, 511, 512]) == ["!", "Ń", "!</w>", "Ń</w>", "i" + "n"]
    # The pseudo word is the single token `$</w>`: 256 + the rank of '$' among the byte symbols.
    assert pseudo_token_id(tok) == 256 + byte_symbols().index("$") == 259


@pytest.mark.parametrize("text", TEXTS)
def test_real_clip_tokenizer_equals_slow_bpe_from_definition(real_clip_tokenizer, text):
    assert real_clip_tokenizer(text)["input_ids"] == slow_clip_bpe(text)


def test_real_clip_known_ids_and_round_trip(real_clip_tokenizer):
    # "a photo of a cat" as the published CLIP tokenizer encodes it.
    assert real_clip_tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    for text in ["a photo of $ that is red", "two cats; one black", "the man's hat"]:
        ids = real_clip_tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = real_clip_tokenizer.decode(ids)  # CLIP decodes every `</w>` as a space: "cats ; one"
        assert decoded.replace(" ", "") == text.replace(" ", "")
    assert real_clip_tokenizer.decode(real_clip_tokenizer("a photo of $ that is red")["input_ids"],
                                      skip_special_tokens=True) == "a photo of $ that is red"


def test_real_bpe_merges_pseudo_word_with_punctuation(real_clip_tokenizer):
    """The failure the masking must avoid: '$.' is one token that is not the pseudo token."""
    pid = pseudo_token_id(real_clip_tokenizer)
    assert pid not in real_clip_tokenizer("on the $.", add_special_tokens=False)["input_ids"]
    assert pid in real_clip_tokenizer("on the $ .", add_special_tokens=False)["input_ids"]


def test_both_tokenizers_have_a_single_token_pseudo_word(clip_tokenizer):
    ids = clip_tokenizer("a photo of $ that is blue", add_special_tokens=False)["input_ids"]
    assert ids.count(pseudo_token_id(clip_tokenizer)) == 1
    assert clip_tokenizer.convert_ids_to_tokens(pseudo_token_id(clip_tokenizer)) == "$</w>"


def test_real_clip_tokenizer_saves_and_reloads(real_clip_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    real_clip_tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert loaded(text)["input_ids"] == real_clip_tokenizer(text)["input_ids"]


def test_vendored_bpe_ships_as_package_data():
    from fnmatch import fnmatch
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    assert CLIP_BPE_FILE.is_file() and (CLIP_BPE_FILE.parent / "LICENSE-CLIP-BPE").is_file()
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["zscir"]
    rel = CLIP_BPE_FILE.relative_to(CLIP_BPE_FILE.parents[2]).as_posix()  # models/assets/...
    lic = (CLIP_BPE_FILE.parent / "LICENSE-CLIP-BPE").relative_to(CLIP_BPE_FILE.parents[2]).as_posix()
    assert any(fnmatch(rel, p) for p in patterns) and any(fnmatch(lic, p) for p in patterns)


def test_tiny_clip_on_the_real_tokenizer(tiny_real_backbone):
    assert len(tiny_real_backbone.tokenizer) == 49408 and tiny_real_backbone.pseudo_token_id == 259
    assert tiny_real_backbone.text.config.vocab_size == 49408
    out = tiny_real_backbone.encode_text(["a photo of a cat", "the man's hat"])
    assert out.shape == (2, tiny_real_backbone.projection_dim) and bool(out.isfinite().all())
