"""The world's base generator: the analogue of stock SDXL, shipped as package data like the world CLIP.

Real CIG starts from a pretrained SDXL and fine-tunes its UNet on "a photo of $" conditionings
(METHODS §5). The demo does the same: a tiny SDXL (AutoencoderKL + UNet with text-time embeddings,
conditioned by the world CLIP's text tower) is pretrained once on world scenes with their captions
(`train_generator_base`, `zscir train-world-generator`) and shipped in `zscir/demo/world_generator/`;
each demo seed only fine-tunes its UNet with that seed's LinCIR Phi (`demo.cig_stage`).

The base is tied to the text tower it was trained with: when the demo's CLIP is not the shipped one
(`zscir demo --train-clip`), the base is trained here too (`world_generator_base`).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from zscir.compose import PromptTemplate
from zscir.data.images import load_image
from zscir.data.synthetic.corpora import clip_pair_sampler
from zscir.demo.world_models import finish_stage, stage_done, stage_report
from zscir.generation.conditioning import ComposedConditioner
from zscir.generation.tiny import (
    TinySDXLSize,
    build_tiny_sdxl,
    build_tiny_unet,
    build_tiny_vae,
    euler_scheduler,
)
from zscir.models.backbone import Backbone
from zscir.training.config import GeneratorTrainConfig, VAETrainConfig
from zscir.training.generator import image_to_pixels, sdxl_time_ids, train_generator
from zscir.training.vae import install_vae, load_pixels, reconstruction_mse, train_vae

SHIPPED_GENERATOR = Path(__file__).parent / "world_generator"  # package data: `zscir train-world-generator`
BASE_LOG = "base_generator.json"  # recipe, text-tower fingerprint and training report of a base folder


@dataclass(frozen=True)
class GeneratorBaseRecipe:
    """How the base generator is pretrained (all of it keys the demo's cache).

    Attributes:
        images: world scenes rendered for pretraining (each with one paraphrased caption).
        image_size: rendered side (the world's image size); training resizes to `resolution`.
        resolution: generator side in pixels.
        vae_channels / unet_channels / attention_heads: the tiny SDXL architecture.
        vae_steps / vae_batch / vae_lr / kl_weight: the VAE recipe.
        unet_steps / unet_batch / unet_lr / uncond_prob: the UNet recipe (caption conditioning).
        heldout: scenes kept out of training to measure reconstruction and denoising loss.
        seed: scenes, initialisation and training seed.
    """

    images: int = 4000
    image_size: int = 48
    resolution: int = 24
    vae_channels: tuple[int, ...] = (8, 16)
    unet_channels: tuple[int, ...] = (32, 64)
    attention_heads: tuple[int, ...] = (4, 8)
    vae_steps: int = 2000
    vae_batch: int = 16
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    unet_steps: int = 2500
    unet_batch: int = 32
    unet_lr: float = 1e-3
    uncond_prob: float = 0.1
    heldout: int = 200
    seed: int = 0

    def size(self) -> TinySDXLSize:
        """The tiny SDXL architecture of this recipe."""
        return TinySDXLSize(unet_channels=self.unet_channels, attention_head_dim=self.attention_heads,
                            vae_channels=self.vae_channels,
                            sample_size=self.resolution // 2 ** (len(self.vae_channels) - 1))


def fast_recipe() -> GeneratorBaseRecipe:
    """Seconds-long pretraining for smoke tests (meaningless quality)."""
    return GeneratorBaseRecipe(images=48, vae_steps=10, unet_steps=5, unet_batch=8, heldout=8)


def pretraining_scenes(folder: Path, recipe: GeneratorBaseRecipe) -> tuple[list[Path], list[str]]:
    """Render `recipe.images + recipe.heldout` world scenes with their captions into `folder` (reused).

    The scenes come from the world CLIP's pair stream with only plain scene captions (no relative or
    composed texts), seeded by `recipe.seed`, so they never coincide with a benchmark image.
    Returns:
        (image paths, captions), the held-out scenes last.
    """
    n = recipe.images + recipe.heldout
    index = folder / "captions.jsonl"
    if index.is_file():
        rows = [json.loads(line) for line in index.read_text().splitlines()]
        if len(rows) == n and all((folder / r["file"]).is_file() for r in rows):
            return [folder / r["file"] for r in rows], [r["caption"] for r in rows]
    folder.mkdir(parents=True, exist_ok=True)
    sample = clip_pair_sampler(image_size=recipe.image_size, relative_fraction=0.0, pair_fraction=0.0)
    images, captions = sample(random.Random(f"generator-base-{recipe.seed}"), n)
    rows = []
    for i, (image, caption) in enumerate(zip(images, captions)):
        name = f"scene-{i:05d}.png"
        image.save(folder / name)
        rows.append({"file": name, "caption": caption})
    index.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [folder / r["file"] for r in rows], [r["caption"] for r in rows]


def _text_folder(backbone: Backbone, folder: Path) -> Path:
    """The backbone's text tower + tokenizer as a CLIP text folder (the pipeline's two text encoders)."""
    backbone.text.save_pretrained(str(folder))
    backbone.tokenizer.save_pretrained(str(folder))
    return folder


def assemble_pipeline(backbone: Backbone, base_dir: Path, folder: Path, unet_dir: Path | None = None,
                      seed: int = 0) -> Path:
    """A tiny SDXL pipeline folder: both text encoders = the backbone's text tower, VAE and UNet of a base.

    Args:
        backbone: the world CLIP whose text tower conditions the generator.
        base_dir: a base folder (`vae/`, `unet/`, BASE_LOG).
        folder: destination (replaced).
        unet_dir: a UNet folder to use instead of the base's (e.g. a fine-tuned one).
    Returns:
        The folder (loadable with `StableDiffusionXLPipeline.from_pretrained`).
    """
    new_pipeline(backbone, folder, read_recipe(base_dir).size(), base_dir / "vae", seed)
    shutil.rmtree(folder / "unet")
    shutil.copytree(unet_dir or base_dir / "unet", folder / "unet")
    return folder


def new_pipeline(backbone: Backbone, folder: Path, size: TinySDXLSize, vae_dir: Path, seed: int = 0) -> Path:
    """A tiny SDXL pipeline folder (replaced): both text encoders = the backbone's text tower, the VAE of
    `vae_dir`, a freshly initialised UNet (`seed`)."""
    if folder.exists():
        shutil.rmtree(folder)
    text_dir = _text_folder(backbone, folder.parent / f".{folder.name}-text")
    try:
        build_tiny_sdxl(text_dir, None, folder, size, seed=seed)
    finally:
        shutil.rmtree(text_dir, ignore_errors=True)
    install_vae(folder, vae_dir)
    return folder


def base_fingerprint(base_dir: Path) -> str:
    """Content hash of a base folder (its log and every weight file), for the caches built on it."""
    digest = hashlib.sha256()
    base_dir = Path(base_dir)
    for path in [base_dir / BASE_LOG, *sorted(base_dir.glob("*/*.safetensors"))]:
        digest.update(path.relative_to(base_dir).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def read_recipe(base_dir: Path) -> GeneratorBaseRecipe:
    """The recipe a base folder was trained with."""
    fields = json.loads((Path(base_dir) / BASE_LOG).read_text())["recipe"]
    return GeneratorBaseRecipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def caption_conditioner(backbone: Backbone) -> ComposedConditioner:
    """SDXL conditioning of plain captions by the backbone's text tower as both towers (no pseudo token, so
    the Phis are unused placeholders)."""
    no_phi = torch.nn.Identity()
    return ComposedConditioner(backbone, no_phi, backbone, no_phi, PromptTemplate.named("plain"))


def denoising_loss(base_dir: Path, backbone: Backbone, images: list[Path], captions: list[str],
                   unet_dir: Path | None = None, seed: int = 0) -> dict[str, float]:
    """Noise-prediction MSE of a base UNet on images with their captions, with fixed noise and timesteps.

    `conditioned` uses each image's caption, `unconditioned` the all-zero conditioning, on the same noise:
    conditioned below unconditioned means the UNet reads the text (the signal CIG relies on).

    Args:
        unet_dir: a UNet folder to score instead of the base's (e.g. a random one).
    Returns:
        {"conditioned", "unconditioned", "n"}.
    """
    import diffusers

    recipe = read_recipe(base_dir)
    vae = diffusers.AutoencoderKL.from_pretrained(str(Path(base_dir) / "vae")).eval()
    unet = diffusers.UNet2DConditionModel.from_pretrained(str(unet_dir or Path(base_dir) / "unet")).eval()
    scheduler = diffusers.DDPMScheduler.from_config(euler_scheduler().config)
    conditioner = caption_conditioner(backbone)
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.stack([image_to_pixels(load_image(p), recipe.resolution) for p in images])
    with torch.inference_mode():
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), generator=generator)
        noisy = scheduler.add_noise(latents, noise, t)
        cond = conditioner.encode(list(captions), None, None)
        time_ids = sdxl_time_ids(recipe.resolution, len(images))
        losses = {}
        for name, states, pooled in (("conditioned", cond.prompt_embeds, cond.pooled_prompt_embeds),
                                     ("unconditioned", torch.zeros_like(cond.prompt_embeds),
                                      torch.zeros_like(cond.pooled_prompt_embeds))):
            out = unet(noisy, t, encoder_hidden_states=states,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
            losses[name] = round(float(torch.nn.functional.mse_loss(out, noise)), 5)
    return {**losses, "n": len(images)}


def heldout_report(base_dir: Path, backbone: Backbone, work_dir: Path) -> dict:
    """Held-out denoising losses of a base (`denoising_loss` on its recipe's held-out scenes), next to a
    random UNet's: how much the pretraining learned, and whether the UNet reads the caption."""
    recipe = read_recipe(base_dir)
    paths, captions = pretraining_scenes(Path(work_dir) / "scenes", recipe)
    held, texts = paths[recipe.images :], captions[recipe.images :]
    random_unet = Path(work_dir) / "random-unet"
    hidden, projection = backbone.hidden_size, backbone.projection_dim
    build_tiny_unet(2 * hidden, projection, recipe.size(), seed=recipe.seed).save_pretrained(str(random_unet))
    return {"trained": denoising_loss(base_dir, backbone, held, texts),
            "random_unet": denoising_loss(base_dir, backbone, held, texts, unet_dir=random_unet)}


def train_generator_base(out_dir: Path, backbone: Backbone, recipe: GeneratorBaseRecipe | None = None,
                         progress: bool = True, work_dir: Path | None = None) -> Path:
    """Pretrain the base generator: the VAE on world scenes, then the UNet on their captions.

    Args:
        out_dir: destination (`vae/`, `unet/`, BASE_LOG with recipe, text fingerprint and report).
        backbone: the world CLIP (its text tower conditions the UNet, as SDXL's towers do).
        recipe: GeneratorBaseRecipe (default: the shipped one's).
        work_dir: scratch folder for the rendered scenes and runs (default `out_dir/../.generator-base-work`).
    Returns:
        out_dir.
    """
    from diffusers import AutoencoderKL

    recipe = recipe or GeneratorBaseRecipe()
    start = time.time()
    work = Path(work_dir or Path(out_dir).parent / ".generator-base-work")
    paths, captions = pretraining_scenes(work / "scenes", recipe)
    train_paths, train_captions = paths[: recipe.images], captions[: recipe.images]
    check = load_pixels(paths[recipe.images :], recipe.resolution)
    size = recipe.size()

    random_vae = work / "random-vae"
    vae = build_tiny_vae(size, seed=recipe.seed)
    vae.save_pretrained(str(random_vae))
    vae_config = VAETrainConfig(output_dir=str(work / "vae-run"), vae=str(random_vae), resolution=recipe.resolution,
                                max_steps=recipe.vae_steps, batch_size=min(recipe.vae_batch, len(train_paths)),
                                lr=recipe.vae_lr, kl_weight=recipe.kl_weight, seed=recipe.seed,
                                checkpoint_every=recipe.vae_steps, keep_checkpoints=1, resume=True, cpu=True,
                                report_to="none", progress=progress)
    vae_result = train_vae(vae_config, train_paths)
    trained_vae = AutoencoderKL.from_pretrained(str(vae_result.final_dir / "vae"))
    vae_report = {"recon_mse_random": round(reconstruction_mse(vae, check), 5),
                  "recon_mse_trained": round(reconstruction_mse(trained_vae, check), 5), "steps": vae_result.steps,
                  "seconds": round(time.time() - start, 1)}

    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    shutil.copytree(vae_result.final_dir / "vae", tmp / "vae")
    pipeline = new_pipeline(backbone, work / "pipeline", size, tmp / "vae", recipe.seed)
    conditioner = caption_conditioner(backbone)
    unet_start = time.time()
    unet_config = GeneratorTrainConfig(output_dir=str(work / "unet-run"), generator=str(pipeline),
                                       resolution=recipe.resolution, max_steps=recipe.unet_steps,
                                       batch_size=min(recipe.unet_batch, len(train_paths)), lr=recipe.unet_lr,
                                       uncond_prob=recipe.uncond_prob, seed=recipe.seed,
                                       checkpoint_every=max(1, recipe.unet_steps // 5), keep_checkpoints=1,
                                       encode_batch_size=64, resume=True, cpu=True, report_to="none",
                                       progress=progress)
    unet_result = train_generator(unet_config, conditioner, train_paths, captions=train_captions)
    shutil.copytree(unet_result.final_dir / "unet", tmp / "unet")
    report = {"vae": vae_report, "unet": {"steps": unet_result.steps, "last_loss": round(unet_result.last_loss, 5),
                                          "seconds": round(time.time() - unet_start, 1)},
              "train_images": len(train_paths), "heldout_images": len(paths) - len(train_paths),
              "seconds": round(time.time() - start, 1)}
    log = {"recipe": asdict(recipe), "text": backbone.text_fingerprint(), "report": report}
    (tmp / BASE_LOG).write_text(json.dumps(log, indent=2))
    report["heldout_denoising"] = heldout_report(tmp, backbone, work)
    (tmp / BASE_LOG).write_text(json.dumps(log, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    shutil.rmtree(work, ignore_errors=True)
    return out_dir


def world_generator_base(cache_dir: Path, backbone: Backbone, fast: bool = False, train: bool = False,
                         progress: bool = True) -> tuple[Path, dict]:
    """The demo's base generator: the shipped one when it was trained with this backbone's text tower,
    else (or with `train`) one pretrained here into `<cache>/world[-fast]/generator-base`.

    Returns:
        (base folder with `vae/`, `unet/` and BASE_LOG, report {"source", "text", "train_report", "reused"}).
    """
    text = backbone.text_fingerprint()
    shipped = SHIPPED_GENERATOR / BASE_LOG
    if not train and not fast and shipped.is_file() and json.loads(shipped.read_text())["text"] == text:
        log = json.loads(shipped.read_text())
        return SHIPPED_GENERATOR, {"source": "shipped", "text": text, "train_report": log["report"], "reused": True}
    recipe = fast_recipe() if fast else GeneratorBaseRecipe()
    folder = Path(cache_dir) / ("world-fast" if fast else "world") / "generator-base"
    settings = {"recipe": asdict(recipe), "text": text}
    if stage_done(folder, settings):
        return folder, {**stage_report(folder), "reused": True}
    tmp = folder.parent / ".generator-base.tmp"
    train_generator_base(tmp, backbone, recipe, progress, work_dir=folder.parent / ".generator-base-work")
    log = json.loads((tmp / BASE_LOG).read_text())
    report = {"source": "trained here", "text": text, "train_report": log["report"]}
    finish_stage(tmp, folder, settings, report)
    return folder, report
