"""Demo stages 2+: the trained methods on the world (LinCIR Phi, RTD text tower, SEARLE OTI and Phi).

Each trained artefact lives in its own folder under `<cache>/world/` with a completion marker
holding the settings it was trained with; a rerun with the same settings reuses it, a killed run
resumes from its last checkpoint (the shared training loop keeps them).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from zscir.data.records import load_benchmark
from zscir.data.synthetic.concepts import world_concepts, world_phrases
from zscir.demo.world_models import finish_stage, stage_done
from zscir.models.backbone import fingerprint_module
from zscir.models.phi import load_inversion_network
from zscir.models.text_tower import load_text_tower, save_text_tower
from zscir.oti.concepts import ConceptBank
from zscir.oti.optimise import OTIConfig
from zscir.oti.store import ChunkClaims, oti_reference_tokens, oti_tokens_for, settings_dir
from zscir.training.config import LinCIRConfig, RTDConfig
from zscir.training.phi import read_captions, train_lincir
from zscir.training.rtd import read_triplets, train_rtd
from zscir.training.searle import SearleConfig, distill_phi


@dataclass
class MethodBudget:
    """Training sizes of the demo's methods (CPU minutes, not the papers' GPU recipes).

    Each is the smallest budget of its curve within 0.5 point of the largest measured one on every metric
    (CIRR R@1 / R@10, FashionIQ R@10, CIRCO mAP@10), measured on development seed 9, never on a reported
    seed (`benchmarks/measure_budget_curves.py`, BENCHMARKS.md): LinCIR 250 of 50-300 steps; SEARLE's
    distillation 300 images x 300 steps of {300, 600} x 100-400; OTI 120 of 40-120 steps (FashionIQ still
    rose by 1.3 from 100 to 120, so the OTI budget was not cut).
    """

    lincir_steps: int = 250
    lincir_batch: int = 256
    rtd_steps: int = 150
    rtd_batch: int = 64
    oti_steps: int = 120
    searle_images: int = 300
    searle_steps: int = 300
    searle_batch: int = 256

    @classmethod
    def fast(cls) -> "MethodBudget":
        """Seconds-long runs for smoke tests."""
        return cls(lincir_steps=10, lincir_batch=32, rtd_steps=5, rtd_batch=8, oti_steps=5, searle_images=32,
                   searle_steps=5, searle_batch=16)


def _run_dir(world_dir: Path, name: str, settings: dict) -> Path:
    """A training run folder; reused (resume) only when it was started with the same settings."""
    run = world_dir / "runs" / name
    marker = run / "demo_settings.json"
    import json

    wanted = json.loads(json.dumps(settings, sort_keys=True))
    if run.exists() and (not marker.is_file() or json.loads(marker.read_text()) != wanted):
        shutil.rmtree(run)
    run.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(settings, sort_keys=True))
    return run


def _train_config(cls, run: Path, steps: int, batch: int, progress: bool, **extra):
    return cls(output_dir=str(run), max_steps=steps, batch_size=batch, checkpoint_every=max(50, steps // 4),
               validate_every=0, resume=True, cpu=True, report_to="none", progress=progress, **extra)


def lincir_phi(world_dir: Path, backbone, budget: MethodBudget, progress: bool = True):
    """Train (or reuse) a LinCIR Phi on the world's caption corpus (METHODS §2), saved at `world/phi`."""
    folder = world_dir / "phi"
    settings = {"clip": backbone.text_fingerprint(), "steps": budget.lincir_steps, "batch": budget.lincir_batch}
    if stage_done(folder, settings):
        return load_inversion_network(folder)
    start = time.time()
    captions, _ = read_captions(world_dir / "data" / "corpora" / "lincir_captions.txt")
    run = _run_dir(world_dir, "lincir", settings)
    config = _train_config(LinCIRConfig, run, budget.lincir_steps, budget.lincir_batch, progress)
    phi = train_lincir(backbone, captions, config)
    tmp = world_dir / ".phi.tmp"
    phi.save_pretrained(tmp)
    finish_stage(tmp, folder, settings, {"seconds": round(time.time() - start, 1), "captions": len(captions)})
    return phi


