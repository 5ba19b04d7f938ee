"""Benchmark: 8-bit IVF-PQ against 4-bit fast-scan IVF-PQ (IndexIVFPQFastScan) in the same run, both re-ranked exactly.

N × 768 vectors of `bench_index.py`'s generator (near a 32-dim subspace) are generated in blocks and kept as
float16 (the stored vectors `zscir.retrieval.ivfpq` re-ranks on) while the exact float32 top-50 of 100 fresh
queries is accumulated; then each FAISS spec (NL = sqrt(N) cells) is trained on the same sample, filled and
swept over nprobe × rerank: recall@50 against exact float32 and the median process CPU time of 50 one-query
searches (FAISS and torch on one thread). Both keep their lists in memory, so the ratio is the code scan and
the re-rank, not the disk.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nice -n 10 python benchmarks/bench_fastscan.py --n 200000 \
        --specs "IVFNL,PQ96x8;IVFNL,PQ192x4fs;IVFNL,PQ96x4fs" --nprobes 64,128,256 --reranks 0,500,1000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_index import sample  # noqa: E402  (the same generator as the other index benchmarks)

DIM, K, BLOCK, QUERIES = 768, 50, 50_000, 100


def generate(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(float16 [n, D] vectors, float32 [Q, D] queries, [Q, K] exact float32 neighbours), block by block."""
    queries = sample(QUERIES, DIM, 32, torch.Generator().manual_seed(99)).numpy()
    gen = torch.Generator().manual_seed(0)
    stored = np.empty((n, DIM), np.float16)
    best_s, best_i = np.full((QUERIES, 0), -np.inf, np.float32), np.zeros((QUERIES, 0), np.int64)
    for start in range(0, n, BLOCK):
        block = sample(min(BLOCK, n - start), DIM, 32, gen).numpy()
        stored[start : start + len(block)] = block
        s = np.concatenate([best_s, queries @ block.T], 1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(block)), (QUERIES, len(block)))], 1)
        top = np.argpartition(-s, K, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return stored, queries, best_i


def search(index, stored: np.ndarray, queries: np.ndarray, rerank: int) -> np.ndarray:
    """Top-K ids: the index's top max(K, rerank), re-ranked by exact inner products on the stored vectors."""
    _, ids = index.search(queries, max(K, rerank))
    if rerank:
        exact = np.einsum("qcd,qd->qc", stored[np.maximum(ids, 0)].astype(np.float32), queries)
        exact[ids < 0] = -np.inf
        ids = np.take_along_axis(ids, np.argsort(-exact, axis=1, kind="stable")[:, :K], 1)
    return ids[:, :K]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found.tolist(), truth.tolist())]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--specs", default="IVFNL,PQ96x8;IVFNL,PQ192x4fs", help="FAISS factory strings, ';'-separated")
    parser.add_argument("--nprobes", default="64,128,256")
    parser.add_argument("--reranks", default="0,500,1000")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    start = time.time()
    stored, queries, truth = generate(args.n)
    nlist = int(np.sqrt(args.n))
    rows = np.sort(np.random.default_rng(0).choice(args.n, min(args.n, max(64 * nlist, 10_000)), replace=False))
    train = stored[rows].astype(np.float32)
    print(f"n {args.n} nlist {nlist} sample {len(train)} generated {time.time() - start:.0f}s load {os.getloadavg()}",
          flush=True)
    for spec in args.specs.split(";"):
        index = faiss.index_factory(DIM, spec.replace("NL", str(nlist)), faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        ivf.cp.seed = 0
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False
        cpu = time.process_time()
        index.train(train)
        train_s, cpu = time.process_time() - cpu, time.process_time()
        for begin in range(0, args.n, BLOCK):
            index.add(stored[begin : begin + BLOCK].astype(np.float32))
        print(f"{spec}: {type(ivf).__name__} {ivf.code_size} bytes/vector, train {train_s:.1f}s add "
              f"{time.process_time() - cpu:.1f}s process CPU; load {os.getloadavg()}", flush=True)
        for rerank in [int(x) for x in args.reranks.split(",")]:
            for nprobe in [int(x) for x in args.nprobes.split(",")]:
                ivf.nprobe = nprobe
                found = search(index, stored, queries, rerank)
                times = []
                for i in range(50):
                    cpu = time.process_time()
                    search(index, stored, queries[i % QUERIES][None], rerank)
                    times.append((time.process_time() - cpu) * 1000)
                print(f"  {spec} nprobe={nprobe} rerank={rerank} recall@50={recall(found, truth):.3f} "
                      f"cpu/query {statistics.median(times):.2f}ms", flush=True)
        del index
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
