"""OTI throughput on the CPU: images/s at several batch sizes, with and without the phrase loss.

The model is a random CLIP of the synthetic world's size (`ClipSize()`, ~3M parameters, context 32)
with the world's tokenizer; the images are rendered world scenes; concepts and phrases come from the
world's grammar (54 concepts x 16 phrases). Every setting inverts the same N images for S steps
through `invert_images`; the throughput is converted to the paper's 350 steps per image. Prints one
line whose ratios are measured in the same run:

    bench_oti n=64 steps=20 threads=1 b1 2.1 img/s b8 ... b64 ... (x vs b1) b64-nophrase ... img/s@350

Usage: python benchmarks/bench_oti.py [--n 64] [--steps 20] [--threads 1] [--batches 1 8 32 64]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch


def _setup(n: int):
    from zscir.data.synthetic import random_scene, render_scene, world_texts
    from zscir.data.synthetic.concepts import WORLD_TEMPLATES, world_concepts, world_phrases
    from zscir.models.backbone import Backbone
    from zscir.models.factory import ClipSize, build_clip, save_clip_folder
    from zscir.models.tokenizer import train_clip_tokenizer
    from zscir.oti.concepts import ConceptBank

    size = ClipSize()
    tokenizer = train_clip_tokenizer(world_texts(), vocab_size=1200, model_max_length=size.context_length)
    folder = tempfile.mkdtemp(prefix="bench-oti-")
    save_clip_folder(build_clip(tokenizer, size, seed=0), tokenizer, folder, size)
    backbone = Backbone.load(folder)
    rng = random.Random(0)
    embeds = backbone.encode_image([render_scene(random_scene(rng), size.image_size) for _ in range(n)])
    concepts = world_concepts()
    bank = ConceptBank.build(backbone, concepts, world_phrases(concepts, 16), WORLD_TEMPLATES)
    return backbone, embeds, bank


def _rate(backbone, embeds, bank, steps: int, batch: int, phrase_weight: float) -> float:
    from zscir.oti.optimise import OTIConfig, invert_images

    config = OTIConfig(steps=steps, batch_size=batch, phrase_weight=phrase_weight)
    names = [f"im{i}" for i in range(embeds.shape[0])]
    start = time.perf_counter()
    invert_images(backbone, embeds, bank, config, names=names, progress=False)
    seconds = time.perf_counter() - start
    return embeds.shape[0] / seconds * steps / 350  # images/s at the paper's 350 steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone, embeds, bank = _setup(args.n)
    _rate(backbone, embeds[:4], bank, 2, 4, 0.5)  # warm-up
    rates = {b: _rate(backbone, embeds, bank, args.steps, b, 0.5) for b in args.batches}
    top = max(args.batches)
    no_phrase = _rate(backbone, embeds, bank, args.steps, top, 0.0)
    # The same run on the full context every step: encode_composed keeps every column when the
    # penultimate states are asked for, so this is the untrimmed path of the same code.
    trimmed = backbone.encode_composed
    backbone.encode_composed = lambda texts, tokens=None, **kw: trimmed(texts, tokens, return_penultimate=True, **kw)
    full_context = _rate(backbone, embeds, bank, args.steps, top, 0.5)
    del backbone.encode_composed
    base = rates[min(args.batches)]
    parts = " ".join(f"b{b} {r:.2f}" for b, r in rates.items())
    ratios = " ".join(f"{r / base:.1f}x" for r in rates.values())
    print(f"bench_oti n={args.n} steps={args.steps} threads={args.threads} img/s@350steps: {parts} "
          f"(vs b{min(args.batches)}: {ratios}) b{top}-no-phrase {no_phrase:.2f} "
          f"(phrase loss costs {no_phrase / rates[top]:.2f}x) b{top}-full-context {full_context:.2f} "
          f"(trimming gains {rates[top] / full_context:.2f}x)")


if __name__ == "__main__":
    main()
