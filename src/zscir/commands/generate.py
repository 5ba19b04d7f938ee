"""`zscir generate`: CIG pseudo-target images for every query of a benchmark split (resumable, shardable).

Example (real SDXL, one GPU):
    zscir generate --dataset cirr --root data/cirr --split test --out pseudo/cirr-test \
        --backbone ViT-L/14 --phi phi_L.pt --backbone-2 bigG/14 --phi-2 phi_G.pt \
        --generator stabilityai/stable-diffusion-xl-base-1.0 --unet cig-unet/ --dtype fp16 --device cuda
Several GPUs: `accelerate launch -m zscir.cli generate ...` (process i takes queries i::n).
"""

from __future__ import annotations

HELP = "generate CIG pseudo-target images from composed SDXL conditionings (resumable; accelerate-shardable)"

DEFAULT_GENERATOR = "stabilityai/stable-diffusion-xl-base-1.0"


def add_arguments(parser) -> None:
    """Options of `zscir generate`."""
    from zscir.generation.options import SCHEDULERS, GenerationConfig

    d = GenerationConfig()
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, help="cirr | fashioniq | circo (the synthetic world uses the same)")
    data.add_argument("--root", required=True, help="dataset folder")
    data.add_argument("--split", default="val", help="val | test | train (default: val)")
    data.add_argument("--categories", nargs="+", help="FashionIQ categories (default: all three)")
    data.add_argument("--out", required=True, help="output folder for {query}.png and manifest.json")
    data.add_argument("--limit", type=int, help="only the first N queries (quick runs)")
    cond = parser.add_argument_group("conditioning")
    cond.add_argument("--backbone", default="synthetic-clip", help="text/image tower 1 (ViT-L/14 for SDXL)")
    cond.add_argument("--phi", required=False, help="inversion network of tower 1 (file or folder)")
    cond.add_argument("--backbone-2", help="tower 2 (bigG/14 for SDXL); default: tower 1 again")
    cond.add_argument("--phi-2", help="inversion network of tower 2; default: --phi")
    cond.add_argument("--template", default="default", help="prompt template name or text with $ and {caption}")
    cond.add_argument("--conditioning-dir", help="save computed conditionings here and reuse saved ones")
    gen = parser.add_argument_group("generator")
    gen.add_argument("--generator", default=DEFAULT_GENERATOR, help="SDXL pipeline folder or hub id")
    gen.add_argument("--unet", help="fine-tuned generator UNet (folder from `zscir train-generator`)")
    gen.add_argument("--vae", help="replacement VAE folder or hub id")
    gen.add_argument("--scheduler", default="euler", choices=sorted(SCHEDULERS), help="default: euler (discrete)")
    gen.add_argument("--steps", type=int, default=d.steps, help=f"denoising steps (default {d.steps})")
    gen.add_argument("--guidance", type=float, default=d.guidance, help=f"CFG scale (default {d.guidance})")
    gen.add_argument("--size", type=int, default=d.height, help=f"image side in pixels (default {d.height})")
    gen.add_argument("--batch-size", type=int, default=d.batch_size, help=f"images per call (default {d.batch_size})")
    gen.add_argument("--seed", type=int, default=d.seed, help=f"base seed (default {d.seed})")
    gen.add_argument("--shared-seed", action="store_true",
                     help="the paper's policy: the same seed for every query (default: per-query seeds)")
    gen.add_argument("--dark-threshold", type=float, default=d.dark_threshold,
                     help=f"reject images with mean pixel value ≤ this (default {d.dark_threshold})")
    gen.add_argument("--max-retries", type=int, default=d.max_retries,
                     help=f"re-renders of a dark image with seed+1, ... (default {d.max_retries})")
    run = parser.add_argument_group("runtime")
    run.add_argument("--device", help="cpu | cuda | cuda:1 (default: accelerate's device for this process)")
    run.add_argument("--dtype", default="fp32", help="fp32 | fp16 | bf16 (default fp32)")
    run.add_argument("--attention-slicing", action="store_true", help="lower memory, slower attention")
    run.add_argument("--cpu-offload", action="store_true", help="keep idle components on the CPU (GPU only)")


def build_conditioner(args):
    """The ComposedConditioner of the command-line options (None when no --phi is given)."""
    from zscir.compose import PromptTemplate
    from zscir.generation.conditioning import ComposedConditioner
    from zscir.models.backbone import Backbone
    from zscir.models.phi import check_fits, load_inversion_network

    if args.phi is None:
        return None
    backbone_1 = Backbone.load(args.backbone, device=args.device, dtype=args.dtype)
    phi_1 = load_inversion_network(args.phi, device=args.device).to(backbone_1.dtype)
    check_fits(phi_1, backbone_1)
    same_tower = args.backbone_2 in (None, args.backbone)
    backbone_2 = backbone_1 if same_tower else Backbone.load(args.backbone_2, device=args.device, dtype=args.dtype)
    if args.phi_2 in (None, args.phi) and same_tower:
        phi_2 = phi_1
    else:
        phi_2 = load_inversion_network(args.phi_2 or args.phi, device=args.device).to(backbone_2.dtype)
        check_fits(phi_2, backbone_2)
    return ComposedConditioner(backbone_1, phi_1, backbone_2, phi_2, PromptTemplate.named(args.template))


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

    accelerate = require("accelerate", "generate")
    # cpu=True lets torchrun / accelerate launch shard over CPU processes (gloo) when there is no GPU
    on_cpu = not torch.cuda.is_available() or str(args.device or "").startswith("cpu")
    state = accelerate.PartialState(cpu=on_cpu)
    args.device = args.device or str(state.device)
    if args.phi is None and args.conditioning_dir is None:
        raise ZscirError("give --phi (to compute conditionings) or --conditioning-dir (saved conditionings)")
    config = GenerationConfig(
        steps=args.steps, guidance=args.guidance, height=args.size, width=args.size, batch_size=args.batch_size,
        seed=args.seed, seed_policy="shared" if args.shared_seed else "per-query",
        dark_threshold=args.dark_threshold, max_retries=args.max_retries,
    )
    splits = load_benchmark(args.dataset, args.root, args.split, categories=args.categories)
    conditioner = build_conditioner(args)
    pipe = load_generator(args.generator, unet=args.unet, vae=args.vae, scheduler=args.scheduler, dtype=args.dtype,
                          device=args.device, attention_slicing=args.attention_slicing, cpu_offload=args.cpu_offload)
    shard = (state.process_index, state.num_processes)
    report = generate_pseudo_targets(pipe, splits, args.out, config, conditioner, args.conditioning_dir, shard,
                                     args.limit, progress=state.is_local_main_process)
    if state.num_processes == 1:
        write_manifest(args.out, report)
    else:
        import json
        from pathlib import Path

        write_manifest(args.out, report, f"manifest.{state.process_index}-of-{state.num_processes}.json")
        state.wait_for_everyone()
        if state.is_main_process:
            parts = [json.loads((Path(args.out) / f"manifest.{i}-of-{state.num_processes}.json").read_text())
                     for i in range(state.num_processes)]
            keys = ("generated", "skipped", "retried", "failed", "config", "shard")
            report = GenerationReport.merge([GenerationReport(**{k: p[k] for k in keys}) for p in parts])
            write_manifest(args.out, report)
    if state.is_main_process:
        j = report.to_json()["counts"]
        print(f"generated {j['generated']}, skipped (already done) {j['skipped']}, retried {j['retried']}, "
              f"failed {j['failed']} → {args.out} ({MANIFEST})")
    return 1 if report.failed and not report.generated and not report.skipped else 0
