"""`zscir generate`: CIG pseudo-target images for every query of a benchmark split (resumable, shardable).

Example (real SDXL, one GPU):
    zscir generate --dataset cirr --root data/cirr --split test --output-dir pseudo/cirr-test \
        --backbone ViT-L/14 --phi phi_L.pt --backbone-2 bigG/14 --phi-2 phi_G.pt \
        --generator stabilityai/stable-diffusion-xl-base-1.0 --unet cig-unet/ --dtype fp16 --device cuda
Several GPUs: `accelerate launch -m zscir.cli generate ...` (process i takes queries i::n).
"""

from __future__ import annotations

from zscir.commands.common import build_conditioner, check_conditioner, check_runtime, existing_folder
from zscir.commands.options import add, add_conditioner_arguments, add_runtime_arguments
from zscir.retrieval.shards import tear_down_process_group_at_exit
from zscir.training.config import GeneratorTrainConfig

HELP = "generate CIG pseudo-target images from composed SDXL conditionings (resumable; accelerate-shardable)"

DEFAULT_GENERATOR = GeneratorTrainConfig.generator  # the SDXL the CIG generator is trained on (one place)


def add_arguments(parser) -> None:
    """Options of `zscir generate`."""
    from zscir.generation.options import SCHEDULERS, GenerationConfig

    d = GenerationConfig()
    data = parser.add_argument_group("data")
    add(data, "dataset", required=True)
    add(data, "root", required=True)
    add(data, "split", default="val")
    add(data, "categories")
    add(data, "output-dir", required=True, help="output folder for {query}.png and manifest.json")
    add(data, "limit", help="only the first N queries (quick runs)")
    cond = parser.add_argument_group("conditioning")
    add_conditioner_arguments(cond)
    add(cond, "template", default="default")
    cond.add_argument("--conditioning-dir", metavar="DIR",
                      help="save computed conditionings here and reuse saved ones")
    gen = parser.add_argument_group("generator")
    add(gen, "generator", default=DEFAULT_GENERATOR)
    add(gen, "unet")
    gen.add_argument("--vae", metavar="NAME", help="replacement VAE folder or hub id")
    gen.add_argument("--scheduler", default="euler", choices=sorted(SCHEDULERS), help="(default euler, discrete)")
    gen.add_argument("--steps", type=int, default=d.steps, metavar="N", help=f"denoising steps (default {d.steps})")
    gen.add_argument("--guidance", type=float, default=d.guidance, metavar="X",
                     help=f"CFG scale (default {d.guidance})")
    gen.add_argument("--size", type=int, default=d.height, metavar="N",
                     help=f"image side in pixels (default {d.height})")
    add(gen, "batch-size", default=d.batch_size, help="images per call")
    add(gen, "seed", default=d.seed, help="base seed")
    gen.add_argument("--shared-seed", action="store_true",
                     help="the paper's policy: the same seed for every query (default: per-query seeds)")
    gen.add_argument("--dark-threshold", type=float, default=d.dark_threshold, metavar="X",
                     help=f"reject images with mean pixel value ≤ this (default {d.dark_threshold})")
    gen.add_argument("--max-retries", type=int, default=d.max_retries, metavar="N",
                     help=f"re-renders of a dark image with seed+1, ... (default {d.max_retries})")
    run = parser.add_argument_group("runtime")
    add_runtime_arguments(run, device=None)
    run.add_argument("--attention-slicing", action="store_true", help="lower memory, slower attention")
    run.add_argument("--cpu-offload", action="store_true", help="keep idle components on the CPU (GPU only)")


def run(args) -> int:
    """Generate, write the manifest (merged over processes), print a one-line summary."""
    import torch

    from zscir.data.records import load_benchmark
    from zscir.errors import ZscirError, require
    from zscir.generation.cig import (
        MANIFEST,
        GenerationConfig,
        GenerationReport,
        generate_pseudo_targets,
        load_generator,
        write_manifest,
    )

    if args.phi is None and args.conditioning_dir is None:
        raise ZscirError("give --phi (to compute conditionings) or --conditioning-dir (saved conditionings)")
    # every flag and path before a model is loaded
    existing_folder(args.root, "--root")
    check_conditioner(args)
    check_runtime(args.device, args.dtype)
    accelerate = require("accelerate", "generate")
    # cpu=True lets torchrun / accelerate launch shard over CPU processes (gloo) when there is no GPU
    on_cpu = not torch.cuda.is_available() or str(args.device or "").startswith("cpu")
    tear_down_process_group_at_exit()
    state = accelerate.PartialState(cpu=on_cpu)
    args.device = args.device or str(state.device)
    config = GenerationConfig(
        steps=args.steps, guidance=args.guidance, height=args.size, width=args.size, batch_size=args.batch_size,
        seed=args.seed, seed_policy="shared" if args.shared_seed else "per-query",
        dark_threshold=args.dark_threshold, max_retries=args.max_retries,
    )
    splits = load_benchmark(args.dataset, args.root, args.split, categories=args.categories)
    conditioner = build_conditioner(args, args.template)
    pipe = load_generator(args.generator, unet=args.unet, vae=args.vae, scheduler=args.scheduler, dtype=args.dtype,
                          device=args.device, attention_slicing=args.attention_slicing, cpu_offload=args.cpu_offload)
    shard = (state.process_index, state.num_processes)
    report = generate_pseudo_targets(pipe, splits, args.output_dir, config, conditioner, args.conditioning_dir, shard,
                                     args.limit, progress=state.is_local_main_process)
    if state.num_processes == 1:
        write_manifest(args.output_dir, report)
    else:
        import json
        from pathlib import Path

        write_manifest(args.output_dir, report, f"manifest.{state.process_index}-of-{state.num_processes}.json")
        state.wait_for_everyone()
        if state.is_main_process:
            parts = [json.loads((Path(args.output_dir) / f"manifest.{i}-of-{state.num_processes}.json").read_text())
                     for i in range(state.num_processes)]
            keys = ("generated", "skipped", "retried", "failed", "config", "shard")
            report = GenerationReport.merge([GenerationReport(**{k: p[k] for k in keys}) for p in parts])
            write_manifest(args.output_dir, report)
    if state.is_main_process:
        j = report.to_json()["counts"]
        print(f"generated {j['generated']}, skipped (already done) {j['skipped']}, retried {j['retried']}, "
              f"failed {j['failed']} → {args.output_dir} ({MANIFEST})")
    return 1 if report.failed and not report.generated and not report.skipped else 0
