"""Encoding text with pseudo tokens through a CLIP text tower (METHODS.md §1).

This is the ONE module of zscir that reaches into transformers' CLIP internals. Every other
module calls `encode_with_pseudo_tokens` (or `Backbone.encode_composed`).

The pass: token embeddings → every position holding the pseudo-token id is replaced by that
row's pseudo-token vector → + position embeddings → the encoder layers WITH the causal mask
(built through transformers' public `create_causal_mask`) → final layer norm → the hidden state
at the end-of-text position → `text_projection`. With no pseudo token in a prompt this is exactly
the tower's own `text_embeds`.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch


@dataclass
class PseudoTokenOutput:
    """Result of `encode_with_pseudo_tokens`.

    Attributes:
        text_embeds: [B, P] projected end-of-text vectors (not L2-normalised).
        penultimate_hidden_states: [B, L, H] output of the second-to-last encoder layer (no final
            norm), as SDXL consumes it; None unless requested.
    """

    text_embeds: torch.Tensor
    penultimate_hidden_states: torch.Tensor | None = None


def end_of_text_positions(text_model, input_ids: torch.Tensor) -> torch.Tensor:
    """Index of the end-of-text token in each row, chosen exactly as the HF tower pools.

    Configs with the legacy `eos_token_id == 2` pool at the arg-max id (OpenAI's convention, the
    end token having the highest id); others at the first occurrence of `eos_token_id`.
    """
    eos_id = text_model.config.eos_token_id
    ids = input_ids.to(torch.int)
    if eos_id == 2:
        return ids.argmax(dim=-1)
    is_eos = ids == eos_id
    if not bool(is_eos.any(dim=-1).all()):
        raise ValueError(f"every row must contain the end-of-text id {eos_id}; tokenize with the backbone's tokenizer")
    return is_eos.int().argmax(dim=-1)


@functools.lru_cache(maxsize=1)
def _causal_mask_parameters() -> frozenset[str]:
    from transformers.masking_utils import create_causal_mask

    return frozenset(inspect.signature(create_causal_mask).parameters)


def causal_attention_mask(config, hidden: torch.Tensor):
    """The text tower's causal mask from transformers' public `create_causal_mask`, as the tower builds it.

    The function's arguments changed within 5.x (5.0: `input_embeds` + `cache_position` +
    `past_key_values`; later `inputs_embeds` + `past_key_values`; 5.2x: `cache`, with
    `past_key_values` deprecated for removal in 5.40). Each argument is passed under the name the
    installed version declares, so no deprecated name is ever used (no FutureWarning per encode).
    """
    from transformers.masking_utils import create_causal_mask

    params = _causal_mask_parameters()
    kwargs = {"config": config, "attention_mask": None}
    kwargs["inputs_embeds" if "inputs_embeds" in params else "input_embeds"] = hidden
    kwargs["cache" if "cache" in params else "past_key_values"] = None
    if "cache_position" in params:
        kwargs["cache_position"] = torch.arange(hidden.shape[1], device=hidden.device)
    return create_causal_mask(**kwargs)


def encode_with_pseudo_tokens(
    text_tower,
    input_ids: torch.Tensor,
    pseudo_tokens: torch.Tensor | None = None,
    pseudo_token_id: int | None = None,
    return_penultimate: bool = False,
) -> PseudoTokenOutput:
    """Run a `CLIPTextModelWithProjection` with pseudo-token vectors in place of the pseudo word.

    Args:
        text_tower: a `transformers.CLIPTextModelWithProjection` (trainable or frozen; the pass is
            differentiable w.r.t. its parameters and the pseudo tokens).
        input_ids: [B, L] token ids from the tower's tokenizer (with start and end tokens).
        pseudo_tokens: [B, H] one vector per row, replacing EVERY occurrence of `pseudo_token_id`
            in that row; None to encode plain text.
        pseudo_token_id: the tokenizer's id of the pseudo word (ask the tokenizer; never hard-code).
        return_penultimate: also return the [B, L, H] penultimate hidden states.
    Returns:
        PseudoTokenOutput with `text_embeds` [B, P] in the tower's dtype.
    """
    text_model = text_tower.text_model
    embeddings = text_model.embeddings
    input_ids = input_ids.to(embeddings.token_embedding.weight.device)
    token_embeds = embeddings.token_embedding(input_ids)  # [B, L, H]
    if pseudo_tokens is not None:
        if pseudo_token_id is None:
            raise ValueError("pseudo_token_id is required when pseudo_tokens are given")
        if pseudo_tokens.shape != (input_ids.shape[0], token_embeds.shape[-1]):
            raise ValueError(
                f"pseudo_tokens must be [batch={input_ids.shape[0]}, hidden={token_embeds.shape[-1]}], "
                f"got {list(pseudo_tokens.shape)}"
            )
        is_pseudo = (input_ids == pseudo_token_id).unsqueeze(-1)  # [B, L, 1]
        token_embeds = torch.where(is_pseudo, pseudo_tokens.to(token_embeds.dtype).unsqueeze(1), token_embeds)
    hidden = embeddings(inputs_embeds=token_embeds)  # + position embeddings
    causal_mask = causal_attention_mask(text_model.config, hidden)
    layers = text_model.encoder.layers
    penultimate = None
    for index, layer in enumerate(layers):
        if index == len(layers) - 1:
            penultimate = hidden  # == hidden_states[-2] of the HF output
        hidden = layer(hidden, causal_mask, is_causal=True)
    if len(layers) == 0:
        penultimate = hidden
    hidden = text_model.final_layer_norm(hidden)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    pooled = hidden[rows, end_of_text_positions(text_model, input_ids).to(hidden.device)]
    text_embeds = text_tower.text_projection(pooled)
    return PseudoTokenOutput(text_embeds, penultimate if return_penultimate else None)


LENGTH_BUCKET_ROWS = 32  # rows per length bucket at least: smaller buckets cost more in calls than they save
MAX_LENGTH_BUCKETS = 8


def encode_in_length_buckets(text_tower, input_ids: torch.Tensor, pseudo_tokens: torch.Tensor | None = None,
                             pseudo_token_id: int | None = None, bucket_rows: int = LENGTH_BUCKET_ROWS,
                             max_buckets: int = MAX_LENGTH_BUCKETS) -> PseudoTokenOutput:
    """`encode_with_pseudo_tokens` (pooled output only) with the rows grouped by length.

    The tower is causal, so the columns after a row's end-of-text token never reach its pooled output.
    Rows are sorted by end position and split into up to `max_buckets` buckets of at least `bucket_rows`
    rows; each bucket is cut after its own longest row instead of the batch's. Same outputs (to float
    rounding) and gradients; on caption-length text (mean 23 tokens, max 37 in a batch of 256) a
    LinCIR-sized forward + backward costs about 1/1.6 of the single padded batch, and OTI's short
    templates and phrases at 256 images per batch about 1/1.2 (BENCHMARKS.md).

    Returns:
        PseudoTokenOutput with `text_embeds` [B, P] in the input row order (no penultimate states).
    """
    ends = end_of_text_positions(text_tower.text_model, input_ids)
    buckets = max(1, min(max_buckets, input_ids.shape[0] // max(1, bucket_rows)))
    if buckets == 1:
        cut = input_ids[:, : int(ends.max()) + 1] if input_ids.shape[0] else input_ids
        return encode_with_pseudo_tokens(text_tower, cut, pseudo_tokens, pseudo_token_id)
    order = torch.argsort(ends, stable=True)
    parts = []
    for rows in order.tensor_split(buckets):
        tokens = None if pseudo_tokens is None else pseudo_tokens[rows.to(pseudo_tokens.device)]
        ids = input_ids[rows, : int(ends[rows].max()) + 1]
        parts.append(encode_with_pseudo_tokens(text_tower, ids, tokens, pseudo_token_id).text_embeds)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.shape[0], device=order.device)
    return PseudoTokenOutput(torch.cat(parts)[inverse.to(parts[0].device)])
