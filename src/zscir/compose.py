"""Composed queries: prompt templates (data), caption cleaning, query composition, methods, CIG fusion.

The one place that turns (reference features / pseudo token, relative caption(s)) into a normalised
query vector: `METHODS` maps each retrieval method to its query builder, read by the evaluator, the
search service, RTD validation and CIG alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from zscir.data.records import strip_caption
from zscir.errors import DataError, ZscirError
from zscir.prompts import METHOD_TEMPLATES, PSEUDO_WORD, TEMPLATE_SETS, TEMPLATES  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class PromptTemplate:
    """A prompt with the pseudo word `$` and an optional `{caption}` slot."""

    text: str = TEMPLATES["default"]

    def __post_init__(self):
        words = self.text.replace("{caption}", " ").split()
        if PSEUDO_WORD not in words:
            raise ZscirError(f"prompt template {self.text!r} has no pseudo word '{PSEUDO_WORD}' (as a separate word)")

    @classmethod
    def named(cls, name_or_text: str) -> PromptTemplate:
        """A registered template by name (`prompts.TEMPLATES`), or the text itself.

        Raises:
            ZscirError: neither a known name nor a text with the pseudo word (lists the known names).
        """
        if name_or_text in TEMPLATES:
            return cls(TEMPLATES[name_or_text])
        if PSEUDO_WORD not in name_or_text.replace("{caption}", " ").split():
            raise ZscirError(f"unknown prompt template {name_or_text!r}; known names: {', '.join(TEMPLATES)}; "
                             f"or give a text with the pseudo word '{PSEUDO_WORD}' (and {{caption}})")
        return cls(name_or_text)

    @classmethod
    def for_network(cls, name_or_text: str | None, network=None) -> PromptTemplate:
        """`named(name_or_text)`, or when it is None the template of the network's method (`METHOD_TEMPLATES`)."""
        if name_or_text is None:
            kind = getattr(network, "kind", "phi")
            name_or_text = METHOD_TEMPLATES.get(kind, "default")
        return cls.named(name_or_text)

    def format(self, caption: str = "") -> str:
        """The prompt for one caption (as prepared by its benchmark's protocol; may be empty)."""
        return self.text.replace("{caption}", caption)


def mask_spans(text: str, spans: Sequence[tuple[int, int]], pseudo_word: str = PSEUDO_WORD) -> str:
    """`text` with every character span replaced by the pseudo word as a word of its own.

    Spans are sorted and non-overlapping. Where the character before or after a span is not
    whitespace (punctuation such as "," "." "'s" ")"), a space is inserted so that the tokenizer
    sees `$` alone: "a dog, running." with the span "a dog" gives "$ , running.".
    """
    pieces, cursor = [], 0
    for start, end in spans:
        pieces.append(text[cursor:start])
        left = " " if start > 0 and not text[start - 1].isspace() else ""
        right = " " if end < len(text) and not text[end].isspace() else ""
        pieces.append(f"{left}{pseudo_word}{right}")
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def clean_caption(caption: str, where: str = "caption") -> str:
    """A caption a user typed (search box, RTD triplets): stripped of whitespace and trailing ".?, ".

    Benchmark captions do not come here: they are prepared as their official protocol does by
    `zscir.data.records.prepare_caption` and composed as written, even when empty.

    Raises:
        DataError: not a string, or empty after stripping (the message starts with `where`).
    """
    if not isinstance(caption, str):
        raise DataError(f"{where}: expected a string, got {type(caption).__name__}")
    cleaned = strip_caption(caption)
    if not cleaned:
        raise DataError(f"{where}: empty caption")
    return cleaned


def caption_variants(captions: Sequence[str]) -> list[str]:
    """The caption texts a query is encoded with, from its captions as written (already prepared).

    One caption → itself. Two (FashionIQ) → "c1 and c2" and "c2 and c1" (averaged later). An empty
    caption is composed as written, as the official evaluation code does (the test servers need
    every query): "" and "is red" give " and is red" and "is red and ".
    """
    for c in captions:
        if not isinstance(c, str):
            raise DataError(f"a caption must be a string, got {type(c).__name__}")
    if len(captions) == 1:
        return [captions[0]]
    if len(captions) == 2:
        return [f"{captions[0]} and {captions[1]}", f"{captions[1]} and {captions[0]}"]
    raise DataError(f"a query has 1 or 2 captions, got {len(captions)}")


