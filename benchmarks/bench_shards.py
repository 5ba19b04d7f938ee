"""Benchmark: `zscir index` of an image folder in 1 process vs N processes under `accelerate launch`.

A random CLIP of ViT-B/32's shape (bench_evaluate.VIT_B32) encodes `--images` noise PNGs (64×64).
Each run is a fresh index folder; the wall time includes process start-up (torch import, model load),
so the encoding throughput is also given from the time spent after the model is loaded (tqdm-free:
measured as wall time minus a run on 1 image). Both indexes must hold identical vectors (checked).

    nice -n 10 python benchmarks/bench_shards.py --images 512 --processes 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from bench_evaluate import make_model  # noqa: E402


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-shards-"))
    model = make_model(work)
    rng = np.random.default_rng(0)
    for folder, count in (("photos", args.images), ("one", 1)):
        (work / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = work / folder / f"{i:06d}.png"
            if not path.is_file():
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    zscir = [sys.executable, "-m", "zscir.cli", "index", "--backbone", str(model),
             "--batch-size", str(args.batch_size),
             "--chunk-size", str(args.batch_size * 2)]
    launch = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
              str(args.processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "-m", "zscir.cli", *zscir[3:]]
    times = {}
    for name, cmd in (("1 process", zscir), (f"{args.processes} processes", launch)):
        for target, images in (("startup", "one"), ("full", "photos")):
            out = work / f"index-{name.split()[0]}-{target}"
            shutil.rmtree(out, ignore_errors=True)
            times[name, target] = run([*cmd, "--images", str(work / images), "--out", str(out)])
    same = all((next((work / "index-1-full").glob(f"snapshot-*/{f}")).read_bytes()
                == next((work / f"index-{args.processes}-full").glob(f"snapshot-*/{f}")).read_bytes())
               for f in ("ids.json", "vectors.safetensors"))
    load = os.getloadavg()[0]
    line = [f"bench_shards images={args.images} model=ViT-B/32-size(random) batch={args.batch_size} load={load:.1f}"]
    for name in ("1 process", f"{args.processes} processes"):
        encode = times[name, "full"] - times[name, "startup"]
        line.append(f"{name}: wall {times[name, 'full']:.1f}s (startup {times[name, 'startup']:.1f}s) "
                    f"encode {encode:.1f}s = {args.images / max(encode, 1e-9):.1f} img/s")
    one = times["1 process", "full"] - times["1 process", "startup"]
    many = times[f"{args.processes} processes", "full"] - times[f"{args.processes} processes", "startup"]
    line.append(f"speed-up {one / max(many, 1e-9):.2f}x; identical vectors and ids: {same}")
    print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
