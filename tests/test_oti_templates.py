"""SEARLE OTI as published: a PALAVRA template drawn per image and step; fixed prompts stay an option."""

from __future__ import annotations

import pytest
import torch

from zscir.compose import TEMPLATE_SETS, PromptTemplate
from zscir.errors import ZscirError
from zscir.oti.optimise import OTIConfig, invert_images


def test_oti_draws_a_palavra_template_per_image_and_step(tiny_backbone, monkeypatch):
    palavra = TEMPLATE_SETS["palavra"]  # miccunifi/SEARLE src/utils.py get_templates
    assert len(palavra) == 24 and all("$" in t.split() for t in palavra)
    seen = []
    original = tiny_backbone.encode_composed

    def spy(prompts, tokens, **kw):
        seen.append(list(prompts))
        return original(prompts, tokens, **kw)

    monkeypatch.setattr(tiny_backbone, "encode_composed", spy)
    torch.manual_seed(9)
    embeds = torch.randn(3, tiny_backbone.projection_dim)
    config = OTIConfig(steps=8, phrase_weight=0)
    assert config.template == "palavra"  # the official default
    invert_images(tiny_backbone, embeds, None, config, names=["a", "b", "c"], progress=False)
    assert len(seen) == 8 and all(p in palavra for step in seen for p in step)
    assert len({p for step in seen for p in step}) > 3 and any(len(set(step)) > 1 for step in seen)
    first = [step[0] for step in seen]
    seen.clear()  # image "a"'s draws do not depend on its batch
    invert_images(tiny_backbone, embeds[:1], None, config, names=["a"], progress=False)
    assert [step[0] for step in seen] == first
    seen.clear()
    invert_images(tiny_backbone, embeds, None, OTIConfig(steps=3, phrase_weight=0, template="a photo of $"),
                  names=["a", "b", "c"], progress=False)
    assert seen == [["a photo of $"] * 3] * 3


def test_template_typo_lists_the_known_names():
    from zscir.prompts import TEMPLATES

    with pytest.raises(ZscirError) as err:
        PromptTemplate.named("pic2wrd")
    assert all(name in str(err.value) for name in TEMPLATES)
    assert PromptTemplate.for_network(None, type("Net", (), {"kind": "pic2word"})()).text == TEMPLATES["pic2word"]
