"""Tiny CLIP pretraining: fast preprocessing equals the processor; the loss is the symmetric InfoNCE."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zscir.models.factory import image_processor_for
from zscir.training.clip import clip_loss, pixels_from_images


def test_fast_pixels_equal_processor():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)) for _ in range(3)]
    processor = image_processor_for(48)
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels_from_images(images, processor), expected, atol=1e-5, rtol=1e-5)


def test_fast_pixels_fall_back_for_other_sizes():
    images = [Image.new("RGB", (60, 50), (10, 200, 30))]
    processor = image_processor_for(48)
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels_from_images(images, processor), expected)


def test_clip_loss_matches_a_loop_over_rows():
    torch.manual_seed(0)
    img, txt, scale = torch.randn(5, 8), torch.randn(5, 8), torch.tensor(2.0)
    sim = scale.exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    i2t = sum(-torch.log(sim[i].exp()[i] / sim[i].exp().sum()) for i in range(5)) / 5
    t2i = sum(-torch.log(sim[:, j].exp()[j] / sim[:, j].exp().sum()) for j in range(5)) / 5
    torch.testing.assert_close(clip_loss(img, txt, scale), (i2t + t2i) / 2)


def test_tiny_clip_beats_chance_after_a_short_run(tmp_path):
    """A short contrastive run on the synthetic world's stream already retrieves far above chance."""
    import random

    from zscir.data.synthetic.captions import describe_scene
    from zscir.data.synthetic.corpora import clip_pair_sampler, world_texts
    from zscir.data.synthetic.render import render_scene
    from zscir.data.synthetic.scene import random_scene
    from zscir.evaluation.metrics import recall_at_k, target_ranks
    from zscir.models.backbone import Backbone
    from zscir.models.factory import ClipSize
    from zscir.models.tokenizer import train_clip_tokenizer
    from zscir.training.clip import train_clip
    from zscir.training.config import ClipTrainConfig

    size = ClipSize(projection_dim=64, text_hidden=64, text_layers=2, text_heads=2, context_length=32,
                    vision_hidden=64, vision_layers=2, vision_heads=2, image_size=32, patch_size=8)
    tokenizer = train_clip_tokenizer(world_texts(), vocab_size=1200, model_max_length=32)
    config = ClipTrainConfig(size=size, steps=120, batch_size=64, lr=2e-3, seed=0)
    folder = train_clip(clip_pair_sampler(image_size=32, relative_fraction=0.0, pair_fraction=0.0), tokenizer,
                        tmp_path / "clip", config, progress=False)
    rng = random.Random(123)
    scenes = list(dict.fromkeys(random_scene(rng) for _ in range(100)))
    backbone = Backbone.load(str(folder))
    images = backbone.encode_image([render_scene(s, 32, i) for i, s in enumerate(scenes)])
    texts = backbone.encode_text([describe_scene(s) for s in scenes])
    sims = F.normalize(texts, dim=-1) @ F.normalize(images, dim=-1).T
    r5 = recall_at_k(target_ranks(sims, torch.arange(len(scenes))), 5)
    chance = 100 * 5 / len(scenes)
    assert r5 > 4 * chance, f"text→image R@5 {r5:.1f} vs chance {chance:.1f}"


def test_longest_padding_gives_the_same_text_features_as_full_context():
    """train_clip pads each batch to its longest text: exact for CLIP's causal tower pooled at the end token."""
    from zscir.demo.world_models import world_tokenizer
    from zscir.models.factory import ClipSize, build_clip

    tokenizer = world_tokenizer(40)
    size = ClipSize(projection_dim=16, text_hidden=32, text_layers=2, text_heads=2, context_length=40,
                    vision_hidden=32, vision_layers=1, vision_heads=2, image_size=16, patch_size=8)
    model = build_clip(tokenizer, size, seed=0).eval()
    texts = ["Make the circle green, and remove the star.", "a red square on a white background", "x"]
    with torch.no_grad():
        full = model.get_text_features(input_ids=tokenizer(texts, padding="max_length", max_length=40,
                                                           return_tensors="pt")["input_ids"]).pooler_output
        ids = tokenizer(texts, padding="longest", truncation=True, max_length=40, return_tensors="pt")["input_ids"]
        short = model.get_text_features(input_ids=ids).pooler_output
    assert ids.shape[1] < 40
    torch.testing.assert_close(short, full, atol=1e-5, rtol=1e-5)
