"""Query composition: templates, caption cleaning, FashionIQ pairs, CIG fusion."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zscir.compose import PromptTemplate, clean_caption, compose_queries, fuse_queries
from zscir.errors import DataError, ZscirError


def test_template_without_pseudo_word_is_refused():
    with pytest.raises(ZscirError, match="no pseudo word"):
        PromptTemplate("a photo of something that {caption}")
    assert PromptTemplate.named("default").format("is red") == "a photo of $ that is red"


def test_clean_caption_of_typed_text():
    assert clean_caption("  is red with long sleeves. ") == "is red with long sleeves"
    assert clean_caption("is it blue?,") == "is it blue"
    with pytest.raises(DataError, match="query text: empty caption"):
        clean_caption(" . ", "query text")


def test_single_caption_equals_direct_encoding(any_backbone):
    v = torch.randn(3, any_backbone.hidden_size)
    captions = [("is blue.",), ("has a star, (red)",), ("the man's hat",)]
    q = compose_queries(any_backbone, v, captions)
    prompts = ["a photo of $ that is blue.", "a photo of $ that has a star, (red)", "a photo of $ that the man's hat"]
    ids = any_backbone.tokenize(prompts)
    assert ((ids == any_backbone.pseudo_token_id).sum(dim=1) == 1).all()  # `$` stays the pseudo token
    direct = any_backbone.encode_text(prompts, pseudo_tokens=v)  # captions as written: no cleaning here
    torch.testing.assert_close(q, F.normalize(direct, dim=-1), atol=1e-6, rtol=0)


def test_caption_pair_is_both_orders_averaged(any_backbone):
    v = torch.randn(1, any_backbone.hidden_size)
    q = compose_queries(any_backbone, v, [("is red", "has a star")], batch_size=1)
    both = any_backbone.encode_text(
        ["a photo of $ that is red and has a star", "a photo of $ that has a star and is red"],
        pseudo_tokens=v.repeat(2, 1),
    )
    expected = F.normalize(F.normalize(both, dim=-1).mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(q, expected, atol=1e-6, rtol=0)


def test_empty_captions_are_composed_as_written(any_backbone):
    """CIRR test1's " " and FashionIQ's empty first halves: composed like the official code, never refused."""
    v = torch.randn(2, any_backbone.hidden_size)
    q = compose_queries(any_backbone, v, [(" ",), ("", "is red")])
    single = any_backbone.encode_text(["a photo of $ that  "], pseudo_tokens=v[:1])
    pair = F.normalize(any_backbone.encode_text(["a photo of $ that  and is red", "a photo of $ that is red and "],
                                                pseudo_tokens=v[1:].repeat(2, 1)), dim=-1)
    torch.testing.assert_close(q[0], F.normalize(single, dim=-1)[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(q[1], F.normalize(pair.mean(0), dim=-1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["default", "plain", "circo-concept"])
def test_every_template_keeps_the_pseudo_token(clip_tokenizer, name):
    from zscir.models.tokenizer import pseudo_word_counts

    template = PromptTemplate.named(name)
    texts = [template.format(c) for c in ["is red.", "the man's hat", "(red) car", "two cats; one black", ""]]
    assert pseudo_word_counts(clip_tokenizer, texts) == [template.text.split().count("$")] * len(texts)


def test_fusion_alpha_one_is_the_reference_query():
    ref, gen = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    torch.testing.assert_close(fuse_queries(ref, gen, 1.0), ref)
    mid = fuse_queries(ref, gen, 0.5)
    torch.testing.assert_close(mid, F.normalize(ref + gen, dim=-1))
    with pytest.raises(ZscirError):
        fuse_queries(ref, gen, 1.5)
