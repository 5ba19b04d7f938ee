"""SEARLE: distil a Phi from OTI pseudo tokens (METHODS.md §3), on the shared training loop.

Data: pairs (x_i, t_i) of an image embedding and its OTI token (`zscir invert` writes both into a
`TokenStore`). Per micro-batch of B pairs, with v_i = Phi(x_i):

    distil = NT-Xent over the 2B normalised vectors {t, v}, τ = 0.25: each row's positive is its partner,
             its negatives ALL other 2B − 2 rows of both sets (`losses.nt_xent`, the official PALAVRA loss;
             `distill_loss="cross-modal"` keeps zscir's earlier CLIP-style loss, negatives from the other set)
    phrase = mean_i (1 − cos(encode(phrase_i with its concept replaced by $, v_i), encode(phrase_i)))
    loss   = λ_distil · distil + λ_gpt · phrase                           (λ_distil = 1, λ_gpt = 0.75)

where phrase_i is drawn (global torch RNG, so it is restored on resume) from the phrases of one of
image i's top-k (150) concepts. Only Phi trains; AdamW lr 1e-4, batch 256, 100 epochs (the official
defaults, see `SearleConfig`). The negatives are the other rows of the same process's micro-batch (no
cross-process gather, as in the official single-GPU script).

API:
    store = TokenStore("runs/oti")                  # from `zscir invert`
    names, embeds, tokens = store.pairs()
    phi = distill_phi(backbone, embeds, tokens, bank, SearleConfig(), out_dir="runs/searle", validate=validator)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.errors import DataError, ZscirError
from zscir.models.phi import Phi, backbone_identity, load_inversion_network
from zscir.oti.concepts import ConceptBank
from zscir.oti.store import TokenStore
from zscir.training.config import SearleConfig  # noqa: F401  (re-exported: the recipe lives with the others)
from zscir.training.loop import train
from zscir.training.losses import DISTILL_LOSSES
from zscir.training.phi import PhiTask, card_info, move_backbone


def contrastive_loss(predicted: torch.Tensor, targets: torch.Tensor, temperature: float,
                     kind: str = "nt-xent") -> torch.Tensor:
    """SEARLE's distillation loss between Phi's predictions and the OTI tokens (row-paired).

    Args:
        predicted: [B, H] Phi outputs.
        targets: [B, H] OTI tokens (row i is the positive of prediction i).
        temperature: τ.
        kind: "nt-xent" (official, negatives from both sets) or "cross-modal" (see `zscir.training.losses`).
    Returns:
        The scalar loss.
    """
    return DISTILL_LOSSES[kind](predicted, targets, temperature)


class _TorchDraws:
    """`randrange` from the global torch RNG (saved and restored by the loop's checkpoints)."""

    @staticmethod
    def randrange(n: int) -> int:
        return int(torch.randint(n, (1,)))


class SearleDistillTask(PhiTask):
    """Phi trains on (image embedding, OTI token) pairs; the text tower is frozen.

    Args:
        backbone: frozen `Backbone` (text tower for the phrase loss).
        phi: the Phi to train.
        image_embeds: [N, P] image embeddings.
        tokens: [N, H] their OTI tokens.
        bank: concepts and phrases (None allowed when `phrase_weight == 0`).
        temperature / phrase_weight / top_k / distill_loss / distil_weight: the recipe (see SearleConfig).
        validate: optional callback Phi (eval mode) -> metrics.
    """

    def __init__(self, backbone, phi: Phi, image_embeds: torch.Tensor, tokens: torch.Tensor,
                 bank: ConceptBank | None, temperature: float = 0.25, phrase_weight: float = 0.75, top_k: int = 150,
                 validate: Callable[[Phi], dict] | None = None, distill_loss: str = "nt-xent",
                 distil_weight: float = 1.0):
        if image_embeds.shape[0] != tokens.shape[0]:
            raise ValueError(f"{image_embeds.shape[0]} image embeddings for {tokens.shape[0]} tokens")
        if phrase_weight > 0 and bank is None:
            raise ZscirError("searle: phrase_weight > 0 needs a ConceptBank (or set phrase_weight=0)")
        self.backbone, self.phi, self.bank = backbone, phi, bank
        self.image_embeds, self.tokens = image_embeds.float(), tokens.float()
        self.temperature, self.phrase_weight, self.top_k = temperature, phrase_weight, top_k
        self.distill_loss, self.distil_weight = distill_loss, distil_weight
        self._validate = validate
        self.candidates = None

    def setup(self, accelerator) -> None:
        move_backbone(self.backbone, accelerator.device)
        if self.phrase_weight > 0:
            self.candidates = self.bank.top_k(self.image_embeds, self.top_k)  # [N, k], once

    def model(self) -> torch.nn.Module:
        return self.phi

    def num_examples(self) -> int:
        return self.tokens.shape[0]

    def batch(self, indices, device):
        index = torch.as_tensor(indices, dtype=torch.long)
        batch = {"x": self.image_embeds[index].to(device), "t": self.tokens[index].to(device)}
        if self.candidates is not None:
            draws = [_TorchDraws] * len(indices)
            batch["texts"], targets = self.bank.sample(self.candidates[index], draws)
            batch["phrase_targets"] = targets.to(device)
        return batch

    def loss(self, model, batch) -> torch.Tensor:
        v = model(batch["x"])  # the prepared (DDP) Phi
        loss = self.distil_weight * contrastive_loss(v, batch["t"], self.temperature, self.distill_loss)
        if self.candidates is not None:
            out = self.backbone.encode_composed(batch["texts"], v).text_embeds.float()
            phrase = (1 - F.cosine_similarity(out, batch["phrase_targets"].float(), dim=-1)).mean()
            loss = loss + self.phrase_weight * phrase
        return loss


def distill_phi(backbone, image_embeds: torch.Tensor, tokens: torch.Tensor, bank: ConceptBank | None,
                config: SearleConfig | None = None, out_dir: str | Path | None = None,
                validate: Callable[[Phi], dict] | None = None, phi: Phi | None = None) -> Phi:
    """Distil a SEARLE Phi from OTI tokens.

    Args:
        backbone: frozen `Backbone`.
        image_embeds: [N, P] image embeddings (raw, as Phi reads them at inference).
        tokens: [N, H] OTI tokens of those images (e.g. `TokenStore.pairs()`).
        bank: concepts and phrases for the phrase loss (None when `config.phrase_weight == 0`).
        config: the recipe (default SearleConfig()).
        out_dir: overrides `config.output_dir`.
        validate: optional callback Phi -> metrics holding `config.select_metric` (e.g.
            `lambda phi: CIRValidator(...)(phi=phi)`); the best Phi is kept.
        phi: a Phi to start from (default: new, seeded by `config.seed`).
    Returns:
        The best Phi by validation (or the final one), eval mode, CPU. Folders `out_dir/best` and
        `out_dir/final` hold it in zscir's format and as the published `phi.pt`.
    """
    config = config or SearleConfig()
    if out_dir is not None:
        config.output_dir = str(out_dir)
    config.check()
    if tokens.shape[0] == 0:
        raise DataError("no OTI tokens to distil from")
    if config.epochs is not None:  # the official recipe counts epochs; the loop counts optimiser steps
        config.max_steps = config.steps_for(tokens.shape[0], int(os.environ.get("WORLD_SIZE", "1")))
    if tokens.shape[1] != backbone.hidden_size or image_embeds.shape[1] != backbone.projection_dim:
        raise ZscirError(f"pairs have image dim {image_embeds.shape[1]} / token dim {tokens.shape[1]}, backbone "
                         f"{backbone.name!r} needs {backbone.projection_dim} / {backbone.hidden_size}")
    if phi is None:
        torch.manual_seed(config.seed)
        phi = Phi(backbone.projection_dim, backbone.hidden_size, config.hidden_dim, config.dropout,
                  backbone=backbone_identity(backbone.name))
    phi.card_info = card_info("SEARLE", config, f"{tokens.shape[0]} (image embedding, OTI token) pairs")
    task = SearleDistillTask(backbone, phi, image_embeds, tokens, bank if config.phrase_weight > 0 else None,
                             config.temperature, config.phrase_weight, config.top_k, validate,
                             config.distill_loss, config.distil_weight)
    result = train(task, config)
    return load_inversion_network(result.best_dir or result.final_dir)


def distill_from_store(backbone, token_folder: str | Path, bank: ConceptBank | None,
                       config: SearleConfig | None = None, validate: Callable[[Phi], dict] | None = None) -> Phi:
    """`distill_phi` on the (image embedding, OTI token) pairs of a `zscir invert` output folder.

    Refuses tokens made with another text tower (their meaning is tied to it).

    Args:
        backbone: the frozen `Backbone` the tokens were inverted with.
        token_folder: a `TokenStore` folder.
        bank / config / validate: as in `distill_phi`.
    Returns:
        The distilled Phi (best by validation, else final).
    """
    store = TokenStore(token_folder)
    if store.meta.get("text_fingerprint") != backbone.text_fingerprint():
        raise ZscirError(f"{token_folder}: the OTI tokens were made with another text tower than "
                         f"{backbone.name!r}; invert with this backbone first")
    _, embeds, tokens = store.pairs()
    return distill_phi(backbone, embeds, tokens, bank, config, validate=validate)
