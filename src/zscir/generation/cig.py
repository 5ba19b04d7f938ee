"""CIG pseudo-target generation with an SDXL pipeline fed composed conditionings (METHODS.md §5).

Steps of `generate_pseudo_targets`:
  1. shard the queries (process i of n takes queries[i::n], stable across resumes);
  2. skip queries whose image already exists (resume; images are written atomically, so an
     existing file is a finished one);
  3. per batch: load the saved conditioning of each query or compute it from the reference image
     (a missing / corrupt reference is recorded as a failure, the run goes on);
  4. render with per-image seeds and all-zero negative embeddings; an image whose mean pixel value
     (0–255 over H×W×3) is ≤ the threshold is rendered again with seed+1, seed+2, ... (at most
     `max_retries` times); one still dark after that is a failure (no file, fusion falls back to α=1);
  5. write `{query_stem}.png` atomically and a manifest JSON of generated / skipped / retried / failed.

Defects of the public code avoided: one seed for every query (default here: a per-query seed from a
stable hash; the paper's single seed 1600 is `seed_policy="shared"`), `{pairid}.png` written but
`{pairid:05d}.png` read (one naming function, `query_stem`, for writer and reader), one missing
image killing the run, FashionIQ images of the wrong category (the reference comes from the query's
own `CIRSplit`).
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from zscir.data.images import load_image
from zscir.errors import DataError, ModelLoadError, require
from zscir.generation.conditioning import (
    ComposedConditioner,
    Conditioning,
    conditioning_path,
    load_conditioning,
    query_stem,
    save_conditioning,
)
from zscir.generation.options import SCHEDULERS, GenerationConfig  # noqa: F401  (re-exported)
from zscir.models.backbone import resolve_dtype
from zscir.utils.device import check_device
from zscir.utils.io import atomic_path, remove_stale_temps, write_json_atomic
from zscir.utils.terminal import bars_only_on_a_terminal

MANIFEST = "manifest.json"
IMAGE_SUFFIX = ".png"

def query_seed(base_seed: int, query_id: str, policy: str = "per-query") -> int:
    """The initial seed of a query: a stable hash of (base seed, query id), or the base seed itself.

    sha256, not Python's `hash()` (salted per process), so every run and every process agree.
    """
    if policy == "shared":
        return int(base_seed)
    digest = hashlib.sha256(f"{int(base_seed)}:{query_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def mean_brightness(image) -> float:
    """Mean pixel value (0–255) of an RGB PIL image over H×W×3."""
    import numpy as np

    return float(np.asarray(image.convert("RGB"), dtype=np.float64).mean())


def image_path(out_dir: str | Path, query_id: str) -> Path:
    """Where the pseudo target of `query_id` lives (the one naming rule for writer and reader)."""
    return Path(out_dir) / f"{query_stem(query_id)}{IMAGE_SUFFIX}"


# ---------------------------------------------------------------------------------------------
# Loading the generator


@contextlib.contextmanager
def quiet_dtype_warning():
    """`torch_dtype=` works in every diffusers < 1.0 (`dtype=` only in recent ones); hide its FutureWarning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        yield


def quiet_loading_bars():
    """No diffusers loading bars ("Loading pipeline components...") when stderr is not a terminal (logs, CI)."""
    from diffusers.utils import logging as diffusers_logging

    return bars_only_on_a_terminal(diffusers_logging)


