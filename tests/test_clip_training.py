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
