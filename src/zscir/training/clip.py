"""Contrastive pretraining of a small CLIP on a stream of (image, caption) pairs (the synthetic world).

The world renders fresh pairs on the fly, so this trainer is step-based with no epochs; it is the
one place where zscir trains a CLIP from scratch. Loss: the standard symmetric InfoNCE over the
batch with CLIP's learnable temperature.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zscir.errors import ZscirError
from zscir.models.factory import build_clip, image_processor_for, save_clip_folder
from zscir.training.config import ClipTrainConfig

# (rng, batch_size) -> (images, captions)
PairSampler = Callable[[random.Random, int], tuple[Sequence[Image.Image], Sequence[str]]]


LOSS_HEAD = 25  # first losses kept in the training log (a short retrain must reproduce them)


def pixels_from_images(images: Sequence[Image.Image], processor) -> torch.Tensor:
    """Fast preprocessing for images already at the processor's crop size: rescale + normalise.

    Equal to `processor(images)` for such images (tested), without PIL resizing per image.
    """
    crop = processor.crop_size
    array = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images])  # [N, S, S, 3]
    if array.shape[1:3] != (crop["height"], crop["width"]):
        return processor(images=list(images), return_tensors="pt")["pixel_values"]
    mean = np.asarray(processor.image_mean, dtype=np.float32)
    std = np.asarray(processor.image_std, dtype=np.float32)
    array = (array * np.float32(processor.rescale_factor) - mean) / std
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def clip_loss(image_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: matching pairs sit on the diagonal of the [B, B] similarity matrix."""
    image_embeds = F.normalize(image_embeds.float(), dim=-1)
    text_embeds = F.normalize(text_embeds.float(), dim=-1)
    logits = logit_scale.exp().clamp(max=100) * image_embeds @ text_embeds.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


SCALE_IMAGES = 512  # images of the recipe's own stream (a fixed draw) that `embedding_rms` is measured on


def scale_pixels(sample_pairs: PairSampler, config: ClipTrainConfig) -> torch.Tensor:
    """The images `embedding_rms` is measured on: a fixed draw of `SCALE_IMAGES` from the first-phase stream."""
    images, _ = sample_pairs(random.Random(f"{config.seed}|embedding-scale"), SCALE_IMAGES)
    return pixels_from_images(images, image_processor_for(config.size.image_size))


def root_mean_square(embeds: torch.Tensor) -> float:
    """Root-mean-square per coordinate of a batch of raw (unnormalised) embeddings."""
    return float(embeds.float().pow(2).mean().sqrt())


def embedding_rms(model, pixels: torch.Tensor) -> float:
    """`root_mean_square` of the raw image embeddings of `pixels`."""
    with torch.inference_mode():
        return root_mean_square(model.get_image_features(pixel_values=pixels).pooler_output)


def scale_embeddings(model, pixels: torch.Tensor, rms: float) -> float:
    """Multiply both projections of a CLIPModel by one constant so that the image embeddings of `pixels` have
    root-mean-square `rms` per coordinate. Every cosine, hence every retrieval, is unchanged; raw embeddings
    (what Phi reads, and what LinCIR / RTD add unit noise to) are scaled. Returns the factor."""
    factor = rms / embedding_rms(model, pixels)
    with torch.no_grad():
        model.visual_projection.weight.mul_(factor)
        model.text_projection.weight.mul_(factor)
    return factor


def init_geometry(model, config: ClipTrainConfig) -> None:
    """Apply the recipe's initial cone offsets and temperature to a freshly built CLIPModel."""
    generator = torch.Generator().manual_seed(config.seed + 7919)
    with torch.no_grad():
        if config.modality_offset:
            for norm in (model.vision_model.post_layernorm, model.text_model.final_layer_norm):
                direction = F.normalize(torch.randn(norm.bias.shape, generator=generator), dim=0)
                norm.bias.copy_(direction * config.modality_offset)
        if config.logit_scale_init is not None:
            model.logit_scale.fill_(config.logit_scale_init)
    model.logit_scale.requires_grad_(config.learn_temperature)


