"""Load the models a composed query needs, and check that they fit together.

One function for `zscir evaluate`, the search service (`zscir search` / `zscir serve`) and any
caller of the library: backbone (name, hub id, folder or a loaded `Backbone`), optionally a
fine-tuned text tower swapped in (RTD), optionally an inversion network checked against the tower.
"""

from __future__ import annotations

import os

import torch

from zscir.models.backbone import Backbone
from zscir.models.phi import check_fits, load_inversion_network
from zscir.models.text_tower import load_text_tower


def load_query_models(backbone: str | os.PathLike | Backbone,
                      text_encoder: str | os.PathLike | torch.nn.Module | None = None,
                      phi: str | os.PathLike | torch.nn.Module | None = None, device: str = "cpu",
                      dtype: str = "fp32") -> tuple[Backbone, torch.nn.Module | None]:
    """The backbone (with a fine-tuned text tower swapped in if given) and the inversion network.

    Args:
        backbone: a registered name, hub id or local CLIP folder, or an already loaded `Backbone`.
        text_encoder: a fine-tuned text tower (RTD `.pt` file or HF folder, or a module), or None.
        phi: an inversion network (SEARLE/LinCIR file, Pic2Word checkpoint, zscir folder, or a module), or None.
        device, dtype: where and how a backbone given by name is loaded (Phi is loaded on `device`).
    Returns:
        (backbone, phi in eval mode or None).
    Raises:
        ModelLoadError: a model that does not load, or a Phi whose sizes do not fit the backbone.
    """
    if not isinstance(backbone, Backbone):
        backbone = Backbone.load(backbone, device=device, dtype=dtype)
    if text_encoder is not None:
        tower = (load_text_tower(text_encoder, like=backbone.text) if isinstance(text_encoder, (str, os.PathLike))
                 else text_encoder)
        backbone = backbone.with_text_tower(tower.eval().requires_grad_(False))
    if phi is not None:
        phi = load_inversion_network(phi, device) if isinstance(phi, (str, os.PathLike)) else phi.eval()
        check_fits(phi, backbone)
    return backbone, phi
