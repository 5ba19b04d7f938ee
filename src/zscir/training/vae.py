"""Train a (small) SDXL `AutoencoderKL` as an autoencoder on a folder of images, on the shared loop.

Real SDXL ships a trained VAE; a generator built from configs (`generation/tiny.py`) has a random
one whose decoder does not invert its encoder, so a UNet trained in its latent space can only
produce noise-like pictures. This trains the VAE the standard way (without the perceptual and
adversarial terms of the SD recipe, which a world of flat coloured shapes does not need):

    posterior q(z | x) = N(mu(x), sigma(x)^2)        (encoder)
    z ~ q(z | x)                                      (reparameterised sample)
    loss = mean_pixels (decode(z) - x)^2  +  kl_weight * mean_latent_elements KL(q(z | x) || N(0, I))

x is in [-1, 1] (`image_to_pixels`). After training, the VAE's `scaling_factor` is set to
1 / std(z) over training latents, SD's convention, so that scaled latents have unit variance as the
diffusion noise schedule assumes. The result is saved as a diffusers `AutoencoderKL` folder
(`final/vae`) and can replace the `vae/` of a `StableDiffusionXLPipeline` folder (`install_vae`).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.data.images import load_image
from zscir.errors import ZscirError, require
from zscir.generation.cig import load_component, model_load_error
from zscir.training.config import VAETrainConfig
from zscir.training.generator import image_to_pixels
from zscir.training.loop import TrainTask, train


class AutoencoderWithKL(torch.nn.Module):
    """Wraps an `AutoencoderKL` so that ONE forward returns what the loss needs (DDP syncs `forward` only).

    forward(x [B, 3, S, S]) -> (reconstruction of a posterior sample [B, 3, S, S], KL per latent element [B]).
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(pixels).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar)  # [B, C, h, w]
        return recon, kl.flatten(1).mean(1)


def load_pixels(paths: Sequence[str | Path], resolution: int) -> torch.Tensor:
    """[N, 3, S, S] images in [-1, 1] (the VAE's input range)."""
    return torch.stack([image_to_pixels(load_image(p), resolution) for p in paths])


@torch.no_grad()
def reconstruction_mse(vae, pixels: torch.Tensor, batch_size: int = 64) -> float:
    """Mean squared error (on the [-1, 1] scale) of decode(posterior mode(encode(x))) against x.

    Args:
        vae: an `AutoencoderKL`.
        pixels: [N, 3, S, S] in [-1, 1].
        batch_size: images per forward.
    Returns:
        The MSE averaged over every pixel value of every image.
    """
    was_training = vae.training
    vae.eval()
    total = 0.0
    for start in range(0, pixels.shape[0], batch_size):
        x = pixels[start : start + batch_size].to(next(vae.parameters()).device)
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
        total += F.mse_loss(recon.float(), x.float(), reduction="sum").item()
    vae.train(was_training)
    return total / pixels.numel()


@torch.no_grad()
def latent_scaling_factor(vae, pixels: torch.Tensor, batch_size: int = 64) -> float:
    """1 / std of posterior samples over `pixels` (SD's definition of the VAE scaling factor)."""
    samples = []
    for start in range(0, pixels.shape[0], batch_size):
        x = pixels[start : start + batch_size].to(next(vae.parameters()).device)
        samples.append(vae.encode(x).latent_dist.sample().float().cpu())
    return float(1.0 / torch.cat(samples).std())


class VAETask(TrainTask):
    """The autoencoder objective as a `TrainTask` (see the module docstring).

    Args:
        config: the recipe.
        image_paths: training images (decoded once, kept in memory as [N, 3, S, S]).
        val_paths: optional held-out images; validation reports their reconstruction "mse".
    """

    def __init__(self, config: VAETrainConfig, image_paths: Sequence[str | Path],
                 val_paths: Sequence[str | Path] | None = None):
        if not image_paths:
            raise ZscirError("train-vae: no training images")
        self.config = config
        self.image_paths = [Path(p) for p in image_paths]
        self.val_paths = [Path(p) for p in val_paths or []]

    def setup(self, accelerator) -> None:
        """Load the starting VAE and decode every image once."""
        diffusers = require("diffusers", "generate")
        try:
            vae = load_component(diffusers.AutoencoderKL, self.config.vae, "vae", torch.float32)
        except (OSError, ValueError) as exc:
            raise model_load_error("VAE", self.config.vae, exc) from exc
        self.wrapper = AutoencoderWithKL(vae)
        self.pixels = load_pixels(self.image_paths, self.config.resolution)
        self.val_pixels = load_pixels(self.val_paths, self.config.resolution) if self.val_paths else None

    def model(self) -> torch.nn.Module:
        """The wrapped VAE (encoder and decoder both train)."""
        return self.wrapper.train().requires_grad_(True)

    def num_examples(self) -> int:
        """Number of training images."""
        return self.pixels.shape[0]

    def batch(self, indices: list[int], device: torch.device) -> torch.Tensor:
        """[B, 3, S, S] pixels of these images."""
        return self.pixels[torch.as_tensor(indices, dtype=torch.long)].to(device)

    def loss(self, model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Reconstruction MSE + kl_weight × KL per latent element."""
        recon, kl = model(batch)
        return F.mse_loss(recon.float(), batch.float()) + self.config.kl_weight * kl.float().mean()

    def can_validate(self) -> bool:
        """Validation needs held-out images."""
        return self.val_pixels is not None

    def validate(self, model: torch.nn.Module) -> dict[str, float]:
        """{"mse": reconstruction MSE of the held-out images (posterior mode)}."""
        return {"mse": reconstruction_mse(model.vae, self.val_pixels)}

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        """`folder/vae` in diffusers format, with `scaling_factor` = 1 / std of training latents."""
        vae = model.vae
        was_training = vae.training
        vae.eval()
        factor = latent_scaling_factor(vae, self.pixels[: self.config.scale_images])
        vae.train(was_training)
        vae.register_to_config(scaling_factor=factor)
        vae.save_pretrained(str(folder / "vae"))


def train_vae(config: VAETrainConfig, image_paths: Sequence[str | Path],
              val_paths: Sequence[str | Path] | None = None):
    """Train the VAE of `config.vae` on `image_paths` with the shared loop.

    Args:
        config: recipe + loop knobs.
        image_paths: training images.
        val_paths: optional held-out images (validation metric "mse"; the best VAE goes to `best/vae`).
    Returns:
        The loop's `TrainResult`; the trained VAE is in `result.final_dir / "vae"`.
    """
    return train(VAETask(config, image_paths, val_paths), config)


def install_vae(pipeline_dir: str | Path, vae_dir: str | Path) -> Path:
    """Replace the `vae/` of a diffusers pipeline folder by a trained `AutoencoderKL` folder.

    Args:
        pipeline_dir: a `StableDiffusionXLPipeline` folder (e.g. from `build_tiny_sdxl`).
        vae_dir: the trained VAE (`config.json` + weights), e.g. `result.final_dir / "vae"`.
    Returns:
        The pipeline folder's new `vae/`.
    """
    vae_dir, target = Path(vae_dir), Path(pipeline_dir) / "vae"
    if not (vae_dir / "config.json").is_file():
        raise ZscirError(f"{vae_dir}: not an AutoencoderKL folder (config.json missing)")
    tmp = target.with_name(".tmp-vae")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(vae_dir, tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target
