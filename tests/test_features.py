"""Feature cache: cached == recomputed, keys invalidate, resumable chunks, failed images retried."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from zscir.data.images import load_image
from zscir.retrieval.features import FeatureCache


def _write_images(folder, count, size=(20, 14), seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images = {}
    for i in range(count):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        images[f"im{i}"] = path
    return images


def _reference(backbone, images, pad=None):
    """Slow reference: encode every image directly, one at a time."""
    return torch.cat([backbone.encode_image([load_image(p)], pad_to_ratio=pad) for p in images.values()])


def test_cached_equals_recomputed(tmp_path, tiny_backbone):
    images = _write_images(tmp_path / "img", 7)
    cache = FeatureCache(tmp_path / "cache", chunk_size=3, progress=False)
    first = cache.image_features(tiny_backbone, images, batch_size=2)
    assert first.num_encoded == 7 and not first.failed
    torch.testing.assert_close(first.features, _reference(tiny_backbone, images), rtol=1e-5, atol=1e-6)
    again = FeatureCache(tmp_path / "cache", chunk_size=3, progress=False).image_features(tiny_backbone, images)
    assert again.num_encoded == 0 and again.key == first.key
    assert torch.equal(again.features, first.features)
    # O(1) lookup by name returns the right rows
    torch.testing.assert_close(again.lookup(["im5", "im0"]), first.features[[5, 0]])
    with pytest.raises(KeyError, match="nope"):
        again.lookup(["nope"])


def test_keys_invalidate(tmp_path, tiny_clip_dir):
    from zscir.models.backbone import Backbone

    images = _write_images(tmp_path / "img", 4, size=(30, 12))
    cache = FeatureCache(tmp_path / "cache", progress=False)
    backbone = Backbone.load(str(tiny_clip_dir))
    base = cache.image_features(backbone, images)

    padded = cache.image_features(backbone, images, pad_to_ratio=1.25)  # preprocessing changes
    assert padded.key != base.key and padded.num_encoded == 4
    torch.testing.assert_close(padded.features, _reference(backbone, images, 1.25), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(padded.features, base.features)

    fewer = dict(list(images.items())[:3])  # image list changes
    sub = cache.image_features(backbone, fewer)
    assert sub.key != base.key and sub.num_encoded == 3

    with torch.no_grad():  # weights change
        backbone.vision.visual_projection.weight.mul_(1.5)
    changed = cache.image_features(backbone, images)
    assert changed.key != base.key and changed.num_encoded == 4
    torch.testing.assert_close(changed.features, base.features * 1.5, rtol=1e-4, atol=1e-5)


def test_killed_run_keeps_finished_chunks(tmp_path, tiny_backbone, monkeypatch):
    images = _write_images(tmp_path / "img", 6)
    cache = FeatureCache(tmp_path / "cache", chunk_size=2, progress=False)
    real = tiny_backbone.encode_pixels
    calls = {"n": 0}

    def dying(pixels):
        calls["n"] += 1
        if calls["n"] == 3:  # batch 3 = chunk 2 (batch_size == chunk_size)
            raise KeyboardInterrupt
        return real(pixels)

    monkeypatch.setattr(tiny_backbone, "encode_pixels", dying)
    with pytest.raises(KeyboardInterrupt):
        cache.image_features(tiny_backbone, images, batch_size=2)
    monkeypatch.setattr(tiny_backbone, "encode_pixels", real)
    resumed = cache.image_features(tiny_backbone, images, batch_size=2)
    assert resumed.num_encoded == 2  # chunks 0 and 1 were kept
    torch.testing.assert_close(resumed.features, _reference(tiny_backbone, images), rtol=1e-5, atol=1e-6)


def test_failed_images_reported_and_retried(tmp_path, tiny_backbone):
    images = _write_images(tmp_path / "img", 4)
    images["im2"].unlink()
    images["im3"].write_bytes(b"not an image")
    cache = FeatureCache(tmp_path / "cache", progress=False)
    out = cache.image_features(tiny_backbone, images)
    assert set(out.failed) == {"im2", "im3"}
    assert "im2.png" in out.failed["im2"] and "decode" in out.failed["im3"]
    assert torch.count_nonzero(out.features[2:]) == 0
    _write_images(tmp_path / "img", 4)  # the user fixes the files
    fixed = cache.image_features(tiny_backbone, images)
    # the fixed files have new stamps, so the list has a new key (derived caches follow it): all re-encoded
    assert not fixed.failed and fixed.num_encoded == 4 and fixed.key != out.key
    torch.testing.assert_close(fixed.features, _reference(tiny_backbone, images), rtol=1e-5, atol=1e-6)


def test_disabled_cache_writes_nothing(tmp_path, tiny_backbone):
    images = _write_images(tmp_path / "img", 2)
    out = FeatureCache(tmp_path / "cache", enabled=False, progress=False).image_features(tiny_backbone, images)
    assert out.key is None and out.num_encoded == 2 and not (tmp_path / "cache").exists()


def test_derived_tensor_cache(tmp_path):
    cache = FeatureCache(tmp_path / "cache", progress=False)
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(2, 3)

    a = cache.tensor("queries", ["x", 1], compute)
    b = cache.tensor("queries", ["x", 1], compute)
    c = cache.tensor("queries", ["x", 2], compute)
    assert len(calls) == 2 and torch.equal(a, b) and torch.equal(a, c)
