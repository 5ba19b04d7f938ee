"""What the official evaluations' fp16 weight rounding changes: fp32 vs `--precision fp16` on the world.

The official LinCIR / SEARLE evaluations load the CLIP towers in fp16 and call `.float()`: the weights are
rounded to fp16, the computation runs in fp32 (`Backbone.round_weights`). This script evaluates the world's
Phis (LinCIR, and SEARLE's when the demo distilled one) on the world's val splits both ways (same Phi, same
images) and prints, per split: how many queries' best target moved in the ranking, how many crossed a
recall cut-off, how many top-1 images changed, how far the query vectors and scores moved, and every
metric that moved.

Run after `zscir demo` (or `zscir demo --fast`, then pass `fast`):
    ZSCIR_CACHE=$PWD/.zscir-cache OMP_NUM_THREADS=1 python benchmarks/measure_fp16_rounding.py [full|fast]
"""

from __future__ import annotations

import sys
import tempfile

import torch


def target_ranks(result) -> torch.Tensor:
    """[Q] 0-based rank of each query's best-ranked target (the reference excluded on CIRR, as the metric does)."""
    split, scores = result.split, result.scores
    index = {name: i for i, name in enumerate(split.gallery)}
    ranks = []
    for row, q in enumerate(split.queries):
        s = scores[row].clone()
        if split.dataset == "cirr" and q.reference in index:
            s[index[q.reference]] = float("-inf")
        order = torch.argsort(s, descending=True, stable=True)
        position = {int(g): r for r, g in enumerate(order)}
        ranks.append(min(position[index[t]] for t in q.targets if t in index))
    return torch.tensor(ranks)


def main(which: str = "full") -> None:
    from zscir.data.records import load_benchmark
    from zscir.demo.world_index import FAST_WORLD, FULL_WORLD, world_backbone, world_dir
    from zscir.evaluation.runner import Evaluator
    from zscir.models.backbone import Backbone
    from zscir.models.phi import load_inversion_network
    from zscir.retrieval.features import FeatureCache

    world = world_dir(FAST_WORLD if which == "fast" else FULL_WORLD)
    clip = world_backbone(world)
    backbones = {"fp32": Backbone.load(str(clip)), "fp16": Backbone.load(str(clip)).round_weights("fp16")}
    total = sum(p.numel() for p in backbones["fp32"].text.parameters())
    changed = sum(int((a != b).sum()) for a, b in zip(backbones["fp32"].text.parameters(),
                                                      backbones["fp16"].text.parameters()))
    print(f"world {world}; fp16 rounding changed {changed} of {total} text-tower weights")
    phis = {name: load_inversion_network(world / folder) for name, folder in (("LinCIR", "phi"),
                                                                                ("SEARLE", "searle-phi"))
            if (world / folder).exists()}
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache(tmp, progress=False)
        for name, phi in phis.items():
            for dataset in ("cirr", "fashioniq", "circo"):
                for split in load_benchmark(dataset, world / "data" / dataset, "val"):
                    results = {p: Evaluator(b, split, cache).evaluate("phi", phi=phi) for p, b in backbones.items()}
                    r32, r16 = (target_ranks(results[p]) for p in ("fp32", "fp16"))
                    crossed = "/".join(str(int(((r32 < k) != (r16 < k)).sum())) for k in (1, 5, 10, 50))
                    deltas = {m: round(results["fp16"].metrics[m] - v, 3) for m, v in results["fp32"].metrics.items()
                              if abs(results["fp16"].metrics[m] - v) > 1e-9}
                    gap = 1 - float(torch.nn.functional.cosine_similarity(results["fp32"].queries,
                                                                          results["fp16"].queries, dim=-1).min())
                    score = float((results["fp32"].scores - results["fp16"].scores).abs().max())
                    top1 = int((results["fp32"].scores.argmax(1) != results["fp16"].scores.argmax(1)).sum())
                    print(f"{name:6s} {split.name:22s} queries {len(split.queries):5d}  target rank moved "
                          f"{int((r32 != r16).sum()):4d}  crossed R@1/5/10/50 {crossed}  top-1 changed {top1:3d}  "
                          f"max 1-cos(query) {gap:.1e}  max |d score| {score:.1e}  metric deltas {deltas or 'none'}")


if __name__ == "__main__":
    main(*sys.argv[1:])
