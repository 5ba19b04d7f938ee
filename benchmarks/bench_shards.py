"""Benchmark: `zscir index` of an image folder in 1 process vs N processes under `accelerate launch`.

A random CLIP of ViT-B/32's shape (bench_evaluate.VIT_B32) encodes `--images` noise PNGs (64×64).
Each run is a fresh index folder; the wall time includes process start-up (torch import, model load),
so the encoding throughput is also given from the time spent after the model is loaded (tqdm-free:
measured as wall time minus a run on 1 image). Every index must hold identical vectors (checked).
CPU time is the user + system time of the whole process tree (getrusage of reaped children): on a
shared machine the wall-time ratio depends on how many cores the other jobs leave, the CPU-time ratio
says how much work sharding adds. The load average is printed beside every run.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/bench_shards.py --images 512 --processes 2 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from bench_evaluate import make_model  # noqa: E402


def run(cmd: list[str], threads: int) -> dict:
    """Wall time, CPU time of the whole process tree (user + sys, reaped children) and the load around it."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "load": (load + os.getloadavg()[0]) / 2}


def snapshot_bytes(index: Path) -> tuple[bytes, bytes]:
    return tuple(next(index.glob(f"snapshot-*/{f}")).read_bytes() for f in ("ids.json", "vectors.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of (1 process, N processes), interleaved")
    parser.add_argument("--threads-baseline", action="store_true",
                        help="also time 1 process with N torch threads (intra-op parallelism instead of sharding)")
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
    n = args.processes
    configs = [("1 process x 1 thread", zscir, 1), (f"{n} processes x 1 thread", launch, 1)]
    if args.threads_baseline:
        configs.append((f"1 process x {n} threads", zscir, n))
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in configs}
    reference = None
    for _ in range(args.repeats):
        for name, cmd, threads in configs:
            timing = {}
            for target, images in (("startup", "one"), ("full", "photos")):
                out = work / f"index-{target}"
                shutil.rmtree(out, ignore_errors=True)
                timing[target] = run([*cmd, "--images", str(work / images), "--out", str(out)], threads)
            got = snapshot_bytes(work / "index-full")
            reference = reference or got
            timing["same"] = got == reference
            runs[name].append(timing)
            encode = timing["full"]["wall"] - timing["startup"]["wall"]
            full, one = timing["full"], timing["startup"]
            print(f"  {name}: wall {full['wall']:.1f}s (1-image run {one['wall']:.1f}s) "
                  f"encode {encode:.1f}s = {args.images / max(encode, 1e-9):.1f} img/s; CPU {full['cpu']:.1f}s "
                  f"(1-image {timing['startup']['cpu']:.1f}s); load {timing['full']['load']:.1f}; "
                  f"identical to the first run: {timing['same']}", flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(r["full"][key] - r["startup"][key] for r in runs[name])

    base = configs[0][0]
    line = [f"bench_shards images={args.images} model=ViT-B/32-size(random) batch={args.batch_size} "
            f"repeats={args.repeats} load {min(r['full']['load'] for v in runs.values() for r in v):.1f}-"
            f"{max(r['full']['load'] for v in runs.values() for r in v):.1f}"]
    for name, _, _ in configs:
        wall, cpu = median(name, "wall"), median(name, "cpu")
        line.append(f"{name}: encode {wall:.1f}s wall = {args.images / wall:.1f} img/s, {cpu:.1f}s CPU; "
                    f"vs {base}: wall {median(base, 'wall') / wall:.2f}x faster, CPU {cpu / median(base, 'cpu'):.2f}x")
    line.append(f"identical vectors and ids in every run: {all(r['same'] for v in runs.values() for r in v)}")
    print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