def load_component(cls, source: str | Path, subfolder: str, dtype, pipeline: bool = False):
    """Load a diffusers model (UNet, VAE) from its own folder / hub id, or from `subfolder` of a pipeline.

    Args:
        cls: e.g. `diffusers.UNet2DConditionModel`.
        source: model folder, pipeline folder or hub id.
        subfolder: the component's folder inside a pipeline ("unet", "vae").
        dtype: torch dtype of the weights.
        pipeline: a hub id names a whole pipeline (read its `subfolder`); local folders are detected.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        use_sub = (path / subfolder / "config.json").is_file()
    else:
        use_sub = pipeline
    options = {"subfolder": subfolder} if use_sub else {}
    with quiet_dtype_warning():
        return cls.from_pretrained(str(path if path.is_dir() else source), torch_dtype=dtype, **options)


def model_load_error(what: str, source: str | Path, exc: Exception) -> ModelLoadError:
    """One-line error for a component that failed to load: a bad local folder, or an unreachable hub id."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if Path(source).expanduser().exists() or str(source).startswith((".", "/", "~")):
        return ModelLoadError(f"{what} {source}: cannot load it ({first})")
    return ModelLoadError(
        f"{what} {source!r}: no such folder, and the model hub is unreachable or does not have it ({first}); "
        "download it elsewhere and pass the local folder (diffusers save_pretrained format)"
    )


def load_generator(source: str | Path, unet: str | Path | None = None, vae: str | Path | None = None,
                   scheduler: str = "euler", dtype: str | torch.dtype = "fp32", device: str | torch.device = "cpu",
                   attention_slicing: bool = False, cpu_offload: bool = False):
    """An SDXL pipeline without its text encoders (conditionings are given as embeddings).

    Args:
        source: SDXL pipeline folder or hub id (e.g. "stabilityai/stable-diffusion-xl-base-1.0").
        unet: replacement UNet (a fine-tuned generator): a UNet folder or a pipeline folder with unet/.
        vae: replacement VAE folder or hub id (e.g. an fp16-safe SDXL VAE).
        scheduler: one of SCHEDULERS ("euler" = Euler discrete, the paper's).
        dtype: "fp32" (CPU), "fp16" or "bf16".
        device: where it runs (ignored with cpu_offload).
        attention_slicing: trade speed for memory in attention.
        cpu_offload: keep idle components on the CPU (needs accelerate and a GPU).
    Returns:
        A `StableDiffusionXLPipeline` (text encoders and tokenizers set to None).
    Raises:
        ModelLoadError: missing folder or unreachable hub id, unknown scheduler.
    """
    if not cpu_offload:
        check_device(device)

    diffusers = require("diffusers", "generate")
    if scheduler not in SCHEDULERS:
        raise ModelLoadError(f"unknown scheduler {scheduler!r}; expected one of {', '.join(SCHEDULERS)}")
    torch_dtype = resolve_dtype(dtype)
    parts = {}
    try:
        if unet is not None:
            parts["unet"] = load_component(diffusers.UNet2DConditionModel, unet, "unet", torch_dtype)
    except (OSError, ValueError) as exc:
        raise model_load_error("generator UNet", unet, exc) from exc
    try:
        if vae is not None:
            parts["vae"] = load_component(diffusers.AutoencoderKL, vae, "vae", torch_dtype)
    except (OSError, ValueError) as exc:
        raise model_load_error("VAE", vae, exc) from exc
    try:
        with quiet_dtype_warning(), quiet_loading_bars():
            pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(
                str(source), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
                torch_dtype=torch_dtype, add_watermarker=False, **parts,
            )
    except (OSError, ValueError) as exc:
        raise model_load_error("generator", source, exc) from exc
    pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config)
    if attention_slicing:
        pipe.enable_attention_slicing()
    if cpu_offload:
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------
# Rendering


def render(pipe, cond: Conditioning, seeds: Sequence[int], config: GenerationConfig) -> list:
    """One pipeline call: N images from N conditionings, image i from its own seed.

    Each image has its own CPU `torch.Generator`, so an image depends on its seed only, not on the
    batch it was rendered in. Negative embeddings are all zeros (the paper's).

    Returns:
        N PIL images.
    """
    device, dtype = pipe._execution_device, pipe.unet.dtype
    prompt = cond.prompt_embeds.to(device, dtype)
    pooled = cond.pooled_prompt_embeds.to(device, dtype)
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    out = pipe(
        prompt_embeds=prompt, pooled_prompt_embeds=pooled,
        negative_prompt_embeds=torch.zeros_like(prompt), negative_pooled_prompt_embeds=torch.zeros_like(pooled),
        num_inference_steps=config.steps, guidance_scale=config.guidance,
        height=config.height, width=config.width, generator=generators, output_type="pil",
    )
    return list(out.images)


