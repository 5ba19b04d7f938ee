"""World CLIP training step: fp32 vs bf16 autocast on this CPU (why `ClipTrainConfig.bf16` is off by default).

    python benchmarks/bench_clip_step.py [steps] [threads]

Prints seconds per step of the demo's recipe (batch 128, 48 px, real CLIP BPE) for both precisions and
their ratio, measured in the same run.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace


def main(steps: int = 5, threads: int = 1) -> None:
    import torch

    from zscir.data.synthetic.corpora import clip_pair_sampler
    from zscir.demo.world_models import default_clip_config, world_tokenizer
    from zscir.training.clip import train_clip

    torch.set_num_threads(threads)
    config = default_clip_config()
    tokenizer = world_tokenizer(config.size.context_length)
    seconds = {}
    for bf16 in (False, True):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            train_clip(clip_pair_sampler(config.size.image_size), tokenizer, out, replace(config, bf16=bf16),
                       progress=False, stop_after=steps)
            seconds[bf16] = (time.perf_counter() - start) / steps
    print(f"threads {threads}: fp32 {seconds[False]:.2f} s/step, bf16 autocast {seconds[True]:.2f} s/step, "
          f"bf16 / fp32 = {seconds[True] / seconds[False]:.1f}x")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
