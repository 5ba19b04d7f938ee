"""Named backbones and checkpoint formats, as data (no if-ladders in code).

A backbone name resolves to a hub id (users with network and GPUs) or a local folder; any other
hub id or folder is accepted as is. Dims are recorded so that mismatches are caught before a
model is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zscir.errors import ModelLoadError


@dataclass(frozen=True)
class BackboneSpec:
    """A registered CLIP backbone.

    Attributes:
        name: short name used on the command line.
        source: hub id or local folder (a `CLIPModel` saved with `save_pretrained`).
        projection_dim: P, size of image/text embeddings.
        hidden_size: H, size of the text tower's token embeddings (Phi's output).
        description: one line for `zscir models`.
    """

    name: str
    source: str
    projection_dim: int | None
    hidden_size: int | None
    description: str


def default_cache_dir() -> Path:
    """Where zscir keeps the synthetic world, its trained models and feature caches.

    `$ZSCIR_CACHE` if set, else `~/.cache/zscir`.
    """
    return Path(os.environ.get("ZSCIR_CACHE", Path.home() / ".cache" / "zscir"))


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        BackboneSpec("ViT-B/32", "openai/clip-vit-base-patch32", 512, 512, "OpenAI CLIP ViT-B/32 (SEARLE B/32)"),
        BackboneSpec("ViT-L/14", "openai/clip-vit-large-patch14", 768, 768, "OpenAI CLIP ViT-L/14 (SDXL text 1)"),
        BackboneSpec("ViT-H/14", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", 1024, 1024, "LAION CLIP ViT-H/14"),
        BackboneSpec("bigG/14", "Geonmo/CLIP-Giga-config-fixed", 1280, 1280, "CLIP bigG/14 (SDXL text encoder 2)"),
        BackboneSpec(
            "bigG/14-laion", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", 1280, 1280, "LAION CLIP bigG/14 (original)"
        ),
        BackboneSpec(
            "synthetic-clip",
            "{cache}/world/synthetic-clip",
            None,
            None,
            "tiny CLIP of the synthetic world (shipped, retrain: `zscir train-clip`; unpacked by `zscir demo`)",
        ),
    ]
}
ALIASES = {"B32": "ViT-B/32", "L14": "ViT-L/14", "H14": "ViT-H/14", "G14": "bigG/14", "large": "ViT-L/14",
           "base": "ViT-B/32", "giga": "bigG/14"}

# Published inversion-network checkpoint formats that `zscir.models.phi.load_inversion_network` reads.
CHECKPOINT_FORMATS = {
    "phi-published": "torch.save({'Phi': state_dict}) from SEARLE / LinCIR (keys layers.0/3/6.*)",
    "pic2word": "Pic2Word checkpoint with 'state_dict_img2text' (keys prefixed 'module.')",
    "zscir": "folder with config.json (+ backbone) + model.safetensors + README.md model card written by "
             "Phi.save_pretrained / Pic2WordMapper.save_pretrained (also on the hub: from_pretrained, push_to_hub)",
    "rtd-text-encoder": "torch.save({'CLIPTextModelWithProjection': state_dict}) from RTD (a text tower)",
}


def resolve_backbone(name_or_path: str) -> tuple[str, BackboneSpec | None]:
    """Turn a backbone name, alias, hub id or folder into what `from_pretrained` takes.

    Returns:
        (source, spec): `source` is a local folder or hub id; `spec` is the registered entry or None.
    Raises:
        ModelLoadError: for a short name that is neither registered nor a plausible hub id / folder,
            listing the known names.
    """
    name = ALIASES.get(name_or_path, name_or_path)
    if name in BACKBONES:
        spec = BACKBONES[name]
        return spec.source.replace("{cache}", str(default_cache_dir())), spec
    if Path(name_or_path).exists() or "/" in name_or_path:
        return name_or_path, None
    known = ", ".join(list(BACKBONES) + sorted(ALIASES))
    raise ModelLoadError(f"unknown backbone {name_or_path!r}; known names: {known}; or pass a hub id or local folder")