def render_with_retries(pipe, cond: Conditioning, seeds: Sequence[int], config: GenerationConfig
                        ) -> list[tuple[object | None, list[int]]]:
    """Render, then re-render every dark image with seed+1, seed+2, ... (at most `max_retries`).

    Returns:
        Per row: (the accepted image or None if every attempt was dark, the seeds tried in order).
    """
    results: list[tuple[object | None, list[int]]] = [(None, []) for _ in seeds]
    pending = list(range(len(seeds)))
    for attempt in range(config.max_retries + 1):
        if not pending:
            break
        attempt_seeds = [int(seeds[i]) + attempt for i in pending]
        images = render(pipe, cond[pending], attempt_seeds, config)
        still_dark = []
        for row, seed, image in zip(pending, attempt_seeds, images):
            results[row][1].append(seed)
            if mean_brightness(image) <= config.dark_threshold:
                still_dark.append(row)
            else:
                results[row] = (image, results[row][1])
        pending = still_dark
    return results


def save_image_atomic(image, path: str | Path) -> None:
    """Write a PNG through a temp file + rename (never a half-written file under `path`)."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


# ---------------------------------------------------------------------------------------------
# The resumable job


@dataclass
class GenerationReport:
    """What one (shard of a) generation run did; written as the manifest.

    Attributes:
        generated: query ids rendered in this run.
        skipped: query ids whose image already existed (resume).
        retried: query id -> seeds tried, for every query that needed more than one attempt.
        failed: query id -> reason (dark after all retries, unreadable reference image, ...).
        config: the generation options.
        shard: "i/n" of this process.
    """

    generated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    retried: dict[str, list[int]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    shard: str = "0/1"

    def to_json(self) -> dict:
        """The manifest content (with counts first for humans)."""
        counts = {k: len(getattr(self, k)) for k in ("generated", "skipped", "retried", "failed")}
        return {"counts": counts, **asdict(self)}

    @classmethod
    def merge(cls, reports: Sequence[GenerationReport]) -> GenerationReport:
        """One report from the shards' reports."""
        merged = cls(config=reports[0].config if reports else {}, shard=f"merged {len(reports)}")
        for r in reports:
            merged.generated += r.generated
            merged.skipped += r.skipped
            merged.retried.update(r.retried)
            merged.failed.update(r.failed)
        return merged


def _previous_retries(out_dir: Path) -> dict[str, list[int]]:
    """Retries recorded by an earlier run (kept for the images it finished)."""
    import json

    path = out_dir / MANIFEST
    try:
        return dict(json.loads(path.read_text()).get("retried", {}))
    except (OSError, ValueError, AttributeError):
        return {}


def _conditionings_for(batch, conditioner: ComposedConditioner | None, conditioning_dir: Path | None,
                       report: GenerationReport) -> tuple[list, Conditioning | None]:
    """Saved or freshly computed conditionings of a batch of (split, query); failures go to the report."""
    ready: dict[str, Conditioning] = {}
    to_compute = []
    for split, query in batch:
        if conditioning_dir is not None and conditioning_path(conditioning_dir, query.query_id).is_file():
            ready[query.query_id] = load_conditioning(conditioning_dir, query.query_id)
        else:
            to_compute.append((split, query))
    if to_compute:
        if conditioner is None:
            missing = conditioning_path(conditioning_dir, to_compute[0][1].query_id)
            raise DataError(f"{missing}: no saved conditioning and no backbone/Phi given to compute it")
        images, rows = [], []
        for split, query in to_compute:
            try:
                images.append(load_image(split.images[query.reference]))
                rows.append(query)
            except (DataError, KeyError) as exc:
                report.failed[query.query_id] = f"reference image: {exc}"
        if rows:
            cond = conditioner.for_queries(images, [q.captions for q in rows])
            for i, query in enumerate(rows):
                ready[query.query_id] = cond[i]
                if conditioning_dir is not None:
                    save_conditioning(conditioning_dir, query.query_id, cond[i])
    kept = [(s, q) for s, q in batch if q.query_id in ready]
    if not kept:
        return [], None
    return kept, Conditioning.cat([ready[q.query_id] for _, q in kept])


