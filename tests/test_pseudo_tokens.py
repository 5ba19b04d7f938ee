"""Pseudo-token encoding against the tower itself and against a slow reference written from the math."""

from __future__ import annotations

import math

import pytest
import torch

from zscir.models.pseudo_tokens import encode_with_pseudo_tokens


def slow_reference(tower, input_ids, pseudo_tokens, pseudo_id):
    """METHODS.md §1 by hand: explicit causal mask, a manual loop over layers and heads."""
    tm = tower.text_model
    token_table = tm.embeddings.token_embedding.weight
    positions = tm.embeddings.position_embedding.weight
    batch, length = input_ids.shape
    x = token_table[input_ids].clone()
    for b in range(batch):
        for t in range(length):
            if int(input_ids[b, t]) == pseudo_id:
                x[b, t] = pseudo_tokens[b]
    x = x + positions[:length]
    causal = torch.full((length, length), float("-inf")).triu(1)
    penultimate = None
    for index, layer in enumerate(tm.encoder.layers):
        if index == len(tm.encoder.layers) - 1:
            penultimate = x
        attn = layer.self_attn
        h = layer.layer_norm1(x)
        heads, head_dim = attn.num_heads, attn.head_dim
        q = attn.q_proj(h).view(batch, length, heads, head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(batch, length, heads, head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(batch, length, heads, head_dim).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(head_dim) + causal
        mixed = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, heads * head_dim)
        x = x + attn.out_proj(mixed)
        x = x + layer.mlp(layer.layer_norm2(x))
    x = tm.final_layer_norm(x)
    eos = [int((input_ids[b] == tm.config.eos_token_id).nonzero()[0]) for b in range(batch)]
    pooled = torch.stack([x[b, eos[b]] for b in range(batch)])
    return tower.text_projection(pooled), penultimate


def test_no_pseudo_word_equals_tower_features(tiny_backbone):
    prompts = ["a red circle", "make the square green and remove the star", "a"]
    ids = tiny_backbone.tokenize(prompts)
    with torch.no_grad():
        ours = encode_with_pseudo_tokens(tiny_backbone.text, ids, return_penultimate=True)
        theirs = tiny_backbone.text(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(ours.text_embeds, theirs.text_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.penultimate_hidden_states, theirs.hidden_states[-2], atol=1e-5, rtol=0)


def test_no_pseudo_word_equals_clipmodel_get_text_features(tiny_clip_dir, tiny_backbone):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    ids = tiny_backbone.tokenize(["a small blue square at the top left"])
    with torch.no_grad():
        expected = model.get_text_features(input_ids=ids).pooler_output
        got = encode_with_pseudo_tokens(tiny_backbone.text, ids).text_embeds
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "prompts",
    [
        ["a photo of $ that is blue", "a photo of $"],  # one $ per row
        ["$ and $ on a white background", "a photo of $ that is $"],  # two $ in a row
        ["a red circle", "a photo of $ that is blue", "$"],  # mixed rows: one without $
    ],
)
def test_pseudo_tokens_match_slow_reference(tiny_backbone, prompts):
    torch.manual_seed(0)
    pid = tiny_backbone.pseudo_token_id
    ids = tiny_backbone.tokenize(prompts)
    assert (ids == pid).sum() >= len([p for p in prompts if "$" in p])
    tokens = torch.randn(len(prompts), tiny_backbone.hidden_size)
    with torch.no_grad():
        ours = encode_with_pseudo_tokens(tiny_backbone.text, ids, tokens, pid, return_penultimate=True)
        ref, ref_penultimate = slow_reference(tiny_backbone.text, ids, tokens, pid)
    torch.testing.assert_close(ours.text_embeds, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.penultimate_hidden_states, ref_penultimate, atol=1e-5, rtol=1e-5)


def test_pseudo_token_changes_the_result_and_only_where_present(tiny_backbone):
    pid = tiny_backbone.pseudo_token_id
    ids = tiny_backbone.tokenize(["a photo of $", "a red circle"])
    a, b = torch.randn(2, tiny_backbone.hidden_size), torch.randn(2, tiny_backbone.hidden_size)
    with torch.no_grad():
        out_a = encode_with_pseudo_tokens(tiny_backbone.text, ids, a, pid).text_embeds
        out_b = encode_with_pseudo_tokens(tiny_backbone.text, ids, b, pid).text_embeds
    assert not torch.allclose(out_a[0], out_b[0])
    torch.testing.assert_close(out_a[1], out_b[1])


def test_gradients_reach_pseudo_tokens_and_tower(tiny_backbone):
    tower = tiny_backbone.text.train().requires_grad_(True)
    tokens = torch.randn(2, tiny_backbone.hidden_size, requires_grad=True)
    out = tiny_backbone.encode_composed(["a photo of $ that is blue", "$ and $"], tokens, text_tower=tower)
    out.text_embeds.pow(2).sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert tower.text_model.encoder.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert tower.text_projection.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_is_close_to_fp32(tiny_backbone, dtype):
    pid = tiny_backbone.pseudo_token_id
    ids = tiny_backbone.tokenize(["a photo of $ that is blue", "a red circle"])
    tokens = torch.randn(2, tiny_backbone.hidden_size)
    with torch.no_grad():
        full = encode_with_pseudo_tokens(tiny_backbone.text, ids, tokens, pid).text_embeds
        low_tower = tiny_backbone.text.to(dtype)
        low = encode_with_pseudo_tokens(low_tower, ids, tokens, pid).text_embeds
    assert low.dtype == dtype
    assert torch.isfinite(low).all()
    cosine = torch.nn.functional.cosine_similarity(low.float(), full, dim=-1)
    assert (cosine > 0.99).all(), cosine


def test_legacy_eos_id_2_pools_like_the_tower(tiny_backbone):
    tower = tiny_backbone.text
    tower.text_model.config.eos_token_id = 2
    tower.text_model.eos_token_id = 2
    ids = tiny_backbone.tokenize(["a red circle", "make the circle green"])
    with torch.no_grad():
        expected = tower(input_ids=ids).text_embeds
        got = encode_with_pseudo_tokens(tower, ids).text_embeds
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_wrong_pseudo_token_shape_is_refused(tiny_backbone):
    ids = tiny_backbone.tokenize(["a photo of $"])
    with pytest.raises(ValueError, match="pseudo_tokens must be"):
        encode_with_pseudo_tokens(tiny_backbone.text, ids, torch.randn(1, 5), tiny_backbone.pseudo_token_id)
