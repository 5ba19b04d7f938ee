"""RTD training throughput and validation cost: zscir's step vs a reference-style step, in one run.

Same model, same batch, same trainable-tower work (ψ' forward + backward on the 2B query rows, AdamW):
- zscir: ψ(T_r) and ψ(T_t) come from the one-off frozen encoding (`prepare_rtd_data`, timed separately);
- reference style (the public code): per step the frozen tower encodes T_r twice (Phi input and hard-negative
  target) and T_t once.
Validation: zscir's `CIRValidator` (gallery and reference features encoded once, before training) vs a
reference-style round that re-encodes every gallery and reference image before composing the queries.
The CLIP is small but not tiny: text and vision width 256 × 6 layers, context 32. Prints one line:

    bench_rtd B=32 text=256x6 ... ours 95.1 triplets/s reference 61.0 triplets/s ratio 1.56x | ...

Usage: python benchmarks/bench_rtd.py [--batch 32] [--steps 8] [--gallery 256] [--queries 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

COLOURS = ["red", "blue", "green", "yellow", "white", "black", "purple", "orange", "grey", "pink"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross", "ring", "heart"]
PLACES = ["top left", "top right", "bottom left", "bottom right", "center", "middle", "left", "right"]


def _caption(rng: random.Random) -> str:
    return f"a {rng.choice(['small', 'large'])} {rng.choice(COLOURS)} {rng.choice(SHAPES)} at the {rng.choice(PLACES)}"


def _triplets(n: int, seed: int = 0):
    from zscir.training.rtd import Triplet

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
        out.append(Triplet(_caption(rng), f"make the {shape} {colour} and add a {rng.choice(SHAPES)}",
                           f"a {colour} {shape} next to a {rng.choice(SHAPES)} at the {rng.choice(PLACES)}"))
    return out


def _backbone(folder: Path):
    from zscir.models.backbone import Backbone
    from zscir.models.factory import ClipSize, build_clip, save_clip_folder
    from zscir.models.tokenizer import train_clip_tokenizer

    rng = random.Random(1)
    corpus = [_caption(rng) for _ in range(400)] + [t.conditioning for t in _triplets(200, 9)]
    tokenizer = train_clip_tokenizer(corpus, vocab_size=1000, model_max_length=32)
    size = ClipSize(projection_dim=256, text_hidden=256, text_layers=6, text_heads=4, context_length=32,
                    vision_hidden=256, vision_layers=6, vision_heads=4, image_size=64, patch_size=8)
    save_clip_folder(build_clip(tokenizer, size, seed=0), tokenizer, folder, size)
    return Backbone.load(str(folder))


def _split(folder: Path, gallery: int, queries: int):
    from zscir.data.records import CIRSplit, Query

    rng = random.Random(2)
    images = {}
    for i in range(gallery):
        path = folder / f"g{i}.png"
        Image.frombytes("RGB", (64, 64), rng.randbytes(64 * 64 * 3)).save(path)
        images[f"g{i}"] = path
    names = list(images)
    qs = [Query(f"q{i}", names[i], (f"is {rng.choice(COLOURS)} instead",), (names[(i + 1) % gallery],),
                tuple(names[(i + k) % gallery] for k in (1, 2, 3))) for i in range(queries)]
    return CIRSplit("cirr", "bench/val", images, names, qs)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--triplets", type=int, default=1024)
    parser.add_argument("--gallery", type=int, default=256)
    parser.add_argument("--queries", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from zscir.compose import compose_queries
    from zscir.evaluation.metrics import evaluate_split
    from zscir.models.phi import Phi
    from zscir.retrieval.features import FeatureCache
    from zscir.training.config import RTDConfig
    from zscir.training.rtd import RTDTask, nt_xent, prepare_rtd_data
    from zscir.training.validation import CIRValidator

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        backbone = _backbone(tmp / "clip")
        torch.manual_seed(0)
        phi = Phi(backbone.projection_dim, backbone.hidden_size).eval().requires_grad_(False)
        triplets = _triplets(args.triplets)
        config = RTDConfig()

        start = time.perf_counter()
        data = prepare_rtd_data(backbone, triplets, progress=False)
        precompute = time.perf_counter() - start
        task = RTDTask(backbone, phi, data, config)
        model = task.encoder
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
        b = args.batch
        rng = random.Random(3)

        def update(loss):
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def ours():
            update(task.loss(model, task.batch(rng.sample(range(len(triplets)), b), torch.device("cpu"))))

        def reference():
            rows = [triplets[i] for i in rng.sample(range(len(triplets)), b)]
            refs = [t.reference for t in rows]
            e_phi = backbone.encode_text(refs)                        # T_r for Phi's input
            e_ref = backbone.encode_text(refs)                        # T_r again, as the hard-negative target
            e_tgt = backbone.encode_text([t.target for t in rows])    # T_t
            with torch.no_grad():
                v = phi(e_phi + 0.5 * torch.rand(b, 1) * torch.randn_like(e_phi))
            prompts = [config.template.replace("{caption}", t.conditioning) for t in rows] + ["a photo of $"] * b
            q = backbone.encode_composed(prompts, torch.cat([v, v]), text_tower=model.tower).text_embeds
            update(nt_xent(q, torch.cat([e_tgt, e_ref]), config.temperature))

        t_ours = _time(ours, args.steps)
        t_ref = _time(reference, args.steps)

        split = _split(tmp, args.gallery, args.queries)
        start = time.perf_counter()
        validator = CIRValidator(backbone, [split], phi=phi, cache=FeatureCache(tmp / "features", progress=False))
        build = time.perf_counter() - start

        def validate_ours():
            validator(text_tower=model.tower)

        def validate_reference():
            gallery = backbone.encode_image([Image.open(split.images[n]) for n in split.gallery])
            refs = backbone.encode_image([Image.open(split.images[q.reference]) for q in split.queries])
            with torch.no_grad():
                v = phi(refs)
            queries = compose_queries(backbone, v, [q.captions for q in split.queries], text_tower=model.tower)
            evaluate_split(split, queries @ torch.nn.functional.normalize(gallery, dim=-1).T)

        v_ours = _time(validate_ours, 2)
        v_ref = _time(validate_reference, 2)
        print(f"bench_rtd B={b} text=256x6 ctx=32 threads={args.threads} | train: ours {b / t_ours:.1f} triplets/s "
              f"reference {b / t_ref:.1f} triplets/s ratio {t_ref / t_ours:.2f}x (one-off frozen encoding of "
              f"{args.triplets} triplets {precompute:.2f}s = {precompute / t_ours:.1f} of our steps) | validation "
              f"G={args.gallery} Q={args.queries}: ours {v_ours:.2f}s reference {v_ref:.2f}s "
              f"ratio {v_ref / v_ours:.1f}x "
              f"(one-off image encoding {build:.2f}s) | 2000 steps + 20 validations: ours "
              f"{precompute + build + 2000 * t_ours + 20 * v_ours:.0f}s reference {2000 * t_ref + 20 * v_ref:.0f}s")


if __name__ == "__main__":
    main()
