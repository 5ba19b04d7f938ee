"""CLIP-format BPE tokenizers built offline: OpenAI CLIP's real one, or a small one trained on a corpus.

There is no hub to fetch `openai/clip-*` tokenizers from offline. `openai_clip_tokenizer` builds
the real CLIP tokenizer (vocabulary 49408) from OpenAI's BPE merges, vendored as package data in
`zscir/models/assets/` (MIT licence, see LICENSE-CLIP-BPE there). `train_clip_tokenizer` trains a
small byte-level BPE with the same normaliser, pre-tokeniser and `</w>` end-of-word convention.
Both give a regular `CLIPTokenizer` that `save_pretrained` writes as a folder `AutoTokenizer` loads
like a hub tokenizer. The pseudo word `$` is a single token in both.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from zscir.errors import ModelLoadError

PSEUDO_WORD = "$"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

CLIP_BPE_FILE = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_MERGES = 49152 - 256 - 2  # OpenAI CLIP uses the first 48894 merges of the file
CLIP_VOCAB_SIZE = 2 * 256 + CLIP_MERGES + 2  # 49408


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins of the bytes 0..255 (GPT-2/CLIP byte-level BPE), in vocabulary order.

    Printable Latin-1 bytes stand for themselves; the other bytes map to chr(256 + n) in byte order.
    The list is ordered as CLIP's vocabulary: the printable ones first (by byte), then the others.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def read_clip_merges(path: str | Path = CLIP_BPE_FILE) -> list[tuple[str, str]]:
    """The merge rules CLIP uses, in rank order (the file's first line is a version header)."""
    import gzip

    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + CLIP_MERGES]]
    if len(merges) != CLIP_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: expected {CLIP_MERGES} merge rules of two symbols each")
    return merges  # type: ignore[return-value]


def openai_clip_tokenizer(model_max_length: int = 77, save_dir: str | Path | None = None):
    """OpenAI CLIP's tokenizer, built from the vendored BPE merges (no hub access).

    The vocabulary is CLIP's: the 256 byte symbols, the same with `</w>`, one symbol per merge rule
    (48894), then `<|startoftext|>` (49406) and `<|endoftext|>` (49407). Normalisation (lower case,
    whitespace runs to one space) and pre-tokenisation (`'s|'t|...|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`)
    are transformers' `CLIPTokenizer`, which follow OpenAI's `SimpleTokenizer` (OpenAI also runs
    ftfy and HTML unescaping first; plain text is unaffected).

    Args:
        model_max_length: context length written into the tokenizer config (77 for CLIP).
        save_dir: if given, the tokenizer is saved there with `save_pretrained`.
    Returns:
        A `transformers.CLIPTokenizer` with `len(tokenizer) == 49408`.
    """
    from transformers import CLIPTokenizer

    merges = read_clip_merges()
    symbols = byte_symbols()
    vocab: dict[str, int] = {}
    for sym in symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]:
        if sym in vocab:
            raise ValueError(f"{CLIP_BPE_FILE}: symbol {sym!r} occurs twice in the vocabulary")
        vocab[sym] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer


def train_clip_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1000,
    model_max_length: int = 77,
    save_dir: str | Path | None = None,
):
    """Train a byte-level BPE tokenizer in CLIP's format.

    Args:
        texts: training corpus (any iterable of strings; `$` is added to it).
        vocab_size: target vocabulary size including the 512 byte symbols and 2 special tokens.
        model_max_length: context length written into the tokenizer config.
        save_dir: if given, the tokenizer is saved there with `save_pretrained`.
    Returns:
        A `transformers.CLIPTokenizer`. Special tokens come last, so the end-of-text id is never 2
        (HF CLIP would otherwise fall back to its legacy arg-max pooling).
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    # The same normaliser and pre-tokeniser as transformers' CLIPTokenizer.
    bpe.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                behavior="removed",
                invert=True,
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size - 2, 2 * len(alphabet) + 1),
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    corpus = list(texts) + [PSEUDO_WORD, f"a photo of {PSEUDO_WORD}"]
    bpe.train_from_iterator(corpus, trainer=trainer)
    trained = bpe.get_vocab()
    # CLIP's layout: 256 byte symbols, the same with </w>, then merged symbols, then specials.
    base = sorted(alphabet)
    vocab: dict[str, int] = {}
    for sym in base + [s + "</w>" for s in base]:
        vocab.setdefault(sym, len(vocab))
    for sym, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        vocab.setdefault(sym, len(vocab))
    vocab[BOS] = len(vocab)
    vocab[EOS] = len(vocab)
    merges = [tuple(pair.split(" ")) if isinstance(pair, str) else tuple(pair) for pair in _merges(bpe)]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    ids = tokenizer(PSEUDO_WORD, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise RuntimeError(f"'{PSEUDO_WORD}' is not a single token in the trained tokenizer: {ids}")
    if save_dir is not None:
        tokenizer.save_pretrained(str(save_dir))
    return tokenizer


def _merges(bpe) -> list:
    """The merge list of a trained `tokenizers` BPE model, in rank order."""
    import json

    return json.loads(bpe.to_str())["model"]["merges"]


def pseudo_token_id(tokenizer, word: str = PSEUDO_WORD) -> int:
    """The id of the pseudo word, asked from the tokenizer (never hard-coded).

    Raises:
        ModelLoadError: if the word is not exactly one token for this tokenizer.
    """
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ModelLoadError(f"the pseudo word {word!r} is {len(ids)} tokens for this tokenizer, expected exactly 1")
    return int(ids[0])


def pseudo_word_counts(tokenizer, texts, word: str = PSEUDO_WORD) -> list[int]:
    """How many times the pseudo-word id occurs in each text's full tokenization (no truncation).

    The real CLIP BPE merges `$` with punctuation written against it ("$." and "$," are single tokens
    that are not the pseudo token), so a text's count can be lower than the number of `$` written into
    it; a `$` in the original text ("$5") can make it higher. Callers compare with what they inserted.
    """
    pid = pseudo_token_id(tokenizer, word)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [row.count(pid) for row in ids]