def rtd_text_tower(world_dir: Path, backbone, phi, budget: MethodBudget, progress: bool = True):
    """Fine-tune (or reuse) the text tower with RTD on the world's text triplets (METHODS §4)."""
    folder = world_dir / "rtd-text-encoder"
    settings = {"clip": backbone.text_fingerprint(), "phi": fingerprint_module(phi), "steps": budget.rtd_steps,
                "batch": budget.rtd_batch}
    if stage_done(folder, settings):
        return load_text_tower(folder, like=backbone.text).eval()
    start = time.time()
    triplets, _ = read_triplets(world_dir / "data" / "corpora" / "rtd_triplets.jsonl")
    run = _run_dir(world_dir, "rtd", settings)
    config = _train_config(RTDConfig, run, budget.rtd_steps, budget.rtd_batch, progress)
    tower = train_rtd(backbone, phi, triplets, config)
    tmp = world_dir / ".rtd-text-encoder.tmp"
    save_text_tower(tower, tmp)
    finish_stage(tmp, folder, settings, {"seconds": round(time.time() - start, 1), "triplets": len(triplets)})
    return tower


def world_concept_bank(backbone):
    """SEARLE's concepts and phrases, taken from the world's grammar (offline)."""
    concepts = world_concepts()
    return ConceptBank.build(backbone, concepts, world_phrases(concepts))


def oti_config(budget: MethodBudget):
    """SEARLE's OTI recipe with the demo's step budget (the paper uses 350 steps). Up to 256 images per batch
    (1.1-1.2x over 64, the same tokens, BENCHMARKS.md); the references go in chunks of REFERENCE_CHUNK."""
    return OTIConfig(steps=budget.oti_steps, batch_size=256)


def _searle_settings(backbone, budget: MethodBudget) -> dict:
    return {"clip": backbone.text_fingerprint(), "oti": asdict(oti_config(budget)),
            "images": budget.searle_images, "steps": budget.searle_steps, "batch": budget.searle_batch}


def searle_phi_done(world_dir: Path, backbone, budget: MethodBudget) -> bool:
    """True when `searle_phi` would reuse a Phi distilled with these settings (nothing to train)."""
    return stage_done(world_dir / "searle-phi", _searle_settings(backbone, budget))


def searle_phi(world_dir: Path, backbone, cache, bank, budget: MethodBudget, progress: bool = True):
    """SEARLE's Phi distilled here: OTI on world training images, then distillation (METHODS §3)."""
    folder = world_dir / "searle-phi"
    settings = _searle_settings(backbone, budget)
    if stage_done(folder, settings):
        return load_inversion_network(folder)
    start = time.time()
    train_split = load_benchmark("cirr", world_dir / "data" / "cirr", "train")[0]
    names = train_split.gallery[: budget.searle_images]
    features = cache.image_features(backbone, {n: train_split.images[n] for n in names})
    store = _oti_folder(world_dir / "runs" / "searle-oti", backbone, bank, budget)
    tokens = oti_tokens_for(backbone, names, features, bank, oti_config(budget), store, None, progress=progress)
    run = _run_dir(world_dir, "searle", settings)
    config = _train_config(SearleConfig, run, budget.searle_steps, budget.searle_batch, progress, epochs=None)
    phi = distill_phi(backbone, features.lookup(names), tokens, bank, config)
    tmp = world_dir / ".searle-phi.tmp"
    phi.save_pretrained(tmp)
    finish_stage(tmp, folder, settings, {"seconds": round(time.time() - start, 1), "images": len(names)})
    return phi


# References per token-store chunk: the unit the demo's two processes share (`ChunkClaims`), ~13 s of OTI.
REFERENCE_CHUNK = 64


def searle_oti_tokens(world_dir: Path, evaluator, bank, budget: MethodBudget, progress: bool = True,
                      claims: ChunkClaims | None = None) -> torch.Tensor | None:
    """SEARLE-OTI: invert each query's reference image directly (resumable token store under world/runs).

    With `claims`, only the chunks this process claims first are inverted and None is returned."""
    root = world_dir / "runs" / "oti-references" / evaluator.full_split.name.replace("/", "-")
    folder = _oti_folder(root, evaluator.backbone, bank, budget, evaluator.pad_to_ratio)
    return oti_reference_tokens(evaluator, bank, oti_config(budget), folder, progress, REFERENCE_CHUNK, claims)


def _oti_folder(root: Path, backbone, bank, budget: MethodBudget, pad_to_ratio: float | None = None) -> Path:
    """The demo's OTI token folder under `root` for these settings; folders of other settings (an older
    world CLIP or budget) are the demo's own leftovers and are removed, so a rerun never refuses."""
    folder = settings_dir(root, backbone, bank, oti_config(budget), pad_to_ratio)
    if root.is_dir():
        for stale in root.iterdir():
            if stale != folder:
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    return folder