def train_clip(
    sample_pairs: PairSampler,
    tokenizer,
    out_dir: str | Path,
    config: ClipTrainConfig | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    continue_pairs: PairSampler | None = None,
    phase_one: str | Path | None = None,
) -> Path:
    """Train a CLIP from scratch on sampled pairs and save it as a loadable folder.

    Args:
        sample_pairs: `(rng, batch_size) -> (images, captions)`, fresh pairs per call.
        tokenizer: CLIP-format tokenizer (e.g. `train_clip_tokenizer` on the world's texts).
        out_dir: destination folder (config + weights + tokenizer + processor + `train_log.json`).
        config: recipe; `ClipTrainConfig()` by default.
        progress: show a tqdm bar.
        stop_after: stop (and save) after this many steps of the first phase — the first steps of
            exactly the recipe's run (a test compares them with the shipped model's training log).
        continue_pairs: the sampler of the second phase (required when `config.continue_steps` > 0).
        phase_one: a folder this function saved with `config.first_phase()`: its weights are the first
            phase, which is then not trained again. The second phase draws from its own seeded streams,
            so this gives exactly the weights of the whole run (tested).
    Returns:
        `out_dir`, loadable with `Backbone.load(str(out_dir))`.
    """
    config = config or ClipTrainConfig()
    if config.continue_steps and continue_pairs is None:
        raise ValueError("train_clip: config.continue_steps > 0 needs continue_pairs (the second phase's sampler)")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    model = build_clip(tokenizer, config.size, seed=config.seed).train()
    init_geometry(model, config)
    processor = image_processor_for(config.size.image_size)
    start = time.time()
    if phase_one is not None:
        log = _load_phase_one(model, Path(phase_one), config)
        losses = []
    else:
        warmup = max(1, int(config.warmup_fraction * config.steps))

        def lr_at(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, config.steps - warmup)))

        steps = config.steps if stop_after is None else min(stop_after, config.steps)
        losses = _train_phase(model, sample_pairs, rng, tokenizer, processor, config, config.lr, lr_at, steps,
                              "train tiny CLIP", progress)
        log = {"config": asdict(config.first_phase()), "seconds": round(time.time() - start, 1),
               "loss_first_10": np.mean(losses[:10]), "loss_last_10": float(np.mean(losses[-10:])), "steps": steps,
               "loss_head": [round(x, 5) for x in losses[:LOSS_HEAD]]}
    if config.continue_steps and stop_after is None:
        # the second phase's own streams: the same whether the first phase ran here or was loaded
        torch.manual_seed(config.seed + 1)
        second = random.Random(f"{config.seed}|continue")
        total = config.continue_steps
        later = _train_phase(model, continue_pairs, second, tokenizer, processor, config, config.continue_lr,
                             lambda step: 0.5 * (1 + math.cos(math.pi * step / total)), total,
                             "continue tiny CLIP", progress)
        log.update(continue_steps=total, continue_loss_last_10=float(np.mean(later[-10:])))
    out_dir = Path(out_dir)
    model.eval()
    if config.embedding_rms is not None:
        log["embedding_scale"] = scale_embeddings(model, scale_pixels(sample_pairs, config), config.embedding_rms)
    save_clip_folder(model, tokenizer, out_dir, config.size)
    log.update(config=asdict(config), seconds=round(time.time() - start, 1) + (log.get("seconds", 0) if phase_one
               else 0), logit_scale=round(float(model.logit_scale.detach().exp()), 2))
    (out_dir / "train_log.json").write_text(json.dumps(log, indent=2, default=float))
    return out_dir


def _train_phase(model, sample_pairs: PairSampler, rng: random.Random, tokenizer, processor,
                 config: ClipTrainConfig, lr: float, lr_factor, steps: int, desc: str, progress: bool) -> list[float]:
    """`steps` contrastive steps with a fresh AdamW at `lr` × `lr_factor(step)`; returns the losses."""
    from tqdm.auto import tqdm

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=config.betas,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    context = config.size.context_length
    losses = []
    bar = tqdm(range(steps), desc=desc, disable=not progress or None)
    for step in bar:
        images, captions = sample_pairs(rng, config.batch_size)
        pixels = pixels_from_images(images, processor)
        # Padded to the batch's longest text: exact for CLIP's causal tower pooled at the first end token.
        ids = tokenizer(list(captions), padding="longest", truncation=True, max_length=context,
                        return_tensors="pt")["input_ids"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            image_embeds = model.get_image_features(pixel_values=pixels).pooler_output
            text_embeds = model.get_text_features(input_ids=ids).pooler_output
        loss = clip_loss(image_embeds, text_embeds, model.logit_scale)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"tiny CLIP training: non-finite loss at step {step} ({desc})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    return losses


def _load_phase_one(model, folder: Path, config: ClipTrainConfig) -> dict:
    """Load a saved first phase into `model` after checking it was trained with `config.first_phase()`."""
    from safetensors.torch import load_file

    log = json.loads((folder / "train_log.json").read_text())
    wanted = json.loads(json.dumps(asdict(config.first_phase()), default=float))
    found = {k: v for k, v in log["config"].items() if k != "threads"}
    for key in ("continue_steps", "continue_lr", "continue_data", "embedding_rms"):  # logs from before these existed
        found.setdefault(key, wanted[key])
    if found != {k: v for k, v in wanted.items() if k != "threads"}:
        raise ZscirError(f"{folder}: not the first phase of this recipe (its train_log.json config differs)")
    state = load_file(str(folder / "model.safetensors"))
    result = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    if result.missing_keys:
        raise ZscirError(f"{folder}: the first phase lacks {result.missing_keys[:3]}")
    return {k: v for k, v in log.items() if k != "logit_scale"}
