"""Backbone loading, encoders and bad input."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from zscir.errors import ModelLoadError
from zscir.models.backbone import Backbone, fingerprint_module, target_pad


def _images(n, size=20, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)) for _ in range(n)]


def test_dims_and_tokenizer(any_backbone, tiny_size):
    assert any_backbone.projection_dim == tiny_size.projection_dim
    assert any_backbone.hidden_size == tiny_size.text_hidden
    assert any_backbone.context_length == tiny_size.context_length
    ids = any_backbone.tokenize(["a photo of $ that is blue"])
    assert ids.shape == (1, tiny_size.context_length)
    assert int((ids == any_backbone.pseudo_token_id).sum()) == 1
    assert any_backbone.tokenizer.convert_ids_to_tokens(any_backbone.pseudo_token_id) == "$</w>"


def test_encode_image_batched_equals_one_batch(tiny_backbone):
    images = _images(7)
    small = tiny_backbone.encode_image(images, batch_size=2)
    full = tiny_backbone.encode_image(images, batch_size=64)
    assert small.shape == (7, tiny_backbone.projection_dim)
    torch.testing.assert_close(small, full, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        direct = tiny_backbone.vision(pixel_values=tiny_backbone.preprocess(images)).image_embeds
    torch.testing.assert_close(full, direct, atol=1e-5, rtol=1e-5)


def test_encode_text_matches_tower(any_backbone):
    texts = ["a red circle", "make the square green"]
    with torch.no_grad():
        expected = any_backbone.text(input_ids=any_backbone.tokenize(texts)).text_embeds
    torch.testing.assert_close(any_backbone.encode_text(texts, batch_size=1), expected, atol=1e-5, rtol=0)


def test_bf16_backbone_runs(tiny_clip_dir):
    backbone = Backbone.load(str(tiny_clip_dir), dtype="bf16")
    assert backbone.text.dtype == torch.bfloat16
    out = backbone.encode_image(_images(2))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_target_pad():
    wide = Image.new("RGB", (100, 40), (255, 255, 255))
    padded = target_pad(wide, 1.25)
    assert padded.size == (100, 80)
    assert padded.getpixel((0, 0)) == (0, 0, 0) and padded.getpixel((50, 40)) == (255, 255, 255)
    square = Image.new("RGB", (50, 45))
    assert target_pad(square, 1.25) is square


def test_fingerprint_changes_with_weights(tiny_clip_dir):
    a = Backbone.load(str(tiny_clip_dir))
    before = a.vision_fingerprint()
    assert Backbone.load(str(tiny_clip_dir)).vision_fingerprint() == before
    with torch.no_grad():
        a.vision.visual_projection.weight[0, 0] += 1.0
    assert a.vision_fingerprint() != before


def test_unknown_name_lists_known_names():
    with pytest.raises(ModelLoadError, match="known names: .*ViT-L/14"):
        Backbone.load("nonsense-model")


def test_hub_id_offline_fails_fast_with_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="unreachable.*local folder"):
        Backbone.load("ViT-B/32")
    assert time.monotonic() - start < 30


def test_synthetic_backbone_not_built_says_how(monkeypatch, tmp_path):
    monkeypatch.setenv("ZSCIR_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="zscir demo"):
        Backbone.load("synthetic-clip")


def test_composed_encoding_drops_padding_without_changing_the_result(any_backbone):
    from zscir.models.pseudo_tokens import encode_with_pseudo_tokens

    texts = ["a photo of $", "a small blue $ at the top left", "$ , ( $ )", "move the star to the middle"]
    tokens = torch.randn(4, any_backbone.hidden_size)
    ids = any_backbone.tokenize(texts)
    assert int((ids != ids[0, -1]).sum(1).max()) < ids.shape[1] - 2  # there IS padding to drop
    with torch.no_grad():
        full = encode_with_pseudo_tokens(any_backbone.text, ids, tokens, any_backbone.pseudo_token_id).text_embeds
        trimmed = any_backbone.encode_composed(texts, tokens).text_embeds
        penultimate = any_backbone.encode_composed(texts, tokens, return_penultimate=True).penultimate_hidden_states
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)
    assert penultimate.shape[1] == any_backbone.context_length  # SDXL needs the whole context


def test_fingerprint_does_not_depend_on_the_thread_count():
    # A float sum of millions of weights changes in its last digits with the reduction order (thread
    # count), which used to change every cache key when OMP_NUM_THREADS changed; the hash must not.
    embedding = torch.nn.Embedding(49408, 128)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fingerprint_module(embedding)
        torch.set_num_threads(2)
        two = fingerprint_module(embedding)
    finally:
        torch.set_num_threads(threads)
    assert one == two
    with torch.no_grad():
        embedding.weight[123, 45] = embedding.weight[123, 45] * (1 + 1e-6)  # one weight, in its last bits
    assert fingerprint_module(embedding) != one


def test_tokenize_remembers_texts_and_matches_the_tokenizer(tiny_backbone):
    def direct(texts):
        return tiny_backbone.tokenizer(texts, padding="max_length", truncation=True,
                                       max_length=tiny_backbone.context_length, return_tensors="pt")["input_ids"]

    first = ["a photo of $", "a red circle", "a photo of $ that is blue"]
    assert torch.equal(tiny_backbone.tokenize(first), direct(first))
    mixed = ["a red circle", "a new text, with a comma.", "a photo of $", "a red circle"]  # repeats, cached, new
    assert torch.equal(tiny_backbone.tokenize(mixed), direct(mixed))
    assert tiny_backbone.tokenize([]).shape == (0, tiny_backbone.context_length)


def test_tokenize_when_the_cache_overflows_mid_call(tiny_backbone, monkeypatch):
    # a call with remembered and new texts that overflows the cache must still answer every row
    # (clearing the cache used to lose the remembered rows of the same call: KeyError in the demo's RTD)
    import zscir.models.backbone as backbone_module

    monkeypatch.setattr(backbone_module, "TOKEN_CACHE_SIZE", 3)
    direct = tiny_backbone.tokenizer
    tiny_backbone.tokenize(["a red circle", "a blue star"])
    texts = ["a red circle", "one", "two", "a blue star", "three"]
    expected = direct(texts, padding="max_length", truncation=True, max_length=tiny_backbone.context_length,
                      return_tensors="pt")["input_ids"]
    assert torch.equal(tiny_backbone.tokenize(texts), expected)
    assert len(tiny_backbone._token_cache) <= 3 + 3
