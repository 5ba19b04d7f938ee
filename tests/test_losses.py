"""Contrastive losses against slow references written from their formulas; the published CIG α table."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from zscir.training.losses import cross_modal_infonce, nt_xent


def _nt_xent_reference(v, t, tau):
    z = [F.normalize(r, dim=0) for r in list(t) + list(v)]
    n = len(v)
    total = 0.0
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        sim = [float(z[i] @ z[k]) / tau for k in range(2 * n)]
        total += -sim[p] + math.log(sum(math.exp(sim[k]) for k in range(2 * n) if k != i))
    return total / (2 * n)


def test_nt_xent_is_the_palavra_formula_with_both_sets_negatives():
    torch.manual_seed(0)
    v, t = torch.randn(5, 7), torch.randn(5, 7)
    assert float(nt_xent(v, t, 0.25)) == pytest.approx(_nt_xent_reference(v, t, 0.25), rel=1e-5)
    assert float(nt_xent(t, v, 0.25)) == pytest.approx(float(nt_xent(v, t, 0.25)), rel=1e-5)
    assert abs(float(nt_xent(v, t, 0.25)) - float(cross_modal_infonce(v, t, 0.25))) > 1e-3


def test_published_cig_alpha_table():
    from zscir.recipes import DEFAULT_ALPHA, cig_alpha, published_cig_alpha

    assert (cig_alpha("cirr", "test"), cig_alpha("cirr", "test1"), cig_alpha("circo", "test")) == (0.5, 0.5, 0.7)
    assert (cig_alpha("cirr", "val"), cig_alpha("fashioniq", "val")) == (0.85, 0.9)
    assert published_cig_alpha("circo", "val") is None and cig_alpha("circo", "val") == DEFAULT_ALPHA


def test_searle_distillation_uses_the_official_loss_and_defaults():
    from zscir.training.config import SearleConfig
    from zscir.training.searle import contrastive_loss

    torch.manual_seed(1)
    v, t = torch.randn(4, 6), torch.randn(4, 6)
    assert float(contrastive_loss(v, t, 0.25)) == pytest.approx(_nt_xent_reference(v, t, 0.25), rel=1e-5)
    assert float(contrastive_loss(v, t, 0.25, kind="cross-modal")) == pytest.approx(
        float(cross_modal_infonce(v, t, 0.25)), rel=1e-6)
    c = SearleConfig()  # miccunifi/SEARLE src/train_phi.py argparse defaults
    assert (c.batch_size, c.lr, c.weight_decay, c.temperature, c.seed) == (256, 1e-4, 0.01, 0.25, 42)
    assert (c.distil_weight, c.phrase_weight, c.top_k, c.dropout, c.distill_loss) == (1.0, 0.75, 150, 0.5, "nt-xent")
    c.epochs = 100  # the official run: 100 epochs over ImageNet1K test (100,000 images), drop-last batches of 256
    assert c.steps_for(100_000) == 100 * 390
