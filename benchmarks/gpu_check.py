"""GPU readiness check: every CUDA path of zscir once, on randomly initialised full-size models (no weights).

Stages (each timed, with peak GPU memory; any failure makes the exit code 1):
  evaluate  CIRR-val-sized synthetic set (2,297 gallery images, 4,181 queries), ViT-L/14-size CLIP + Phi,
            fp16; the same queries in fp32 give the fp16-vs-fp32 agreement (cosine per query vector)
  lincir    20 LinCIR steps (fp16 mixed precision) on the ViT-L/14-size text tower
  rtd       50 RTD steps under accelerate (fp16 mixed precision)
  cig       8 pseudo targets at 512 px, 4 steps, from an SDXL-width UNet + VAE (random) conditioned by
            ViT-L/14 + bigG/14-size towers
  shard     `zscir index` of the gallery under `accelerate launch` over every visible GPU, compared
            with the one-process features

    python benchmarks/gpu_check.py                      # a GPU machine: full sizes, target ≤ 5 min
    python benchmarks/gpu_check.py --tiny --skip shard  # anywhere: tiny sizes (the test suite runs this)

The SDXL-size UNet is SDXL's widths (320/640/1280, 2 ResNets per block, head dims 5/10/20, 2048-d
cross-attention) with one transformer layer per block (SDXL stacks 2 and 10 in its deeper blocks).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_evaluate import WORDS, make_data  # noqa: E402  (the CIRR-val-shaped synthetic set)

from zscir.models.factory import ClipSize  # noqa: E402

VIT_L14 = ClipSize(projection_dim=768, text_hidden=768, text_layers=12, text_heads=12, context_length=77,
                   vision_hidden=1024, vision_layers=24, vision_heads=16, image_size=224, patch_size=14)
BIGG14 = ClipSize(projection_dim=1280, text_hidden=1280, text_layers=32, text_heads=20, context_length=77,
                  vision_hidden=1664, vision_layers=48, vision_heads=16, image_size=224, patch_size=14)
TINY_L = ClipSize(projection_dim=24, text_hidden=32, text_layers=2, text_heads=2, context_length=77,
                  vision_hidden=32, vision_layers=2, vision_heads=2, image_size=32, patch_size=8)
TINY_G = ClipSize(projection_dim=40, text_hidden=48, text_layers=2, text_heads=2, context_length=77,
                  vision_hidden=32, vision_layers=2, vision_heads=2, image_size=32, patch_size=8)


@dataclass
class Sizes:
    clip_l: ClipSize
    clip_g: ClipSize
    sdxl: dict
    scale: float  # of CIRR val (1.0 = 2,297 images, 4,181 queries)
    image_px: int
    batch: int


def sizes(tiny: bool) -> Sizes:
    from zscir.generation.tiny import TinySDXLSize

    if tiny:
        return Sizes(TINY_L, TINY_G, dict(size=TinySDXLSize()), 0.02, 64, 8)
    sdxl = TinySDXLSize(unet_channels=(320, 640, 1280), layers_per_block=2, attention_head_dim=(5, 10, 20),
                        addition_time_embed_dim=256, vae_channels=(128, 256, 512, 512), sample_size=64,
                        norm_num_groups=32)
    return Sizes(VIT_L14, BIGG14, dict(size=sdxl), 1.0, 512, 64)


class Check:
    """Runs stages, records time / throughput / peak memory, keeps going after a failure."""

    def __init__(self, device: str):
        self.device, self.rows, self.failed = device, [], []

    def stage(self, name: str, fn, units: str):
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            count, extra = fn()
        except Exception as exc:  # report and go on: one run shows every broken path
            traceback.print_exc()
            self.failed.append(name)
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            return
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device.startswith("cuda") else float("nan")
        row = {"stage": name, "seconds": round(seconds, 2), "throughput": f"{count / seconds:.2f} {units}/s",
               "peak_gpu_gb": round(peak, 2), **extra}
        self.rows.append(row)
        print("ok   " + json.dumps(row), flush=True)


def build_models(work: Path, s: Sizes):
    from zscir.models.factory import build_clip, save_clip_folder
    from zscir.models.phi import Phi, save_pretrained
    from zscir.models.tokenizer import train_clip_tokenizer

    tokenizer = train_clip_tokenizer([" ".join(WORDS)] * 8, vocab_size=1000, model_max_length=77)
    folders = {}
    for name, size in (("clip-l", s.clip_l), ("clip-g", s.clip_g)):
        folders[name] = work / name
        if not (folders[name] / "config.json").is_file():
            save_clip_folder(build_clip(tokenizer, size, seed=0), tokenizer, folders[name], size)
        torch.manual_seed(0)
        phi_dir = work / f"phi-{name}"
        if not (phi_dir / "config.json").is_file():
            save_pretrained(Phi(size.projection_dim, size.text_hidden, 4 * size.projection_dim), phi_dir)
        folders[f"phi-{name}"] = phi_dir
    return folders


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CPU, the test suite)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workdir", default=None, help="models and data (default: a temporary folder)")
    parser.add_argument("--skip", nargs="*", default=(), choices=("evaluate", "lincir", "rtd", "cig", "shard"))
    args = parser.parse_args(argv)

    from zscir.data.records import load_benchmark
    from zscir.evaluation.runner import Evaluator
    from zscir.models.backbone import Backbone
    from zscir.models.phi import load_inversion_network
    from zscir.retrieval.features import FeatureCache

    s = sizes(args.tiny)
    cuda = args.device.startswith("cuda")
    half = "fp16" if cuda else "bf16"  # fp16 matmuls need a GPU; bf16 exercises the same casts on a CPU
    work = Path(args.workdir or tempfile.mkdtemp(prefix="gpu-check-"))
    print(f"gpu_check device={args.device} gpus={torch.cuda.device_count()} sizes={'tiny' if args.tiny else 'full'} "
          f"half={half} workdir={work}", flush=True)
    folders = build_models(work, s)
    make_data(work / "cirr", s.scale)
    check = Check(args.device)
    split = load_benchmark("cirr", work / "cirr", "val")[0]
    images = len(dict.fromkeys([*split.gallery, *(q.reference for q in split.queries)]))

    def evaluate():
        queries = {}
        for dtype in (half, "fp32"):
            backbone = Backbone.load(str(folders["clip-l"]), device=args.device, dtype=dtype)
            phi = load_inversion_network(str(folders["phi-clip-l"]), device=args.device)
            ev = Evaluator(backbone, split, FeatureCache(work / f"cache-{dtype}", progress=False), batch_size=s.batch)
            result = ev.evaluate("phi", phi=phi)
            queries[dtype] = F.normalize(ev.query_vectors("phi", phi=phi).float(), dim=-1)
            if dtype == half:
                metrics = {k: round(v, 2) for k, v in result.metrics.items() if k in ("R@1", "R@10")}
        cos = (queries[half] * queries["fp32"]).sum(-1)
        if not torch.isfinite(cos).all() or float(cos.mean()) < 0.99:
            raise RuntimeError(f"{half} queries disagree with fp32: mean cosine {float(cos.mean()):.4f}")
        return 2 * images, {"images": images, "queries": len(split.queries), f"{half}_vs_fp32_cos_mean":
                            round(float(cos.mean()), 5), "cos_min": round(float(cos.min()), 5), **metrics}

    def lincir():
        from zscir.training.config import LinCIRConfig
        from zscir.training.phi import train_lincir

        backbone = Backbone.load(str(folders["clip-l"]), device=args.device, load_vision=False)
        captions = [" ".join(WORDS[i % len(WORDS)] for i in range(j, j + 8)) for j in range(256)]
        steps = 20
        config = LinCIRConfig(max_steps=steps, batch_size=s.batch, mixed_precision=half, cpu=not cuda,
                              report_to="none", progress=False, checkpoint_every=10**6)
        shutil.rmtree(work / "lincir", ignore_errors=True)  # a fresh run each time (not a resume)
        train_lincir(backbone, captions, config, work / "lincir")
        return steps, {"batch": s.batch}

    def rtd():
        from zscir.training.config import RTDConfig
        from zscir.training.rtd import Triplet, train_rtd

        backbone = Backbone.load(str(folders["clip-l"]), device=args.device, load_vision=False)
        phi = load_inversion_network(str(folders["phi-clip-l"]), device=args.device)
        words = WORDS
        triplets = [Triplet(f"a {words[i % 9]} {words[(i + 3) % 9]}", f"make it {words[(i + 5) % 9]}",
                            f"a {words[(i + 5) % 9]} {words[(i + 3) % 9]}") for i in range(512)]
        steps = 50
        config = RTDConfig(max_steps=steps, batch_size=s.batch, mixed_precision=half, cpu=not cuda,
                           report_to="none", progress=False, checkpoint_every=10**6)
        shutil.rmtree(work / "rtd", ignore_errors=True)
        train_rtd(backbone, phi, triplets, config, work / "rtd")
        return steps, {"batch": s.batch}

    def cig():
        from zscir.generation.cig import load_generator, render
        from zscir.generation.conditioning import ComposedConditioner
        from zscir.generation.options import GenerationConfig
        from zscir.generation.tiny import build_tiny_sdxl

        folder = build_tiny_sdxl(folders["clip-l"], folders["clip-g"], work / "sdxl", **s.sdxl)
        pipe = load_generator(folder, dtype="fp16" if cuda else "fp32", device=args.device)
        b1 = Backbone.load(str(folders["clip-l"]), device=args.device)
        b2 = Backbone.load(str(folders["clip-g"]), device=args.device)
        conditioner = ComposedConditioner(b1, load_inversion_network(str(folders["phi-clip-l"]), device=args.device),
                                          b2, load_inversion_network(str(folders["phi-clip-g"]), device=args.device))
        from zscir.data.images import load_image

        refs = [load_image(split.images[q.reference]) for q in split.queries[:8]]
        v1, v2 = conditioner.pseudo_tokens(refs)
        cond = conditioner.encode(conditioner.prompts_for([q.captions for q in split.queries[:8]]), v1, v2)
        config = GenerationConfig(steps=4, height=s.image_px, width=s.image_px, batch_size=8)
        out = render(pipe, cond, list(range(len(refs))), config)
        if len(out) != len(refs):
            raise RuntimeError(f"{len(out)} images for {len(refs)} queries")
        return len(out), {"size": s.image_px, "steps": 4}

    def shard():
        gallery = work / "cirr" / "dev"
        n = max(2, torch.cuda.device_count())
        accelerate = Path(sys.executable).with_name("accelerate")
        common = ["--images", str(gallery), "--backbone", str(folders["clip-l"]), "--device", args.device,
                  "--batch-size", str(s.batch)]
        cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(n), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "zscir.cli", "index",
               "--out", str(work / "index-sharded"), *common]
        for old in ("index-sharded", "index-1"):
            shutil.rmtree(work / old, ignore_errors=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"accelerate launch failed: {done.stderr[-2000:]}")
        single = subprocess.run([sys.executable, "-m", "zscir.cli", "index", "--out", str(work / "index-1"), *common],
                                capture_output=True, text=True)
        if single.returncode:
            raise RuntimeError(f"one-process index failed: {single.stderr[-2000:]}")
        same = all(next((work / "index-1").glob(f"snapshot-*/{f}")).read_bytes()
                   == next((work / "index-sharded").glob(f"snapshot-*/{f}")).read_bytes()
                   for f in ("ids.json", "vectors.safetensors"))
        if not same:
            raise RuntimeError(f"{n} processes gave other vectors than one process")
        return len(split.gallery), {"processes": n, "identical_to_one_process": same}

    for name, fn, units in (("evaluate", evaluate, "img"), ("lincir", lincir, "step"), ("rtd", rtd, "step"),
                            ("cig", cig, "img"), ("shard", shard, "img")):
        if name not in args.skip:
            check.stage(name, fn, units)
    total = sum(r["seconds"] for r in check.rows)
    print(f"gpu_check {'FAILED: ' + ', '.join(check.failed) if check.failed else 'passed'}; "
          f"{len(check.rows)} stages in {total:.1f}s", flush=True)
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
