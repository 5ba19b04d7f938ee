"""CIG generation throughput on the CPU with the tiny SDXL-architecture generator, by batch size.

Builds a tiny CLIP and the tiny SDXL pipeline of `zscir.generation.tiny` (the synthetic world's
generator architecture), then renders N images through `zscir.generation.cig.render` (the path of
`zscir generate`: per-image seeds, all-zero negative embeddings, guidance 5, Euler discrete) with
batch size 1 and with larger batches, all in one run. Prints one comparable line per setting:

    bench_generate n=32 size=64 steps=10 threads=1 unet=0.29M params | batch=1 4.5 img/s | batch=4 6.1 img/s
    (1.36x vs batch 1) | batch=8 ...

Usage: python benchmarks/bench_generate.py [--n 32] [--size 64] [--steps 10] [--batches 1 4 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def _build(folder: Path):
    from zscir.generation.cig import load_generator
    from zscir.generation.tiny import build_tiny_sdxl
    from zscir.models.factory import ClipSize, build_clip, save_clip_folder
    from zscir.models.tokenizer import train_clip_tokenizer

    corpus = ["a photo of a red circle", "a blue square on the left", "make it green", "a photo of $"] * 8
    tokenizer = train_clip_tokenizer(corpus, vocab_size=600, model_max_length=32)
    size = ClipSize(projection_dim=64, text_hidden=64, text_layers=2, text_heads=2, context_length=32,
                    vision_hidden=64, vision_layers=2, vision_heads=2, image_size=32, patch_size=8)
    save_clip_folder(build_clip(tokenizer, size), tokenizer, folder / "clip", size)
    build_tiny_sdxl(folder / "clip", None, folder / "sdxl")
    return load_generator(folder / "sdxl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images per setting")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from zscir.generation.cig import GenerationConfig, render
    from zscir.generation.conditioning import Conditioning

    with tempfile.TemporaryDirectory() as tmp:
        pipe = _build(Path(tmp))
        torch.manual_seed(0)
        cross = pipe.unet.config.cross_attention_dim
        pooled = pipe.unet.add_embedding.linear_1.in_features - 6 * pipe.unet.config.addition_time_embed_dim
        cond = Conditioning(torch.randn(args.n, 32, cross), torch.randn(args.n, pooled))
        parts = []
        base = None
        for batch in args.batches:
            config = GenerationConfig(steps=args.steps, height=args.size, width=args.size, batch_size=batch)
            render(pipe, cond[:batch], list(range(batch)), config)  # warm-up
            start = time.perf_counter()
            for i in range(0, args.n, batch):
                rows = list(range(i, min(i + batch, args.n)))
                render(pipe, cond[rows], rows, config)
            rate = args.n / (time.perf_counter() - start)
            base = base or rate
            ratio = "" if batch == args.batches[0] else f" ({rate / base:.2f}x vs batch {args.batches[0]})"
            parts.append(f"batch={batch} {rate:.1f} img/s{ratio}")
        unet_params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
        print(f"bench_generate n={args.n} size={args.size} steps={args.steps} threads={args.threads} "
              f"unet={unet_params:.2f}M params | " + " | ".join(parts))


if __name__ == "__main__":
    main()
