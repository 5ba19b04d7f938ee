"""Fine-tuned text towers (RTD): HF folders and RTD's published `.pt` format."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from zscir.errors import ModelLoadError, first_line
from zscir.models.phi import load_state_checked, torch_load_weights
from zscir.utils.io import apply_umask_modes, atomic_path

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
        except Exception as exc:  # OSError, ValueError, SafetensorError (truncated weights), ...
            raise ModelLoadError(f"{path}: not a text-tower folder ({first_line(exc)[:200]})") from exc
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such text-encoder file or folder")
    checkpoint = torch_load_weights(path)
    if not isinstance(checkpoint, dict) or RTD_KEY not in checkpoint:
        found = sorted(map(str, checkpoint))[:6] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ModelLoadError(f"{path}: expected a {{'{RTD_KEY}': state_dict}} file, found {found}")
    if not isinstance(checkpoint[RTD_KEY], dict):
        raise ModelLoadError(f"{path}: '{RTD_KEY}' holds a {type(checkpoint[RTD_KEY]).__name__}, not a state dict")
    tower = copy.deepcopy(like).float()
    load_state_checked(tower, checkpoint[RTD_KEY], f"{path}: the backbone's text tower")
    return tower


def save_text_tower(tower: torch.nn.Module, folder: str | Path, rtd_file: str | Path | None = None) -> Path:
    """Save a text tower as an HF folder and, optionally, in RTD's `.pt` format."""
    folder = Path(folder)
    tower.save_pretrained(folder)
    apply_umask_modes(folder)  # save_pretrained's safetensors files are 0600 whatever the umask
    if rtd_file is not None:
        with atomic_path(rtd_file) as tmp:
            torch.save({RTD_KEY: {k: v.detach().cpu() for k, v in tower.state_dict().items()}}, tmp)
    return folder
