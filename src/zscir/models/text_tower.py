"""Fine-tuned text towers (RTD): HF folders and RTD's published `.pt` format."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from zscir.errors import ModelLoadError

RTD_KEY = "CLIPTextModelWithProjection"


def load_text_tower(path: str | Path, like: torch.nn.Module) -> torch.nn.Module:
    """Load a fine-tuned `CLIPTextModelWithProjection`.

    Args:
        path: an HF folder (save_pretrained) or an RTD `.pt` file `{'CLIPTextModelWithProjection': state_dict}`.
        like: the backbone's own text tower; an RTD file is loaded into a copy of it.
    Raises:
        ModelLoadError: missing path, wrong format or a state dict of the wrong shape.
    """
    from transformers import CLIPTextModelWithProjection

    path = Path(path)
    if path.is_dir():
        try:
            return CLIPTextModelWithProjection.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path}: not a text-tower folder ({exc})") from exc
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such text-encoder file or folder")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or RTD_KEY not in checkpoint:
        found = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ModelLoadError(f"{path}: expected a {{'{RTD_KEY}': state_dict}} file, found {found}")
    tower = copy.deepcopy(like).float()
    try:
        tower.load_state_dict(checkpoint[RTD_KEY])
    except RuntimeError as exc:
        raise ModelLoadError(f"{path}: state dict does not fit the backbone's text tower: {exc}") from exc
    return tower


def save_text_tower(tower: torch.nn.Module, folder: str | Path, rtd_file: str | Path | None = None) -> Path:
    """Save a text tower as an HF folder and, optionally, in RTD's `.pt` format."""
    from zscir.utils.io import atomic_path

    folder = Path(folder)
    tower.save_pretrained(folder)
    if rtd_file is not None:
        with atomic_path(rtd_file) as tmp:
            torch.save({RTD_KEY: {k: v.detach().cpu() for k, v in tower.state_dict().items()}}, tmp)
    return folder
