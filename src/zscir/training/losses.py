"""Contrastive losses shared by the trainers (RTD's frozen-target loss, SEARLE's distillation).

`nt_xent` is the NT-Xent / PALAVRA loss over the 2N vectors of two row-paired sets: every row's
positive is its partner and its negatives are ALL other 2N − 2 rows, from both sets. RTD uses it with
τ = 0.07 (METHODS §4); SEARLE's distillation uses it with τ = 0.25 between the OTI tokens and Phi's
predictions (METHODS §3; the official `contrastive_loss` in miccunifi/SEARLE src/utils.py, "based on
PALAVRA"). `cross_modal_infonce` is the CLIP-style variant whose negatives come only from the other
set; zscir used it for SEARLE before and keeps it as a named option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(queries: torch.Tensor, targets: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric NT-Xent over the 2N vectors {queries, targets}; row i's positive is its partner.

    Args:
        queries: [N, D] one set (e.g. RTD's composed queries, or Phi's predictions).
        targets: [N, D] their positives, row by row (the loss is symmetric in the two sets).
        temperature: τ.
    Returns:
        Mean over all 2N rows of −log(exp(s_ip/τ) / Σ_{k≠i} exp(s_ik/τ)), s = cosine similarities.
    """
    n = queries.shape[0]
    z = F.normalize(torch.cat([queries, targets]).float(), dim=-1)  # [2N, D]
    logits = (z @ z.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # the denominator excludes only the row itself
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, partner)


def cross_modal_infonce(predicted: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE whose negatives are only the other set's rows (CLIP-style).

    Args:
        predicted: [N, D] one set.
        targets: [N, D] row i is the positive of prediction i.
        temperature: τ.
    Returns:
        ½ (CE(S, I) + CE(Sᵀ, I)) with S_ij = cos(predicted_i, targets_j) / τ.
    """
    logits = F.normalize(predicted.float(), dim=-1) @ F.normalize(targets.float(), dim=-1).T / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


# Named distillation losses of `SearleConfig.distill_loss`.
DISTILL_LOSSES = {"nt-xent": nt_xent, "cross-modal": cross_modal_infonce}
