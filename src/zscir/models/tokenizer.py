"""Build a CLIP-format BPE tokenizer offline, from a text corpus.

Tests and the synthetic world have no hub to fetch `openai/clip-*` tokenizers from, so they
train a small byte-level BPE with the same normaliser, pre-tokeniser and `</w>` end-of-word
convention as CLIP's, and save it as a regular `CLIPTokenizer` folder that `AutoTokenizer`
loads like a hub tokenizer. The pseudo word `$` is guaranteed to be a single token.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

PSEUDO_WORD = "$"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


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
    from zscir.errors import ModelLoadError

    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ModelLoadError(f"the pseudo word {word!r} is {len(ids)} tokens for this tokenizer, expected exactly 1")
    return int(ids[0])
