"""Benchmark: an index larger than memory — IVF-PQ on disk, built from a stream, with and without exact re-ranking.

N × 768 vectors are generated block by block near a random 32-dim subspace (the generator of
`bench_index.py --intrinsic-dim 32`), streamed into `zscir.retrieval.ivfpq.build_ivfpq` with
`--memory-budget` (default 4GB), and never held in memory as a whole. Reported: build time per stage,
peak resident memory of the process (ru_maxrss: includes the memory-mapped lists and stored vectors
a search touches), disk size, and for a sweep of (nprobe, rerank) the single-query latency and
recall@50 against exact float32 search (the stream regenerated block by block, other queries than
the indexed vectors). Goal: ≤ 20 ms per query at recall@50 ≥ 0.95, peak memory ≤ 4 GB.

    nice -n 10 python benchmarks/bench_ivfpq.py --n 1000000
    nice -n 10 python benchmarks/bench_ivfpq.py --n 3000000 --folder /tmp/ivfpq-3m
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_index import rss_gb, sample  # noqa: E402  (the same generator as the in-memory benchmark)


def peak_gb() -> float:
    """Peak resident memory of this process so far (GB; includes memory-mapped file pages it touched)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


class MemoryWatch:
    """Largest anonymous and file-backed resident memory seen (/proc/self/status, sampled every 0.5 s).

    ru_maxrss counts the pages of memory-mapped files (the stored vectors, the inverted lists) that a
    build or a search touched; those are page cache the kernel can drop, unlike the process's own
    (anonymous) memory, which is what a memory budget bounds.
    """

    def __init__(self):
        import threading

        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def sample(self) -> None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in self.peak:
                        self.peak[key] = max(self.peak[key], int(value.split()[0]) * 1024)
        except OSError:  # not Linux
            pass

    def text(self) -> str:
        self.sample()
        return f"peak anonymous {self.peak['RssAnon'] / 2**30:.2f}GB, file-backed {self.peak['RssFile'] / 2**30:.2f}GB"


def load_text() -> str:
    """The 1/5/15-minute load averages (the machine is shared: every time is read beside them)."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def stream(n: int, dim: int, intrinsic: int, seed: int, rows: int):
    """[rows, dim] unit-vector blocks, the same sequence for the same seed."""
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n, rows):
        yield sample(min(rows, n - start), dim, intrinsic, gen, rows)


def exact_truth(args, queries: np.ndarray) -> np.ndarray:
    """[Q, k] exact float32 neighbours by regenerating the stream (no full matrix in memory)."""
    best_s = np.full((queries.shape[0], 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((queries.shape[0], 0), dtype=np.int64)
    start = 0
    for block in stream(args.n, args.dim, args.intrinsic_dim, args.seed, args.block):
        b = block.numpy()
        s = np.concatenate([best_s, queries @ b.T], 1)
        rows = np.broadcast_to(np.arange(start, start + b.shape[0]), (queries.shape[0], b.shape[0]))
        i = np.concatenate([best_i, rows], 1)
        top = np.argpartition(-s, args.k, axis=1)[:, : args.k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
        start += b.shape[0]
    return best_i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--intrinsic-dim", type=int, default=32)
    parser.add_argument("--memory-budget", default="4GB")
    parser.add_argument("--opq", action="store_true")
    parser.add_argument("--fast-scan", action="store_true", help="4-bit fast-scan codes (lists in memory)")
    parser.add_argument("--nlist", type=int, default=None,
                        help="override the plan's IVF cells (the training sample stays 64 points per cell)")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--latency-queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--block", type=int, default=65536, help="rows per generated block")
    parser.add_argument("--nprobes", default="8,16,32,64,128")
    parser.add_argument("--reranks", default="0,200,500,1000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", default=None, help="index folder (default: a temporary one, removed)")
    parser.add_argument("--reuse", action="store_true",
                        help="the --folder holds this benchmark's index already: skip the build, measure the search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import faiss

    from zscir.retrieval.index import load_index
    from zscir.retrieval.ivfpq import build_ivfpq, plan_ivfpq, recall_at

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="bench-ivfpq-"))
    memory = MemoryWatch()
    plan = plan_ivfpq(args.n, args.dim, args.memory_budget, args.opq, fast_scan=args.fast_scan)
    if args.nlist:
        train_size = min(args.n, max(plan.train_size, 64 * args.nlist))
        plan = dataclasses.replace(plan, nlist=args.nlist, train_size=train_size)
    print(f"bench_ivfpq n={args.n} dim={args.dim} intrinsic={args.intrinsic_dim} budget={args.memory_budget} "
          f"threads={args.threads} plan={plan} (float32 data would be {args.n * args.dim * 4 / 2**30:.2f}GB; "
          f"rss at start {rss_gb():.2f}GB; load average {load_text()})", flush=True)
    if not (args.reuse and (folder / "index.json").is_file()):
        start, cpu_start = time.perf_counter(), time.process_time()
        index = build_ivfpq(stream(args.n, args.dim, args.intrinsic_dim, args.seed, args.block), folder, args.n,
                            args.dim, plan=plan, k=args.k, seed=args.seed)
        build_s, build_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        disk = {p.name: p.stat().st_blocks * 512 / 2**30 for p in folder.iterdir()}
        print(f"build {build_s:.1f}s (store {index.params['store_s']}s, train {index.params['train_s']}s, "
              f"fill {index.params['add_s']}s, tuning the rest; process CPU {build_cpu:.1f}s; load average after "
              f"{load_text()}); peak rss {peak_gb():.2f}GB ({memory.text()}); disk "
              + ", ".join(f"{k} {v:.2f}GB" for k, v in disk.items()), flush=True)
        print(f"built-in tuning on {index.params['heldout']} held-out stored rows: nprobe {index.params['nprobe']} "
              f"rerank {index.params['rerank']} recall@{args.k} {index.params['recall']:.3f}", flush=True)
        del index
    index = load_index(folder)  # as `zscir search` / `serve` would open it: lists and vectors memory-mapped
    gen = torch.Generator().manual_seed(args.seed + 99)
    queries = sample(args.queries, args.dim, args.intrinsic_dim, gen).numpy()
    start = time.perf_counter()
    truth = exact_truth(args, queries)
    print(f"exact truth by streaming {time.perf_counter() - start:.1f}s", flush=True)
    for rerank in [int(x) for x in args.reranks.split(",")]:
        for nprobe in [int(x) for x in args.nprobes.split(",")]:
            index.set_search_params(nprobe=nprobe, rerank=rerank)
            _, found = index.search(torch.from_numpy(queries), args.k)
            recall = recall_at(found.numpy(), truth)
            times, cpu = [], []
            for i in range(args.latency_queries):
                t, c = time.perf_counter(), time.process_time()
                index.search(torch.from_numpy(queries[i % args.queries][None]), args.k)
                times.append((time.perf_counter() - t) * 1000)
                cpu.append((time.process_time() - c) * 1000)
            times.sort()
            print(f"nprobe={nprobe:<4} rerank={rerank:<5} recall@{args.k}={recall:.3f} single-query "
                  f"{statistics.median(times):.2f}ms (p95 {times[int(0.95 * (len(times) - 1))]:.2f}; "
                  f"process CPU {statistics.median(cpu):.2f}ms)", flush=True)
    print(f"peak rss {peak_gb():.2f}GB ({memory.text()}); load average {load_text()}", flush=True)
    if args.folder is None:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
