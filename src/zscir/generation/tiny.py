"""A tiny SDXL-architecture generator, built from configs (tests and the synthetic world).

Same classes and wiring as SDXL base: a `UNet2DConditionModel` with `addition_embed_type="text_time"`
(cross-attention size H1 + H2, added-embedding input = pooled size P2 + 6 time ids ×
`addition_time_embed_dim`), an `AutoencoderKL`, an Euler discrete scheduler, and the two text
towers / tokenizers of the CLIP folders it is built on. Saved with `save_pretrained`, the folder
loads offline with `StableDiffusionXLPipeline.from_pretrained(folder)` and runs on the CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from zscir.errors import require
from zscir.utils.io import apply_umask_modes

# SDXL's time ids: original size (2) + crop top-left (2) + target size (2).
N_TIME_IDS = 6


@dataclass
class TinySDXLSize:
    """Architecture of the tiny generator.

    Attributes:
        unet_channels: UNet block widths (the first block has no cross-attention, like SDXL's).
        layers_per_block: ResNet layers per UNet block.
        attention_head_dim: per-block head dims of the cross-attention blocks.
        addition_time_embed_dim: embedding size of each SDXL time id.
        vae_channels: VAE block widths; the latent side is image side / 2**(len - 1).
        latent_channels: 4, as in SDXL.
        sample_size: default latent side (the default image side is sample_size × VAE factor).
        norm_num_groups: group norm groups (must divide every width).
    """

    unet_channels: tuple[int, ...] = (16, 32)
    layers_per_block: int = 1
    attention_head_dim: tuple[int, ...] = (2, 4)
    addition_time_embed_dim: int = 8
    vae_channels: tuple[int, ...] = (8, 16)
    latent_channels: int = 4
    sample_size: int = 16
    norm_num_groups: int = 4


def build_tiny_unet(cross_attention_dim: int, pooled_dim: int, size: TinySDXLSize | None = None, seed: int = 0):
    """A randomly initialised SDXL-style `UNet2DConditionModel`.

    Args:
        cross_attention_dim: H1 + H2 of the two text towers.
        pooled_dim: P2, the projection size of text tower 2.
        size: architecture.
        seed: initialisation seed.
    """
    import torch

    diffusers = require("diffusers", "generate")
    size = size or TinySDXLSize()
    n = len(size.unet_channels)
    torch.manual_seed(seed)
    return diffusers.UNet2DConditionModel(
        sample_size=size.sample_size,
        in_channels=size.latent_channels,
        out_channels=size.latent_channels,
        block_out_channels=tuple(size.unet_channels),
        layers_per_block=size.layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        attention_head_dim=tuple(size.attention_head_dim),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=size.addition_time_embed_dim,
        projection_class_embeddings_input_dim=pooled_dim + N_TIME_IDS * size.addition_time_embed_dim,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=size.norm_num_groups,
    )


def build_tiny_vae(size: TinySDXLSize | None = None, seed: int = 0):
    """A randomly initialised `AutoencoderKL` with SDXL's scaling factor."""
    import torch

    diffusers = require("diffusers", "generate")
    size = size or TinySDXLSize()
    n = len(size.vae_channels)
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=list(size.vae_channels),
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        latent_channels=size.latent_channels,
        norm_num_groups=size.norm_num_groups,
        sample_size=size.sample_size * 2 ** (n - 1),
        scaling_factor=0.13025,
    )


def euler_scheduler():
    """SDXL base's Euler discrete scheduler configuration."""
    diffusers = require("diffusers", "generate")
    return diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading", prediction_type="epsilon",
    )


def build_tiny_sdxl(clip_dir_1: str | Path, clip_dir_2: str | Path | None, folder: str | Path,
                    size: TinySDXLSize | None = None, seed: int = 0) -> Path:
    """Assemble and save a tiny SDXL pipeline folder around two CLIP folders.

    Args:
        clip_dir_1: CLIP folder (`save_clip_folder` / hub format) of text tower 1 (SDXL's `text_encoder`).
        clip_dir_2: CLIP folder of text tower 2 (`text_encoder_2`, gives the pooled vector); None = tower 1 again.
        folder: destination; `StableDiffusionXLPipeline.from_pretrained(folder)` loads it offline.
        size: architecture of UNet and VAE.
        seed: initialisation seed.
    Returns:
        The folder.
    """
    import json

    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    diffusers = require("diffusers", "generate")
    size = size or TinySDXLSize()
    clip_dir_2 = clip_dir_2 or clip_dir_1
    text_encoder = CLIPTextModel.from_pretrained(str(clip_dir_1))
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(str(clip_dir_2))
    cross = text_encoder.config.hidden_size + text_encoder_2.config.hidden_size
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=build_tiny_vae(size, seed),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=AutoTokenizer.from_pretrained(str(clip_dir_1)),
        tokenizer_2=AutoTokenizer.from_pretrained(str(clip_dir_2)),
        unet=build_tiny_unet(cross, text_encoder_2.config.projection_dim, size, seed),
        scheduler=euler_scheduler(),
        add_watermarker=False,
    )
    folder = Path(folder)
    pipe.save_pretrained(str(folder))
    (folder / "zscir_tiny_sdxl.json").write_text(json.dumps(asdict(size), indent=2))
    apply_umask_modes(folder)  # save_pretrained's safetensors files are 0600 whatever the umask
    return folder
