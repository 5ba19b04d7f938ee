"""Build CLIP models from configs (no pretrained weights) and save them as loadable folders.

Used by the tests (tiny random CLIPs) and by the synthetic world (a tiny CLIP trained on the
CPU). A saved folder loads through `Backbone.load(folder)` exactly like a hub model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from zscir.utils.io import apply_umask_modes


@dataclass
class ClipSize:
    """Architecture of a small CLIP. Defaults: the ~3M-parameter model of the synthetic world."""

    projection_dim: int = 128
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    # CIRR-like captions: 40 tokens cut 1% of them, but 15% of the "a photo of $ that {caption}" prompts
    # (measured on the CIRR-format val; real CLIP: 77). 64 fits those, and the composed pretraining texts.
    context_length: int = 40
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 4
    image_size: int = 48
    patch_size: int = 8


def build_clip(tokenizer, size: ClipSize | None = None, seed: int = 0):
    """A randomly initialised `transformers.CLIPModel` matching `tokenizer`.

    Args:
        tokenizer: a CLIP tokenizer (e.g. from `train_clip_tokenizer`); its special ids go into the config.
        size: architecture; `ClipSize()` by default.
        seed: initialisation seed.
    Returns:
        CLIPModel (fp32, train mode). `projection_dim` is written into the text and vision configs too,
        so `CLIPTextModelWithProjection.from_pretrained(folder)` works on the saved folder.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel

    size = size or ClipSize()
    special = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id)
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=size.text_hidden, intermediate_size=4 * size.text_hidden,
        num_hidden_layers=size.text_layers, num_attention_heads=size.text_heads,
        max_position_embeddings=size.context_length, projection_dim=size.projection_dim, **special,
    )
    vision_config = dict(
        hidden_size=size.vision_hidden, intermediate_size=4 * size.vision_hidden, num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads, image_size=size.image_size, patch_size=size.patch_size,
        projection_dim=size.projection_dim,
    )
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=size.projection_dim)
    torch.manual_seed(seed)
    return CLIPModel(config)


def image_processor_for(image_size: int):
    """A CLIP image processor (PIL path) that resizes and centre-crops to `image_size`."""
    from transformers import CLIPImageProcessorPil

    crop = {"height": image_size, "width": image_size}
    return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size=crop)


def save_clip_folder(model, tokenizer, folder: str | Path, size: ClipSize | None = None) -> Path:
    """Save model + tokenizer + image processor so that `Backbone.load(folder)` works offline.

    Args:
        model: a `CLIPModel`.
        tokenizer: its tokenizer (model_max_length is set to the model's context length).
        folder: destination (created).
        size: recorded in `zscir_clip_size.json` for reference.
    """
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    context = model.config.text_config.max_position_embeddings
    tokenizer.model_max_length = context
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor_for(model.config.vision_config.image_size).save_pretrained(folder)
    if size is not None:
        (folder / "zscir_clip_size.json").write_text(json.dumps(asdict(size), indent=2))
    apply_umask_modes(folder)  # save_pretrained's safetensors files are 0600 whatever the umask
    return folder


def save_weights_fp16(folder: str | Path) -> Path:
    """Rewrite a saved model's `model.safetensors` with fp16 tensors (half the size; loads back as fp32).

    Used to ship the world CLIP as package data; retrieval is unchanged to the printed precision.
    """
    from safetensors.torch import load_file, save_file

    path = Path(folder) / "model.safetensors"
    tensors = load_file(str(path))
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(half, str(path), metadata={"format": "pt"})
    return path
