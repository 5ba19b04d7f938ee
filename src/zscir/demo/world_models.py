"""Demo stage 1: the synthetic world on disk, its tokenizer and the tiny CLIP trained on it.

Everything lands under `<cache>/world/`: `data/` (benchmarks in the real layouts, corpora) and
`synthetic-clip/` (the registered backbone `synthetic-clip`). A stage whose output folder holds
its completion marker is reused; otherwise it is (re)built into a temp folder and renamed.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from zscir.models.factory import ClipSize
from zscir.training.clip import ClipTrainConfig

DONE = "zscir_done.json"


def stage_done(folder: Path, settings: dict) -> bool:
    """True if `folder` was completed with exactly these settings."""
    marker = folder / DONE
    # Compare as JSON sees them (tuples become lists on disk).
    wanted = json.loads(json.dumps(settings, default=str))
    return marker.is_file() and json.loads(marker.read_text()).get("settings") == wanted


def finish_stage(tmp: Path, folder: Path, settings: dict, report: dict) -> None:
    """Write the completion marker into `tmp` and move it onto `folder` (replacing an old one)."""
    (tmp / DONE).write_text(json.dumps({"settings": settings, "report": report}, indent=2, default=str))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def stage_report(folder: Path) -> dict:
    """The report a completed stage recorded."""
    return json.loads((folder / DONE).read_text())["report"]


def build_world_data(world_dir: Path, seed: int = 0, sizes: dict | None = None) -> dict:
    """Write (or reuse) the synthetic world's datasets and corpora under `world_dir/data`."""
    from zscir.data.synthetic.world import build_world

    return build_world(world_dir / "data", seed=seed, sizes=sizes)


def build_synthetic_clip(world_dir: Path, config: ClipTrainConfig | None = None, progress: bool = True) -> Path:
    """Train (or reuse) the tiny CLIP of the world: tokenizer on the world's texts, then contrastive training.

    Returns:
        The backbone folder `world_dir/synthetic-clip`, loadable with `Backbone.load`.
    """
    from zscir.data.synthetic.corpora import clip_pair_sampler, world_texts
    from zscir.models.tokenizer import train_clip_tokenizer
    from zscir.training.clip import train_clip

    config = config or ClipTrainConfig()
    folder = world_dir / "synthetic-clip"
    settings = {"clip": asdict(config), "tokenizer_vocab": 1200}
    if stage_done(folder, settings):
        return folder
    tmp = world_dir / ".synthetic-clip.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    start = time.time()
    tokenizer = train_clip_tokenizer(world_texts(), vocab_size=1200, model_max_length=config.size.context_length)
    sampler = clip_pair_sampler(image_size=config.size.image_size)
    train_clip(sampler, tokenizer, tmp, config, progress=progress)
    heldout = evaluate_clip_heldout(tmp, world_dir / "data" / "corpora" / "clip_heldout")
    finish_stage(tmp, folder, settings, {"seconds": round(time.time() - start, 1), "heldout": heldout})
    return folder


def evaluate_clip_heldout(clip_dir: Path, heldout_dir: Path) -> dict:
    """Text→image and image→text recall of a CLIP on the world's held-out image–caption pairs.

    Returns:
        {"t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5", "n"} in percent (chance is 100/n for R@1).
    """
    from zscir.data.images import load_image
    from zscir.evaluation.metrics import recall_at_k, target_ranks
    from zscir.models.backbone import Backbone

    records = [json.loads(line) for line in (heldout_dir / "captions.jsonl").read_text().splitlines() if line]
    backbone = Backbone.load(str(clip_dir))
    images = backbone.encode_image([load_image(heldout_dir / r["image"]) for r in records], batch_size=256)
    texts = backbone.encode_text([r["caption"] for r in records])
    sims = torch.nn.functional.normalize(texts, dim=-1) @ torch.nn.functional.normalize(images, dim=-1).T
    diagonal = torch.arange(len(records))
    t2i, i2t = target_ranks(sims, diagonal), target_ranks(sims.T, diagonal)
    report = {f"{name}_R@{k}": round(recall_at_k(ranks, k), 2) for name, ranks in (("t2i", t2i), ("i2t", i2t))
              for k in (1, 5)}
    return {**report, "n": len(records)}


def default_clip_config(fast: bool = False) -> ClipTrainConfig:
    """The demo's CLIP recipe; `fast` is a short run for smoke tests."""
    if fast:
        return ClipTrainConfig(size=ClipSize(), steps=30, batch_size=64)
    return ClipTrainConfig()
