"""Fine-tune the generator's UNet for CIG (METHODS.md §5), on the shared training loop.

Objective: reconstruct an image from the composed conditioning of "a photo of $" with
$ = Phi(its own image embedding) (each tower with its own Phi), with the standard
noise-prediction loss of latent diffusion:

    z0 = VAE latent of the image (× scaling factor),  t ~ U{0..T-1},  ε ~ N(0, I)
    z_t = DDPM.add_noise(z0, ε, t)
    loss = MSE(UNet(z_t, t, prompt_embeds, pooled, time_ids), ε)     (or the velocity for v-prediction)

With `captions` (one text per image) the conditioning is that plain text instead: the pretraining of a
base generator from captions, as stock SDXL was trained (the synthetic world's shipped generator).

Only the UNet trains. The VAE latent distribution (mean, std) and the conditioning of every
training image are computed ONCE in `setup` (frozen VAE, towers and Phis) and cached on disk,
keyed by the fingerprints of those models and the image list; a step only samples a latent from
the cached distribution. With probability `uncond_prob` a sample's conditioning is replaced by
zeros, so the UNet learns the all-zero negative conditioning that generation guides against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.data.images import load_image
from zscir.errors import ZscirError, require
from zscir.generation.cig import load_component, model_load_error
from zscir.models.backbone import fingerprint_module
from zscir.training.config import GeneratorTrainConfig
from zscir.training.loop import TrainTask, train
from zscir.utils.io import atomic_path, write_json_atomic

CACHE_NAME = "generator_cache.safetensors"


def image_to_pixels(image, resolution: int) -> torch.Tensor:
    """PIL image → [3, S, S] in [-1, 1] (shorter side resized to S, centre crop), the VAE's input range."""
    import numpy as np
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - resolution) // 2, (h - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 127.5 - 1.0
    return array.permute(2, 0, 1)


def sdxl_time_ids(resolution: int, batch: int) -> torch.Tensor:
    """SDXL's micro-conditioning [B, 6]: original size, crop top-left (0, 0), target size."""
    return torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32).repeat(batch, 1)


