"""zscir evaluation vs a naive pipeline on a CIRR-val-sized set with a random ViT-B/32-size CLIP.

Data: `--scale` × (2,297 gallery images, 4,181 queries) of 64×64 noise PNGs in the CIRR layout
(references and targets drawn from the gallery, as in CIRR), written once to a work folder.
Model: a randomly initialised CLIP with ViT-B/32's shape (vision 768×12, patch 32, 224 px; text
512×12, 77 tokens; projection 512) and a random Phi; method `phi` (Phi → compose → cosine).

- naive: encodes the gallery, then every query's reference image again (separately, per query
  batch), finds gallery positions with `list.index`, caches nothing.
- zscir cold: `Evaluator.evaluate("phi")` with an empty feature cache (union of gallery and
  references encoded once, O(1) lookups, features and query matrix written to the cache).
- zscir warm: the same evaluation rerun (new Evaluator, same cache folder).
- zscir warm, new Phi: image features cached, queries recomputed (what a Phi/RTD sweep pays).

Both pipelines share the metric code and must produce the same scores (checked). Prints one line:

    bench_evaluate scale=0.05 gallery=115 queries=209 naive 60.1s zscir cold 25.0s (0.42x) warm ...

Usage: python benchmarks/bench_evaluate.py [--scale 0.05] [--workdir DIR] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from zscir.compose import PromptTemplate, compose_queries
from zscir.data.images import load_image
from zscir.data.records import load_benchmark
from zscir.evaluation.metrics import evaluate_split
from zscir.evaluation.runner import Evaluator
from zscir.models.backbone import Backbone
from zscir.models.factory import ClipSize, build_clip, save_clip_folder
from zscir.models.phi import Phi
from zscir.models.tokenizer import train_clip_tokenizer
from zscir.retrieval.features import FeatureCache

CIRR_VAL = (2297, 4181)
VIT_B32 = ClipSize(projection_dim=512, text_hidden=512, text_layers=12, text_heads=8, context_length=77,
                   vision_hidden=768, vision_layers=12, vision_heads=12, image_size=224, patch_size=32)
WORDS = ("red blue green small large dog cat car tree sky grass water two three remove add change make "
         "the a of with and on in behind instead bigger darker brighter person people table").split()


def make_data(root: Path, scale: float, seed: int = 0) -> None:
    """CIRR-layout val split with noise images (written once; reused when present)."""
    marker = root / "done.json"
    n_gallery, n_queries = max(51, round(CIRR_VAL[0] * scale)), max(1, round(CIRR_VAL[1] * scale))
    if marker.is_file() and json.loads(marker.read_text()) == [n_gallery, n_queries]:
        return
    rng, pyrng = np.random.default_rng(seed), random.Random(seed)
    names = [f"dev-{i}-img0" for i in range(n_gallery)]
    (root / "dev").mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "dev" / f"{name}.png")
    records = []
    for q in range(n_queries):
        members = pyrng.sample(names, 6)
        records.append({"pairid": q, "reference": members[0], "target_hard": members[1],
                        "caption": " ".join(pyrng.choices(WORDS, k=pyrng.randint(4, 14))),
                        "img_set": {"id": q, "members": members}})
    (root / "captions").mkdir(exist_ok=True)
    (root / "image_splits").mkdir(exist_ok=True)
    (root / "captions" / "cap.rc2.val.json").write_text(json.dumps(records))
    (root / "image_splits" / "split.rc2.val.json").write_text(json.dumps({n: f"./dev/{n}.png" for n in names}))
    marker.write_text(json.dumps([n_gallery, n_queries]))


def make_model(root: Path) -> Path:
    folder = root / "clip-b32-random"
    if not (folder / "config.json").is_file():
        tokenizer = train_clip_tokenizer([" ".join(WORDS)] * 8, vocab_size=1000, model_max_length=77)
        save_clip_folder(build_clip(tokenizer, VIT_B32, seed=0), tokenizer, folder, VIT_B32)
    return folder


def naive(backbone, split, phi, batch_size: int):
    """The research-repo pattern: references encoded apart from the gallery, list.index, no cache."""
    gallery_names = list(split.gallery)
    feats = []
    for start in range(0, len(gallery_names), batch_size):
        batch = [load_image(split.images[n]) for n in gallery_names[start : start + batch_size]]
        feats.append(backbone.encode_image(batch))
    gallery = F.normalize(torch.cat(feats), dim=-1)
    queries = []
    for start in range(0, len(split.queries), batch_size):
        batch = split.queries[start : start + batch_size]
        refs = backbone.encode_image([load_image(split.images[q.reference]) for q in batch])
        with torch.no_grad():
            tokens = phi(refs)
        queries.append(compose_queries(backbone, tokens, [q.captions for q in batch], PromptTemplate()))
    scores = torch.cat(queries) @ gallery.T
    # positions by list.index (what evaluate_split's metrics need is recomputed there as well)
    _ = [(gallery_names.index(q.reference), gallery_names.index(q.targets[0])) for q in split.queries]
    return evaluate_split(split, scores), scores


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05, help="fraction of CIRR val (1.0 = 2297/4181)")
    parser.add_argument("--workdir", default=None, help="where images and the model are kept (default: a temp dir)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_evaluate_"))
    make_data(work / "cirr", args.scale)
    backbone = Backbone.load(str(make_model(work)))
    split = load_benchmark("cirr", work / "cirr", "val")[0]
    torch.manual_seed(0)
    phi, phi2 = Phi(512, 512).eval(), Phi(512, 512).eval()
    cache_dir = work / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)

    t_naive, (naive_metrics, naive_scores) = timed(lambda: naive(backbone, split, phi, args.batch_size))

    def zscir(p):
        ev = Evaluator(backbone, split, FeatureCache(cache_dir, progress=False), batch_size=args.batch_size)
        return ev.evaluate("phi", phi=p)

    t_cold, cold = timed(lambda: zscir(phi))
    t_warm, warm = timed(lambda: zscir(phi))
    t_new_phi, _ = timed(lambda: zscir(phi2))
    torch.testing.assert_close(cold.scores, naive_scores, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(warm.scores, naive_scores, rtol=1e-4, atol=1e-4)
    assert cold.metrics == naive_metrics or all(abs(cold.metrics[k] - v) < 1e-6 for k, v in naive_metrics.items())
    print(f"bench_evaluate scale={args.scale:g} gallery={len(split.gallery)} queries={len(split.queries)} "
          f"naive {t_naive:.1f}s zscir cold {t_cold:.1f}s ({t_cold / t_naive:.2f}x) warm {t_warm:.2f}s "
          f"({t_warm / t_naive:.3f}x) warm-new-phi {t_new_phi:.1f}s ({t_new_phi / t_naive:.2f}x) "
          f"threads={torch.get_num_threads()}")


if __name__ == "__main__":
    main()
