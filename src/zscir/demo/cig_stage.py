"""Demo stage: CIG (METHODS.md §5) on the synthetic world — a trained generator, pseudo targets, fusion.

What `run_cig_stage` does, each step cached under `out_dir` and reused when its settings match:

1. **Selection split** (for α): queries of every k-th image set of the world's CIRR *train* split, with
   the full train gallery. Every image of those sets is kept out of generator training, so the
   generator never saw the targets α is chosen on. α is never chosen on the reported splits.
2. **Base generator** (`demo.world_generator`): a tiny SDXL (AutoencoderKL ×2, UNet with text-time
   embeddings) pretrained on world scenes with their captions, the analogue of stock SDXL; shipped as
   package data and trained here only when the CLIP is not the shipped one. The base VAE's recon MSE on
   this seed's held-out selection-set images is reported next to a random VAE's. The generator works
   at 24×24 (latents 12×12×4): the world's 48×48 true targets downsampled to 24×24 give the tiny CLIP
   the same CIG fusion metrics as the originals (measured).
3. **UNet fine-tune** (`training/generator.py`): the base UNet trained further to reconstruct each
   train image from the composed conditioning of "a photo of $", $ = Phi(own image embedding), with
   the demo's backbone and Phi used as both SDXL towers (cross-attention 2H), as CIG's authors
   fine-tuned SDXL. The result is a complete `StableDiffusionXLPipeline` folder (`out_dir/generator`),
   loaded with `load_generator` like real SDXL.
4. **Pseudo targets** for the selection split and every reported split (`generate_pseudo_targets`,
   resumable: finished images are skipped; cleared when the generator changes).
5. **Fusion**: α sweep on the selection split → α (best CIRR "Avg", ties to the larger α); the
   reported splits get their metrics at that α, and their own sweep is returned too, openly.

The completion marker `zscir_done.json` (world_models' convention) is written last.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from zscir.compose import PromptTemplate
from zscir.data.images import load_image
from zscir.data.records import load_benchmark
from zscir.demo.world_generator import assemble_pipeline, base_fingerprint, read_recipe
from zscir.demo.world_models import DONE, finish_stage, stage_done, stage_report
from zscir.evaluation.fusion import alpha_sweep, evaluate_fused, pseudo_target_queries
from zscir.evaluation.runner import Evaluator
from zscir.generation.cig import GenerationConfig, generate_pseudo_targets, image_path, load_generator, write_manifest
from zscir.generation.conditioning import ComposedConditioner
from zscir.generation.tiny import build_tiny_vae
from zscir.models.backbone import fingerprint_module
from zscir.recipes import ALPHA_SWEEP
from zscir.training.config import GeneratorTrainConfig
from zscir.training.generator import train_generator
from zscir.training.vae import load_pixels, reconstruction_mse
from zscir.utils.io import write_json_atomic

ROW = "LinCIR + CIG"
SELECTION_METRIC = "Avg"  # CIRR's summary metric, (R@5 + Rs@1) / 2: steadier than R@1 on a few hundred queries


@dataclass(frozen=True)
class CIGStageSettings:
    """Every knob of the stage (all of them key the cache; the architecture and resolution are the base's).

    Attributes:
        unet_steps / unet_batch / unet_lr / uncond_prob: the UNet fine-tune on "a photo of $".
        gen_steps / guidance / gen_batch / dark_threshold: generation (world backgrounds can be near
            black, mean pixel ≈ 17, so the dark-image threshold is lower than the paper's 10).
        selection_every: every k-th CIRR train image set goes to the selection split.
        selection_queries: at most this many selection queries.
        train_images: at most this many fine-tune images (None = all remaining).
        alphas: the α values swept.
        seed: seeds the fine-tune and generation.
    """

    unet_steps: int = 150
    unet_batch: int = 32
    unet_lr: float = 1e-3
    uncond_prob: float = 0.1
    gen_steps: int = 10
    guidance: float = 3.0
    gen_batch: int = 50
    dark_threshold: float = 3.0
    selection_every: int = 2
    selection_queries: int = 200
    train_images: int | None = None
    alphas: tuple[float, ...] = ALPHA_SWEEP
    seed: int = 0


def default_settings(fast: bool = False) -> CIGStageSettings:
    """The demo's recipe; `fast` is a smoke-test run (seconds, meaningless numbers)."""
    if fast:
        return CIGStageSettings(unet_steps=10, unet_batch=8, gen_steps=2, gen_batch=16, selection_queries=8,
                                train_images=48, alphas=(0.5, 0.75, 1.0))
    return CIGStageSettings()


@contextmanager
def torch_threads(threads: int | None):
    """Run with `threads` intra-op threads (None = unchanged), restoring the old count afterwards."""
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _as_json(obj):
    """`obj` as it reads back from JSON (tuples → lists, float keys → strings)."""
    return json.loads(json.dumps(obj, default=str))


def _slug(split_name: str) -> str:
    return split_name.replace("/", "_")


# ---------------------------------------------------------------------------------------------
# The selection split and the generator's training images


def selection_split(cirr_root: Path, every: int, max_queries: int):
    """Queries of every `every`-th image set of CIRR train (full train gallery) and the images to hold out.

    Returns:
        (selection CIRSplit named "cirr/train-select", the train split, set of held-out image names:
        every member, reference and target of the selected queries' sets).
    """
    train = load_benchmark("cirr", cirr_root, "train")[0]
    groups = list(dict.fromkeys(q.group for q in train.queries))
    chosen = set(groups[::every])
    queries = [q for q in train.queries if q.group in chosen][:max_queries]
    held_out = {name for q in queries for name in (*q.group, q.reference, *q.targets)}
    # sets whose queries were cut by max_queries are not held out, but their images stay out of training too
    held_out |= {name for g in chosen for name in g}
    return replace(train, name="cirr/train-select", queries=queries), train, held_out


def generator_images(train, held_out: set[str], limit: int | None) -> list[Path]:
    """Training images of the generator: CIRR train images not held out (name order, first `limit`)."""
    names = [n for n in train.images if n not in held_out]
    return [train.images[n] for n in names[:limit]]


# ---------------------------------------------------------------------------------------------
# Sub-stages


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def base_vae_check(base_dir: Path, held_out: list[Path], resolution: int, seed: int) -> dict:
    """Sub-stage 2: the base VAE's recon MSE on this seed's held-out images, next to a random VAE's."""
    from diffusers import AutoencoderKL

    check = load_pixels(held_out, resolution)
    random_vae = build_tiny_vae(read_recipe(base_dir).size(), seed=seed)
    base = AutoencoderKL.from_pretrained(str(base_dir / "vae"))
    return {"recon_mse_random": round(reconstruction_mse(random_vae, check), 5),
            "recon_mse_trained": round(reconstruction_mse(base, check), 5), "heldout_images": len(held_out),
            "scaling_factor": round(float(base.config.scaling_factor), 5)}


def finetune_world_generator(out_dir: Path, s: CIGStageSettings, backbone, phi, base_dir: Path,
                             images: list[Path], progress: bool) -> tuple[Path, dict]:
    """Sub-stage 3: the base pipeline with its UNet fine-tuned on "a photo of $" (or reused).

    Returns:
        (pipeline folder with the fine-tuned UNet in `unet/`, report).
    """
    folder = out_dir / "generator"
    settings = {"key": _key(base_fingerprint(base_dir), s.unet_steps, s.unet_batch, s.unet_lr, s.uncond_prob, s.seed,
                            backbone.text_fingerprint(), backbone.vision_fingerprint(), fingerprint_module(phi),
                            [str(p) for p in images])}
    if stage_done(folder, settings):
        return folder, stage_report(folder)
    start = time.time()
    run = _fresh(out_dir / ".generator-run")
    tmp = assemble_pipeline(backbone, base_dir, out_dir / ".generator-tmp", seed=s.seed)
    plain = ComposedConditioner(backbone, phi, backbone, phi, PromptTemplate.named("plain"))
    config = GeneratorTrainConfig(output_dir=str(run / "train"), generator=str(tmp),
                                  resolution=read_recipe(base_dir).resolution, max_steps=s.unet_steps,
                                  batch_size=min(s.unet_batch, len(images)), lr=s.unet_lr, uncond_prob=s.uncond_prob,
                                  seed=s.seed, checkpoint_every=s.unet_steps, keep_checkpoints=1,
                                  encode_batch_size=64, cpu=True, report_to="none", progress=progress)
    result = train_generator(config, plain, images, unet_source=base_dir / "unet")
    shutil.rmtree(tmp / "unet")
    shutil.copytree(result.final_dir / "unet", tmp / "unet")
    report = {"base": str(base_dir), "steps": result.steps, "last_loss": round(result.last_loss, 5),
              "train_images": len(images), "seconds": round(time.time() - start, 1)}
    finish_stage(tmp, folder, settings, report)
    shutil.rmtree(run)
    return folder, report


def generate_world_targets(out_dir: Path, s: CIGStageSettings, generator_dir: Path, generator_key: str, backbone,
                           phi, splits: list, progress: bool, resolution: int) -> tuple[dict[str, Path], dict]:
    """Sub-stage 4: pseudo targets of every split into `out_dir/pseudo/<split>/` (resumable).

    Returns:
        ({split name: pseudo-target folder}, {split name: {"generated", "skipped", "failed", "retried"}}).
    """
    root = out_dir / "pseudo"
    owner = root / "generator.json"
    wanted = {"generator": generator_key, "gen": [s.gen_steps, s.guidance, s.dark_threshold, s.seed, resolution]}
    if root.exists() and (not owner.is_file() or json.loads(owner.read_text()) != wanted):
        shutil.rmtree(root)  # images of another generator or other options: never mix them
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(owner, wanted)
    pipe = load_generator(generator_dir)
    config = GenerationConfig(steps=s.gen_steps, guidance=s.guidance, height=resolution, width=resolution,
                              batch_size=s.gen_batch, seed=s.seed, dark_threshold=s.dark_threshold, max_retries=2)
    conditioner = ComposedConditioner(backbone, phi, backbone, phi)
    dirs, counts = {}, {}
    for split in splits:
        folder = root / _slug(split.name)
        report = generate_pseudo_targets(pipe, [split], folder, config, conditioner, progress=progress)
        write_manifest(folder, report)
        dirs[split.name] = folder
        counts[split.name] = {"generated": len(report.generated), "skipped": len(report.skipped),
                              "failed": len(report.failed), "retried": len(report.retried)}
    return dirs, counts


def choose_alpha(sweep: dict[float, dict[str, dict[str, float]]], split_name: str,
                 metric: str = SELECTION_METRIC) -> float:
    """The α with the best `metric` on `split_name`; ties go to the larger α (closer to plain Phi)."""
    return max(sweep, key=lambda a: (sweep[a][split_name][metric], a))


def example_grid(examples: list[dict], path: Path, scale: int = 3) -> Path:
    """A PNG with one row per example: reference | pseudo target | true target (nearest-neighbour upscaled)."""
    from PIL import Image

    side = 48
    grid = Image.new("RGB", (3 * side + 8, len(examples) * (side + 4)), (255, 255, 255))
    for row, ex in enumerate(examples):
        for col, key in enumerate(("reference", "pseudo", "target")):
            if ex.get(key):
                image = load_image(ex[key]).convert("RGB").resize((side, side))
                grid.paste(image, (col * (side + 4), row * (side + 4)))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    grid.save(path)
    return path


# ---------------------------------------------------------------------------------------------
# The stage


def pseudo_target_similarity(evaluator, pseudo_dir: Path, backbone, seed: int = 0) -> dict[str, float]:
    """Does a generated pseudo target carry signal? CLIP cosine to its true target vs to a random gallery image.

    Returns:
        {"to_target": mean cosine(pseudo, true target), "to_random": mean cosine(pseudo, a random gallery
        image), "closer_to_target": percent of queries whose pseudo target is closer to the true target
        than to that random image, "to_reference": mean cosine(pseudo, reference), "n"}.
    """
    import torch.nn.functional as F

    split = evaluator.split
    queries = [q for q in split.queries if q.targets and image_path(pseudo_dir, q.query_id).is_file()]
    if not queries:
        return {"n": 0}
    pseudo = F.normalize(backbone.encode_image([load_image(image_path(pseudo_dir, q.query_id)) for q in queries]),
                         dim=-1)
    features = evaluator.features()
    target = F.normalize(features.lookup([q.targets[0] for q in queries]), dim=-1)
    reference = F.normalize(features.lookup([q.reference for q in queries]), dim=-1)
    generator = torch.Generator().manual_seed(seed)
    random_names = [split.gallery[int(i)] for i in torch.randint(len(split.gallery), (len(queries),),
                                                                 generator=generator)]
    random = F.normalize(features.lookup(random_names), dim=-1)
    to_target, to_random = (pseudo * target).sum(-1), (pseudo * random).sum(-1)
    return {"to_target": round(to_target.mean().item(), 3), "to_random": round(to_random.mean().item(), 3),
            "to_reference": round((pseudo * reference).sum(-1).mean().item(), 3),
            "closer_to_target": round(100 * (to_target > to_random).float().mean().item(), 1), "n": len(queries)}


def run_cig_stage(world_dir: Path, backbone, phi: torch.nn.Module, splits: list, cache, out_dir: Path,
                  base_dir: Path, fast: bool = False, progress: bool = True, settings: CIGStageSettings | None = None,
                  threads: int | None = 1, examples: int = 8) -> dict:
    """CIG on the synthetic world: fine-tune (or reuse) the base generator, generate pseudo targets, fuse, evaluate.

    Args:
        world_dir: the demo's world folder (holding `data/cirr`).
        backbone: the world's CLIP `Backbone` (retrieval AND both generator text towers).
        phi: the LinCIR Phi of that backbone (reference and pseudo-target queries, conditioning).
        splits: the reported splits (with targets), e.g. `load_benchmark("cirr", root, "val")`.
        cache: the demo's `FeatureCache`.
        out_dir: the stage folder (sub-stages and `zscir_done.json`).
        base_dir: the base generator (`world_generator.world_generator_base`), trained with this backbone's text tower.
        fast: a smoke-test recipe (`default_settings(True)`), ignored when `settings` is given.
        progress: tqdm bars.
        settings: the recipe (default `default_settings(fast)`).
        threads: torch intra-op threads during the stage, restored afterwards (None = unchanged). 1 by default:
            on a shared 2-core machine 2 threads made a VAE step ~20× slower than 1 (OpenMP contention).
        examples: how many example rows (first reported split) to return and draw in `examples.png`.
    Returns:
        {"alpha", "alpha_selected_on", "selection_metric", "sweep": {"selection": {α: {split: metrics}},
        "reported": {α: {split: metrics}}}, "rows": {"LinCIR + CIG": {split name: metrics}},
        "pseudo_dir": {split name: folder}, "examples": [{"query_id", "caption", "reference", "pseudo",
        "target"}], "grid": PNG path, "vae": {...}, "generator": {...}, "generation": {...},
        "missing": {split: count}, "timings": {...}, "seconds", "reused"}.
    """
    start = time.time()
    s = settings or default_settings(fast)
    out_dir, world_dir = Path(out_dir), Path(world_dir)
    marker_settings = {"stage": asdict(s), "text": backbone.text_fingerprint(),
                       "vision": backbone.vision_fingerprint(), "phi": fingerprint_module(phi),
                       "base": base_fingerprint(base_dir),
                       "world": str(world_dir.resolve()),
                       "splits": [[sp.name, len(sp.queries)] for sp in splits], "examples": examples}
    marker_settings = _as_json(marker_settings)
    if stage_done(out_dir, marker_settings):
        return {**stage_report(out_dir), "reused": True}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DONE).unlink(missing_ok=True)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.time() - since, 1)
        return time.time()

    with torch_threads(threads):
        t = time.time()
        selection, train, held = selection_split(world_dir / "data" / "cirr", s.selection_every, s.selection_queries)
        images = generator_images(train, held, s.train_images)
        check = [train.images[n] for n in sorted(held)][:200]
        resolution = read_recipe(base_dir).resolution
        vae_report = base_vae_check(base_dir, check, resolution, s.seed)
        t = lap("vae", t)
        gen_dir, gen_report = finetune_world_generator(out_dir, s, backbone, phi, base_dir, images, progress)
        t = lap("unet", t)
        gen_key = json.loads((gen_dir / DONE).read_text())["settings"]["key"]
        dirs, counts = generate_world_targets(out_dir, s, gen_dir, gen_key, backbone, phi, [selection, *splits],
                                              progress, resolution)
        t = lap("generate", t)
        evaluators = {sp.name: Evaluator(backbone, sp, cache) for sp in [selection, *splits]}
        queries = {name: pseudo_target_queries(ev, phi, dirs[name]) for name, ev in evaluators.items()}
        select_sweep = alpha_sweep([evaluators[selection.name]], [queries[selection.name]], s.alphas)
        alpha = choose_alpha(select_sweep, selection.name)
        reported = [sp.name for sp in splits]
        report_sweep = alpha_sweep([evaluators[n] for n in reported], [queries[n] for n in reported], s.alphas)
        rows = {n: evaluate_fused(evaluators[n], queries[n], alpha).metrics for n in reported}
        similarity = {n: pseudo_target_similarity(evaluators[n], dirs[n], backbone) for n in reported}
        lap("evaluate", t)

    shown = []
    if splits:
        first = splits[0]
        for q in first.queries[:examples]:
            pseudo = image_path(dirs[first.name], q.query_id)
            shown.append({"query_id": q.query_id, "caption": " / ".join(q.captions),
                          "reference": str(first.images[q.reference]),
                          "pseudo": str(pseudo) if pseudo.is_file() else None,
                          "target": str(first.images[q.targets[0]]) if q.targets else None})
    grid = example_grid(shown, out_dir / "examples.png") if shown else None
    result = {
        "alpha": alpha, "alpha_selected_on": selection.name, "selection_metric": SELECTION_METRIC,
        "sweep": {"selection": select_sweep, "reported": report_sweep}, "rows": {ROW: rows},
        "pseudo_dir": {n: str(d) for n, d in dirs.items()}, "examples": shown,
        "grid": str(grid) if grid else None, "vae": vae_report, "generator": gen_report, "generation": counts,
        "missing": {n: len(q.missing) for n, q in queries.items()}, "timings": timings,
        "pseudo_target_similarity": similarity,
        "seconds": round(time.time() - start, 1), "reused": False,
    }
    result = _as_json(result)  # the same types whether fresh or reused (α keys become strings)
    write_json_atomic(out_dir / DONE, {"settings": marker_settings, "report": result})  # last: marks completion
    return result