def _check_width(cond: Conditioning, unet_config) -> None:
    """Saved conditionings carry no tower sizes; at least their width must be the UNet's cross-attention size."""
    cross = unet_config.cross_attention_dim
    cross = int(cross[0] if isinstance(cross, (list, tuple)) else cross)
    if cond.prompt_embeds.shape[-1] != cross:
        raise ModelLoadError(f"conditionings have {cond.prompt_embeds.shape[-1]} features per token but the generator "
                             f"UNet's cross-attention size is {cross}; they were made for another generator")


def generate_pseudo_targets(pipe, splits: Sequence, out_dir: str | Path, config: GenerationConfig | None = None,
                            conditioner: ComposedConditioner | None = None, conditioning_dir: str | Path | None = None,
                            shard: tuple[int, int] = (0, 1), limit: int | None = None,
                            progress: bool = True) -> GenerationReport:
    """Generate one pseudo-target image per query of `splits` into `out_dir` (resumable).

    Args:
        pipe: from `load_generator`.
        splits: `CIRSplit`s (FashionIQ: one per category; query ids carry the category).
        out_dir: where `{query_stem}.png` and the manifest go.
        config: generation options.
        conditioner: computes conditionings from reference images (needed unless all are saved).
        conditioning_dir: read saved conditionings from here, and save computed ones here.
        shard: (i, n): this process takes queries[i::n] of the full ordered list.
        limit: only the first `limit` queries (before sharding), for quick runs.
        progress: show a tqdm bar.
    Returns:
        The report of this shard (the caller writes the manifest; see `write_manifest`).
    """
    from tqdm.auto import tqdm

    config = config or GenerationConfig()
    if conditioner is not None:
        conditioner.check_unet(pipe.unet.config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for folder in (out_dir, conditioning_dir):  # half-written PNGs / conditionings of a killed run
        if folder is not None:
            remove_stale_temps(folder)
    cdir = Path(conditioning_dir) if conditioning_dir is not None else None
    index, count = shard
    items = [(s, q) for s in splits for q in s.queries][:limit][index::count]
    report = GenerationReport(config=asdict(config), shard=f"{index}/{count}")
    earlier = _previous_retries(out_dir)
    pending = []
    for split, query in items:
        if image_path(out_dir, query.query_id).is_file():
            report.skipped.append(query.query_id)
            if query.query_id in earlier:
                report.retried[query.query_id] = earlier[query.query_id]
        else:
            pending.append((split, query))
    bar = tqdm(total=len(pending), desc="generate", unit="img", disable=None if progress else True)
    for start in range(0, len(pending), config.batch_size):
        batch, cond = _conditionings_for(pending[start : start + config.batch_size], conditioner, cdir, report)
        if batch:
            _check_width(cond, pipe.unet.config)
            seeds = [query_seed(config.seed, q.query_id, config.seed_policy) for _, q in batch]
            for (_, query), (image, tried) in zip(batch, render_with_retries(pipe, cond, seeds, config)):
                if len(tried) > 1:
                    report.retried[query.query_id] = tried
                if image is None:
                    report.failed[query.query_id] = (
                        f"mean pixel value ≤ {config.dark_threshold} for seeds {tried[0]}..{tried[-1]}")
                else:
                    save_image_atomic(image, image_path(out_dir, query.query_id))
                    report.generated.append(query.query_id)
        bar.update(len(pending[start : start + config.batch_size]))
    bar.close()
    return report


def write_manifest(out_dir: str | Path, report: GenerationReport, name: str = MANIFEST) -> Path:
    """Write a report as JSON (atomically) under `out_dir`."""
    path = Path(out_dir) / name
    write_json_atomic(path, report.to_json())
    return path
