"""Pseudo-token encoding against the tower itself and against a slow reference written from the math."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from zscir.models.pseudo_tokens import causal_attention_mask, encode_with_pseudo_tokens


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


def test_no_pseudo_word_equals_tower_features(any_backbone):
    prompts = ["a red circle", "make the square green and remove the star", "a"]
    ids = any_backbone.tokenize(prompts)
    with torch.no_grad():
        ours = encode_with_pseudo_tokens(any_backbone.text, ids, return_penultimate=True)
        theirs = any_backbone.text(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(ours.text_embeds, theirs.text_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.penultimate_hidden_states, theirs.hidden_states[-2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("folder", ["tiny_clip_dir", "tiny_real_clip_dir"])
def test_no_pseudo_word_equals_clipmodel_get_text_features(request, folder):
    from transformers import CLIPModel

    from zscir.models.backbone import Backbone

    folder = request.getfixturevalue(folder)
    model, backbone = CLIPModel.from_pretrained(folder).eval(), Backbone.load(str(folder))
    ids = backbone.tokenize(["a small blue square at the top left", "the man's hat, (red) car; two cats."])
    with torch.no_grad():
        expected = model.get_text_features(input_ids=ids).pooler_output
        got = encode_with_pseudo_tokens(backbone.text, ids).text_embeds
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "prompts",
    [
        ["a photo of $ that is blue", "a photo of $"],  # one $ per row
        ["$ and $ on a white background", "a photo of $ that is $"],  # two $ in a row
        ["a red circle", "a photo of $ that is blue", "$"],  # mixed rows: one without $
        ["the man's $ , running .", "( $ ) car ; $ 's hat"],  # punctuation kept apart from $
    ],
)
def test_pseudo_tokens_match_slow_reference(any_backbone, prompts):
    torch.manual_seed(0)
    pid = any_backbone.pseudo_token_id
    ids = any_backbone.tokenize(prompts)
    assert int((ids == pid).sum()) == sum(p.split().count("$") for p in prompts)  # every $ is the pseudo id
    tokens = torch.randn(len(prompts), any_backbone.hidden_size)
    with torch.no_grad():
        ours = encode_with_pseudo_tokens(any_backbone.text, ids, tokens, pid, return_penultimate=True)
        ref, ref_penultimate = slow_reference(any_backbone.text, ids, tokens, pid)
    torch.testing.assert_close(ours.text_embeds, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.penultimate_hidden_states, ref_penultimate, atol=1e-5, rtol=1e-5)


def test_pseudo_token_changes_the_result_and_only_where_present(any_backbone):
    pid = any_backbone.pseudo_token_id
    ids = any_backbone.tokenize(["a photo of $", "a red circle"])
    a, b = torch.randn(2, any_backbone.hidden_size), torch.randn(2, any_backbone.hidden_size)
    with torch.no_grad():
        out_a = encode_with_pseudo_tokens(any_backbone.text, ids, a, pid).text_embeds
        out_b = encode_with_pseudo_tokens(any_backbone.text, ids, b, pid).text_embeds
    assert not torch.allclose(out_a[0], out_b[0])
    torch.testing.assert_close(out_a[1], out_b[1])


def test_gradients_reach_pseudo_tokens_and_tower(any_backbone):
    tower = any_backbone.text.train().requires_grad_(True)
    tokens = torch.randn(2, any_backbone.hidden_size, requires_grad=True)
    out = any_backbone.encode_composed(["a photo of $ that is blue", "$ and $"], tokens, text_tower=tower)
    out.text_embeds.pow(2).sum().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert tower.text_model.encoder.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert tower.text_projection.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_is_close_to_fp32(any_backbone, dtype):
    pid = any_backbone.pseudo_token_id
    ids = any_backbone.tokenize(["a photo of $ that is blue", "a red circle"])
    tokens = torch.randn(2, any_backbone.hidden_size)
    with torch.no_grad():
        full = encode_with_pseudo_tokens(any_backbone.text, ids, tokens, pid).text_embeds
        low_tower = any_backbone.text.to(dtype)
        low = encode_with_pseudo_tokens(low_tower, ids, tokens, pid).text_embeds
    assert low.dtype == dtype
    assert torch.isfinite(low).all()
    cosine = torch.nn.functional.cosine_similarity(low.float(), full, dim=-1)
    assert (cosine > 0.99).all(), cosine


def test_legacy_eos_id_2_pools_like_the_tower(any_backbone):
    tower = any_backbone.text
    tower.text_model.config.eos_token_id = 2
    tower.text_model.eos_token_id = 2
    ids = any_backbone.tokenize(["a red circle", "make the circle green"])
    with torch.no_grad():
        expected = tower(input_ids=ids).text_embeds
        got = encode_with_pseudo_tokens(tower, ids).text_embeds
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_wrong_pseudo_token_shape_is_refused(any_backbone):
    ids = any_backbone.tokenize(["a photo of $"])
    with pytest.raises(ValueError, match="pseudo_tokens must be"):
        encode_with_pseudo_tokens(any_backbone.text, ids, torch.randn(1, 5), any_backbone.pseudo_token_id)


def test_encode_raises_no_warning(any_backbone):
    """No deprecated argument reaches transformers (it printed a FutureWarning on every encode)."""
    tokens = torch.randn(2, any_backbone.hidden_size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        any_backbone.encode_text(["a photo of $ that is blue", "a red circle"], pseudo_tokens=tokens)
        any_backbone.encode_composed(["a photo of $"], tokens[:1], return_penultimate=True)


def test_causal_mask_blocks_exactly_the_future(tiny_backbone):
    hidden = torch.zeros(2, 5, tiny_backbone.hidden_size)
    mask = causal_attention_mask(tiny_backbone.text.text_model.config, hidden)
    if mask is None:  # SDPA may skip the mask and rely on is_causal=True, which the layers get
        return
    allowed = mask if mask.dtype == torch.bool else mask == 0
    expected = torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.equal(allowed.reshape(-1, 5, 5)[0], expected)


def test_length_buckets_equal_one_full_context_pass_and_keep_row_order(any_backbone):
    """Rows of very different lengths (real punctuation and possessives), several buckets, with pseudo tokens:
    outputs and gradients equal the single full-context pass, row by row, in the input order."""
    from zscir.models.pseudo_tokens import encode_in_length_buckets

    words = "the dog's red collar, on a small green mat; then a cat".split()
    prompts = [("a photo of $ that " + " ".join(words[: 1 + (7 * i) % len(words)])) for i in range(23)]
    prompts[5] = "$"
    prompts[9] = "a photo of $, the $'s collar (red); then $."  # punctuation next to `$`, `$` three times
    ids = any_backbone.tokenize(prompts)
    tokens = torch.randn(len(prompts), any_backbone.hidden_size, generator=torch.Generator().manual_seed(0))
    full_tokens = tokens.clone().requires_grad_(True)
    full = encode_with_pseudo_tokens(any_backbone.text, ids, full_tokens, any_backbone.pseudo_token_id).text_embeds
    full.square().sum().backward()
    bucket_tokens = tokens.clone().requires_grad_(True)
    bucketed = encode_in_length_buckets(any_backbone.text, ids, bucket_tokens, any_backbone.pseudo_token_id,
                                        bucket_rows=3, max_buckets=5).text_embeds
    bucketed.square().sum().backward()
    torch.testing.assert_close(bucketed, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(bucket_tokens.grad, full_tokens.grad, atol=1e-5, rtol=1e-4)
    # the Backbone's path is the bucketed one, and plain text (no pseudo token) goes through it too
    torch.testing.assert_close(any_backbone.encode_composed(prompts, tokens).text_embeds, full.detach(), atol=1e-5,
                               rtol=0)
    plain = ["a red circle.", "the cat's hat", "make it green, and remove the star, then add a dog"] * 30
    with torch.no_grad():
        theirs = any_backbone.text(input_ids=any_backbone.tokenize(plain)).text_embeds
    torch.testing.assert_close(any_backbone.encode_text(plain, batch_size=90), theirs, atol=1e-5, rtol=0)
