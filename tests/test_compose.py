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


def test_clean_caption():
    assert clean_caption("  is red with long sleeves. ") == "is red with long sleeves"
    assert clean_caption("is it blue?,") == "is it blue"
    with pytest.raises(DataError, match="empty caption"):
        clean_caption(" . ")


def test_single_caption_equals_direct_encoding(tiny_backbone):
    v = torch.randn(2, tiny_backbone.hidden_size)
    q = compose_queries(tiny_backbone, v, [("is blue.",), ("has a star",)])
    direct = tiny_backbone.encode_text(["a photo of $ that is blue", "a photo of $ that has a star"], pseudo_tokens=v)
    torch.testing.assert_close(q, F.normalize(direct, dim=-1), atol=1e-6, rtol=0)


def test_caption_pair_is_both_orders_averaged(tiny_backbone):
    v = torch.randn(1, tiny_backbone.hidden_size)
    q = compose_queries(tiny_backbone, v, [("is red", "has a star")], batch_size=1)
    both = tiny_backbone.encode_text(
        ["a photo of $ that is red and has a star", "a photo of $ that has a star and is red"],
        pseudo_tokens=v.repeat(2, 1),
    )
    expected = F.normalize(F.normalize(both, dim=-1).mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(q, expected, atol=1e-6, rtol=0)


def test_fusion_alpha_one_is_the_reference_query():
    ref, gen = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    torch.testing.assert_close(fuse_queries(ref, gen, 1.0), ref)
    mid = fuse_queries(ref, gen, 0.5)
    torch.testing.assert_close(mid, F.normalize(ref + gen, dim=-1))
    with pytest.raises(ZscirError):
        fuse_queries(ref, gen, 1.5)
