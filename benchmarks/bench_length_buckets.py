"""Text-tower passes in length buckets vs one padded batch (`Backbone.encode_composed`'s pooled path).

The world CLIP (the shipped weights, OpenAI CLIP's BPE) encodes B prompts "a photo of $ that {caption}"
built from the world's caption corpus (mean ~30 tokens, the batch's longest ~45), each with a random
pseudo token: forward + backward w.r.t. the tokens (a LinCIR / OTI step) and forward alone (inference).
"padded" cuts the whole batch after its longest row (the previous path); "buckets" is
`encode_in_length_buckets` (rows sorted by length, up to 8 buckets of >= 32 rows, each cut after its own
longest row). Settings are interleaved over the repeats and the minimum is kept; one printed line holds
the ratios of the same run:

    bench_length_buckets B=256 threads=1 train: padded 1.44 s buckets 0.89 s (1.61x) infer: ... (x)

Usage: python benchmarks/bench_length_buckets.py [--batch 256] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    from zscir.data.synthetic.corpora import caption_corpus
    from zscir.demo.world_models import SHIPPED_CLIP, unpack_world_clip
    from zscir.models.backbone import Backbone
    from zscir.models.pseudo_tokens import encode_in_length_buckets, encode_with_pseudo_tokens, end_of_text_positions

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = Backbone.load(str(unpack_world_clip(SHIPPED_CLIP, Path(tempfile.mkdtemp()) / "clip")))
    captions = random.Random(0).sample(caption_corpus(0, 4000), args.batch)
    ids = backbone.tokenize([f"a photo of $ that {c}" for c in captions])
    ends = end_of_text_positions(backbone.text.text_model, ids)
    padded_ids = ids[:, : int(ends.max()) + 1]
    tokens = torch.randn(args.batch, backbone.hidden_size)
    pid = backbone.pseudo_token_id

    def padded(v):
        return encode_with_pseudo_tokens(backbone.text, padded_ids, v, pid).text_embeds

    def buckets(v):
        return encode_in_length_buckets(backbone.text, ids, v, pid).text_embeds

    def train(fn):
        v = tokens.clone().requires_grad_(True)
        fn(v).square().sum().backward()

    def infer(fn):
        with torch.inference_mode():
            fn(tokens)

    best = {}
    for _ in range(args.repeats):
        for mode in (train, infer):
            for fn in (padded, buckets):
                start = time.perf_counter()
                mode(fn)
                key = (mode.__name__, fn.__name__)
                best[key] = min(best.get(key, float("inf")), time.perf_counter() - start)
    parts = [f"bench_length_buckets B={args.batch} threads={args.threads} "
             f"mean_len {float(ends.float().mean() + 1):.1f} max_len {int(ends.max()) + 1}"]
    for mode in ("train", "infer"):
        a, b = best[(mode, "padded")], best[(mode, "buckets")]
        parts.append(f"{mode}: padded {a:.3f} s buckets {b:.3f} s ({a / b:.2f}x)")
    print(" ".join(parts))


if __name__ == "__main__":
    main()