def compose_queries(
    backbone,
    pseudo_tokens: torch.Tensor,
    captions: Sequence[Sequence[str]],
    template: PromptTemplate | None = None,
    batch_size: int = 256,
    text_tower: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Normalised composed queries q = normalize(encode(template(caption), v)) (METHODS.md §1).

    Args:
        backbone: a `Backbone`.
        pseudo_tokens: [N, H] one pseudo token per query (Phi output, not normalised).
        captions: N tuples of 1 or 2 relative captions; two captions are encoded in both orders,
            each normalised, averaged and renormalised.
        template: prompt with `$` and `{caption}`.
        text_tower: optional replacement text tower (e.g. RTD fine-tuned).
    Returns:
        [N, P] float32 L2-normalised query vectors on the CPU.
    """
    template = template or PromptTemplate()
    if len(captions) != pseudo_tokens.shape[0]:
        raise ValueError(f"{len(captions)} caption tuples for {pseudo_tokens.shape[0]} pseudo tokens")
    prompts, owner_index = _variant_prompts(captions, template.format)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            rows = owner_index[start : start + batch_size]
            out = backbone.encode_composed(prompts[start : start + batch_size], pseudo_tokens[rows],
                                           text_tower=text_tower)
            chunks.append(F.normalize(out.text_embeds.float().cpu(), dim=-1))
    return _average_per_query(torch.cat(chunks), owner_index, len(captions))


def _variant_prompts(captions: Sequence[Sequence[str]], prompt_of) -> tuple[list[str], torch.Tensor]:
    """Every caption variant of every query as a prompt, and [V] the query row each prompt belongs to."""
    prompts, owners = [], []
    for row, caps in enumerate(captions):
        for text in caption_variants(caps):
            prompts.append(prompt_of(text))
            owners.append(row)
    return prompts, torch.tensor(owners, dtype=torch.long)


def _average_per_query(per_prompt: torch.Tensor, owner_index: torch.Tensor, num_queries: int) -> torch.Tensor:
    """[num_queries, P] normalised mean of the normalised [V, P] prompt embeddings of each query."""
    summed = torch.zeros(num_queries, per_prompt.shape[1]).index_add_(0, owner_index, per_prompt)
    return F.normalize(summed, dim=-1)


@dataclass
class QueryInputs:
    """What a query builder may read (rows = the active queries).

    Attributes:
        backbone: the backbone, with the fine-tuned text tower already swapped in if one was given.
        reference_features: [Q, P] raw (unnormalised) reference image embeddings.
        captions: Q tuples of caption texts (CIRCO concept text already applied).
        phi: the inversion network or None.
        pseudo_tokens: [Q, H] given pseudo tokens (override Phi), or None.
        template: the prompt template of Phi-based methods.
        batch_size: text batch size.
    """

    backbone: object
    reference_features: torch.Tensor
    captions: list[tuple[str, ...]]
    phi: torch.nn.Module | None = None
    pseudo_tokens: torch.Tensor | None = None
    template: PromptTemplate = field(default_factory=PromptTemplate)
    batch_size: int = 256


def text_queries(backbone, captions: Sequence[Sequence[str]], batch_size: int = 256) -> torch.Tensor:
    """Normalised caption embeddings; two captions (FashionIQ) are joined in both orders and averaged.

    Args:
        backbone: a `Backbone` (its text tower encodes).
        captions: Q tuples of 1 or 2 captions.
        batch_size: prompts per forward pass.
    Returns:
        [Q, P] float32 L2-normalised.
    """
    prompts, owner_index = _variant_prompts(captions, str)  # the same variants compose_queries uses
    per_prompt = F.normalize(backbone.encode_text(prompts, batch_size=batch_size), dim=-1)
    return _average_per_query(per_prompt, owner_index, len(captions))


def pseudo_tokens_of(phi: torch.nn.Module, image_features: torch.Tensor, device=None) -> torch.Tensor:
    """v = Phi(image_embeds) for raw (unnormalised) image embeddings.

    Args:
        phi: Phi or Pic2Word mapper (eval mode).
        image_features: [N, P].
        device: where Phi runs (default: where its weights are).
    Returns:
        [N, H] float32 CPU pseudo tokens.
    """
    weight = next(phi.parameters())
    device = device or weight.device
    with torch.inference_mode():
        return phi(image_features.to(device, weight.dtype)).float().cpu()


def _image_builder(x: QueryInputs) -> torch.Tensor:
    return F.normalize(x.reference_features, dim=-1)


def _text_builder(x: QueryInputs) -> torch.Tensor:
    return text_queries(x.backbone, x.captions, x.batch_size)


def _sum_builder(x: QueryInputs) -> torch.Tensor:
    return F.normalize(_image_builder(x) + _text_builder(x), dim=-1)


def _phi_builder(x: QueryInputs) -> torch.Tensor:
    tokens = x.pseudo_tokens
    if tokens is None:
        if x.phi is None:
            raise ZscirError("method 'phi' needs an inversion network or pseudo tokens", setting="phi")
        tokens = pseudo_tokens_of(x.phi, x.reference_features, x.backbone.device)
    return compose_queries(x.backbone, tokens, x.captions, x.template, x.batch_size)


@dataclass(frozen=True)
class Method:
    """A retrieval method: how it builds its [Q, P] normalised query matrix.

    Attributes:
        name: CLI name.
        build: QueryInputs -> [Q, P] normalised queries.
        uses_text: reads the captions (so a fine-tuned text tower matters).
        needs_phi: needs an inversion network (or given pseudo tokens).
        description: one line for help texts.
    """

    name: str
    build: Callable[[QueryInputs], torch.Tensor]
    uses_text: bool
    needs_phi: bool
    description: str


METHODS: dict[str, Method] = {m.name: m for m in [
    Method("image", _image_builder, False, False, "reference image embedding only"),
    Method("text", _text_builder, True, False, "relative caption text embedding only"),
    Method("sum", _sum_builder, True, False, "normalize(normalize(image) + normalize(text))"),
    Method("phi", _phi_builder, True, True, "SEARLE / LinCIR / Pic2Word: compose 'a photo of $ that {caption}'"),
]}


def fuse_queries(reference_queries: torch.Tensor, generated_queries: torch.Tensor, alpha: float) -> torch.Tensor:
    """CIG fusion q = normalize(α·f_ref + (1−α)·f_gen) of two [N, P] normalised query sets (METHODS.md §5)."""
    if not 0.0 <= alpha <= 1.0:
        raise ZscirError(f"alpha must be in [0, 1], got {alpha}")
    return F.normalize(alpha * reference_queries + (1.0 - alpha) * generated_queries, dim=-1)