class GeneratorTask(TrainTask):
    """The CIG generator objective as a `TrainTask` (see the module docstring).

    Args:
        config: the recipe.
        conditioner: a `ComposedConditioner` whose template is the training prompt ("a photo of $").
        image_paths: the training images.
        unet_source: start from this UNet instead of the generator's (e.g. to continue training).
        captions: one caption per image: condition on it as plain text (no pseudo token; the Phis unused).
    """

    def __init__(self, config: GeneratorTrainConfig, conditioner, image_paths: Sequence[str | Path],
                 unet_source: str | Path | None = None, captions: Sequence[str] | None = None):
        if not image_paths:
            raise ZscirError("train-generator: no training images")
        if captions is not None and len(captions) != len(image_paths):
            raise ZscirError(f"train-generator: {len(captions)} captions for {len(image_paths)} images")
        self.config, self.conditioner = config, conditioner
        self.image_paths = [Path(p) for p in image_paths]
        self.captions = None if captions is None else [str(c) for c in captions]
        self.unet_source = unet_source
        self.cache: dict[str, torch.Tensor] = {}

    # ---- frozen parts and the cache ------------------------------------------------------------
    def _load_models(self):
        diffusers = require("diffusers", "generate")
        source = self.config.generator
        try:
            vae = load_component(diffusers.AutoencoderKL, source, "vae", torch.float32, pipeline=True)
            self.noise_scheduler = diffusers.DDPMScheduler.from_pretrained(str(source), subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise model_load_error("generator", source, exc) from exc
        unet_from = self.unet_source or source
        try:
            self.unet = load_component(diffusers.UNet2DConditionModel, unet_from, "unet", torch.float32,
                                       pipeline=self.unet_source is None)
        except (OSError, ValueError) as exc:
            raise model_load_error("generator UNet", unet_from, exc) from exc
        self.conditioner.check_unet(self.unet.config)
        return vae

    def cache_key(self, vae) -> str:
        """Fingerprint of everything the cache depends on (frozen models, prompt, images, resolution)."""
        c = self.conditioner
        parts = [fingerprint_module(vae), c.backbone_1.text_fingerprint(), c.backbone_1.vision_fingerprint(),
                 c.backbone_2.text_fingerprint(), c.backbone_2.vision_fingerprint(), fingerprint_module(c.phi_1),
                 fingerprint_module(c.phi_2), c.template.text, str(self.config.resolution), f"pad={c.pad_id}"]
        if self.captions is not None:
            parts.append("captions:" + hashlib.sha256("\n".join(self.captions).encode()).hexdigest())
        parts += [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in self.image_paths]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]

    def build_cache(self, vae) -> dict[str, torch.Tensor]:
        """VAE latent mean/std and conditioning of every image (no grad, one pass)."""
        from tqdm.auto import tqdm

        size, step = self.config.resolution, self.config.encode_batch_size
        means, stds, states, pooled = [], [], [], []
        vae_device = next(vae.parameters()).device
        for start in tqdm(range(0, len(self.image_paths), step), desc="cache latents + conditioning", disable=None):
            images = [load_image(p) for p in self.image_paths[start : start + step]]
            pixels = torch.stack([image_to_pixels(im, size) for im in images]).to(vae_device)
            with torch.inference_mode():
                dist = vae.encode(pixels).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
            if self.captions is None:
                v1, v2 = self.conditioner.pseudo_tokens(images)
                cond = self.conditioner.encode([self.conditioner.template.format("")] * len(images), v1, v2)
            else:
                cond = self.conditioner.encode(self.captions[start : start + step], None, None)
            states.append(cond.prompt_embeds)
            pooled.append(cond.pooled_prompt_embeds)
        return {"latent_mean": torch.cat(means), "latent_std": torch.cat(stds),
                "prompt_embeds": torch.cat(states), "pooled_prompt_embeds": torch.cat(pooled)}

    def setup(self, accelerator) -> None:
        """Load the frozen parts, build (main process) or read the cache; the VAE is freed afterwards."""
        from safetensors.torch import load_file, save_file

        vae = self._load_models().eval().requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)
        key = self.cache_key(vae)
        path = Path(self.config.output_dir) / CACHE_NAME
        if accelerator.is_main_process:
            cached = None
            if path.is_file():
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:
                    if (f.metadata() or {}).get("key") == key:
                        cached = load_file(str(path))
            if cached is None:
                cached = self.build_cache(vae.to(accelerator.device))
                with atomic_path(path) as tmp:
                    save_file({k: v.contiguous() for k, v in cached.items()}, str(tmp), metadata={"key": key})
            self.cache = cached
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            self.cache = load_file(str(path))
        del vae
        self.time_ids = sdxl_time_ids(self.config.resolution, 1)

    # ---- the TrainTask protocol ------------------------------------------------------------------
    def model(self) -> torch.nn.Module:
        """The UNet (trainable)."""
        return self.unet.train().requires_grad_(True)

    def num_examples(self) -> int:
        """Number of training images."""
        return len(self.image_paths)

    def batch(self, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        """Latents sampled from the cached distributions and the cached conditionings (some zeroed)."""
        rows = torch.tensor(indices, dtype=torch.long)
        mean, std = self.cache["latent_mean"][rows], self.cache["latent_std"][rows]
        latents = (mean + std * torch.randn_like(mean)) * self.scaling_factor
        states = self.cache["prompt_embeds"][rows].clone()
        pooled = self.cache["pooled_prompt_embeds"][rows].clone()
        if self.config.uncond_prob > 0:
            drop = torch.rand(len(indices)) < self.config.uncond_prob
            states[drop], pooled[drop] = 0.0, 0.0
        return {"latents": latents.to(device), "prompt_embeds": states.to(device), "pooled": pooled.to(device),
                "time_ids": self.time_ids.repeat(len(indices), 1).to(device)}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Noise-prediction MSE at a uniformly sampled DDPM timestep."""
        latents = batch["latents"]
        noise = torch.randn_like(latents)
        steps = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, steps, (latents.shape[0],), device=latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        prediction = model(noisy, t, encoder_hidden_states=batch["prompt_embeds"],
                           added_cond_kwargs={"text_embeds": batch["pooled"], "time_ids": batch["time_ids"]}).sample
        kind = self.noise_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, t)
        else:
            raise ZscirError(f"unsupported prediction type {kind!r} (epsilon or v_prediction)")
        return F.mse_loss(prediction.float(), target.float())

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        """`folder/unet` in diffusers format (use with `zscir generate --unet folder`)."""
        model.save_pretrained(str(folder / "unet"))
        write_json_atomic(folder / "generator.json", {"base": str(self.config.generator),
                                                      "template": self.conditioner.template.text
                                                      if self.captions is None else None,
                                                      "captions": self.captions is not None,
                                                      "pad_id": self.conditioner.pad_id,
                                                      "resolution": self.config.resolution})


def train_generator(config: GeneratorTrainConfig, conditioner, image_paths: Sequence[str | Path],
                    unet_source: str | Path | None = None, captions: Sequence[str] | None = None):
    """Fine-tune the generator UNet on `image_paths` with the shared loop.

    Args:
        config: recipe + loop knobs.
        conditioner: `ComposedConditioner` (its template should be the training prompt, "a photo of $").
        image_paths: training images.
        unet_source: optional starting UNet (folder).
        captions: one caption per image to condition on instead (pretraining a base generator).
    Returns:
        The loop's `TrainResult`; the UNet is in `result.final_dir / "unet"`.
    """
    return train(GeneratorTask(config, conditioner, image_paths, unet_source, captions), config)
