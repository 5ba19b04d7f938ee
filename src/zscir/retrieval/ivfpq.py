"""Indexes larger than memory: FAISS IVF-PQ (optionally OPQ) on disk, filled by streaming, re-ranked exactly.

    stream of [b, D] blocks ─► vectors.f16 (the stored vectors, on disk)
                           ─► training sample (seeded rows) ─► [OPQ] + IVF k-means + PQ
                           ─► codes added block by block into on-disk inverted lists (lists.ivfdata)
    query ─► IVF-PQ top-`rerank` candidates (nprobe cells) ─► exact inner products on the stored
             vectors of those candidates ─► top-k

Nothing of size N × D is ever held in memory: peak memory is the training sample, one block, the
coarse centroids, and the PQ codes + ids of the lists a search touches (memory-mapped from disk; with the
4-bit fast-scan codes, `fast_scan`, all codes and ids are in memory: FAISS's fast-scan has no on-disk lists).
`plan_ivfpq` picks nlist, the PQ code size and the sample size from a memory budget; `build_ivfpq`
measures recall@k against exact search on held-out stored rows and keeps the cheapest (nprobe,
rerank) setting that reaches the target recall. FAISS GPUs are used for the k-means when present.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from zscir.errors import ZscirError
from zscir.retrieval.backends import FaissIndex, require_faiss
from zscir.retrieval.vector_store import VectorStore, VectorStoreWriter, store_name

LISTS_NAME = "lists.ivfdata"
PQ_SIZES = (8, 16, 24, 32, 48, 64, 96, 128)  # bytes per vector (nbits = 8): FAISS IVFPQ code sizes
UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30}


def parse_size(text: str | int) -> int:
    """Bytes of "4GB", "512M", "1.5G" or an int (binary units)."""
    if isinstance(text, int):
        return text
    value = str(text).strip().upper().replace("IB", "B")
    number = value.rstrip("KMGB")
    unit = value[len(number):]
    try:
        return int(float(number) * UNITS[unit])
    except (ValueError, KeyError):
        raise ZscirError(f"memory size {text!r}: expected a number with K/M/G (e.g. 4GB)") from None


@dataclass
class IVFPQPlan:
    """Parameters of an IVF-PQ build.

    Attributes:
        nlist: IVF cells.
        pq_bytes: PQ sub-quantizers (bytes per vector at 8 bits each).
        nbits: bits per sub-quantizer code (8; fewer only for galleries of under 256 vectors).
        opq: rotate with OPQ before PQ.
        train_size: vectors in the training sample.
        block_rows: rows per streamed block.
        store_dtype: dtype of the stored vectors used for re-ranking.
        fast_scan: 4-bit fast-scan codes (FAISS IndexIVFPQFastScan, "PQ{2·pq_bytes}x4fs": two sub-quantizers per
            byte, scanned with SIMD lookup tables, 7-9x faster scan than 8-bit codes of the same size, measured in
            BENCHMARKS.md). FAISS's fast-scan keeps its lists in memory (it supports no on-disk lists): the codes
            and ids of all vectors are resident (10M × (96 + 8) bytes = 1.0 GB for 768-dim vectors).
    """

    nlist: int
    pq_bytes: int
    nbits: int = 8
    opq: bool = False
    train_size: int = 0
    block_rows: int = 65536
    store_dtype: str = "float16"
    fast_scan: bool = False

    @property
    def spec(self) -> str:
        """The FAISS index_factory string."""
        m = 2 * self.pq_bytes if self.fast_scan else self.pq_bytes  # sub-quantizers (OPQ rotates in as many blocks)
        pq = f"PQ{m}x4fs" if self.fast_scan else f"PQ{m}x{self.nbits}"
        return f"{f'OPQ{m},' if self.opq else ''}IVF{self.nlist},{pq}"

    def resident_bytes(self, n: int, dim: int) -> int:
        """Estimated peak memory: sample + block + centroids + all codes and ids (if every list is touched)."""
        return 4 * dim * (self.train_size + self.block_rows + self.nlist) + n * (self.pq_bytes + 8) + 4 * dim * dim


def plan_ivfpq(n: int, dim: int, memory_budget: int | str = "4GB", opq: bool = False,
               store_dtype: str = "float16", fast_scan: bool = False) -> IVFPQPlan:
    """Pick IVF-PQ parameters for `n` vectors of size `dim` within a memory budget.

    nlist ≈ sqrt(n) (at most n / 39, FAISS's minimum points per centroid), which keeps the k-means and the
    cell assignment of n vectors affordable on a CPU; the sample holds 64 points per cell (at least 10,000
    for the PQ, capped by n and a quarter of the budget); the PQ code is the largest size that divides
    `dim` into sub-vectors of at least 8 dimensions whose codes + ids of all n vectors take at most half
    of the budget (so the touched lists fit in memory next to the sample).

    Args:
        n: vectors to index.
        dim: D.
        memory_budget: bytes or "4GB".
        opq: add an OPQ rotation.
        store_dtype: "float16" or "float32" stored vectors.
        fast_scan: 4-bit fast-scan codes (`IVFPQPlan.fast_scan`): the same bytes per vector, twice the
            sub-quantizers (2·pq_bytes must divide `dim`; sub-vectors of at least 4 dimensions, 16-centroid
            k-means are cheap to train).
    Returns:
        An IVFPQPlan.
    Raises:
        ZscirError: the budget cannot hold even the smallest code of n vectors.
    """
    budget = parse_size(memory_budget)
    nlist = max(1, min(int(math.sqrt(n)), n // 39))
    block_rows = int(max(1024, min(65536, budget // 32 // (4 * dim))))
    subquantizers = 2 if fast_scan else 1  # per byte
    # fast-scan takes any even number of sub-quantizers: one dimension each (dim / 2 bytes) is the last resort
    sizes = sorted({*PQ_SIZES, dim // 2} - {0}) if fast_scan else PQ_SIZES
    dividing = [m for m in sizes if dim % (subquantizers * m) == 0]
    if not dividing:
        raise ZscirError(f"vectors of size {dim} cannot be product-quantized: the size must be a multiple of one "
                         f"of the code sizes {', '.join(map(str, sizes))} (use the exact or hnsw backend)")
    fitting = [m for m in dividing if n * (m + 8) <= budget // 2]
    if not fitting:
        raise ZscirError(f"memory budget {memory_budget}: too small for {n} vectors "
                         f"(at least {n * (dividing[0] + 8) * 2 / 2**30:.2f} GB for {dividing[0]}-byte codes)")
    # ≥ 8 dimensions per sub-quantizer: FAISS trains 4- and 2-dim sub-quantizers 20-40x slower (measured);
    # vectors too small for that (tiny test models) take the shortest code, whose sub-vectors are longest
    sizes = [m for m in fitting if dim // (subquantizers * m) >= (4 if fast_scan else 8)] or fitting[:1]
    train_size = int(min(n, max(64 * nlist, 10_000), budget // 4 // (4 * dim)))
    nbits = max(1, min(8, int(math.log2(max(2, train_size)))))  # k-means needs ≥ 2^nbits training points
    if fast_scan:
        if train_size < 16:
            raise ZscirError(f"ivfpq fast-scan: {n} vectors are too few for 4-bit codes (at least 16)")
        nbits = 4
    return IVFPQPlan(nlist, sizes[-1], nbits, opq, train_size, block_rows, store_dtype, fast_scan)


@dataclass
class IVFPQIndex(FaissIndex):
    """IVF-PQ with on-disk lists and optional exact re-ranking on the stored vectors.

    params: nlist, pq_bytes, opq, nprobe, rerank (candidates re-ranked exactly; 0 = off), store_dtype,
    and the recall measured at build time. `folder` is where it was built (its files stay there).
    """

    store: VectorStore | None = None
    folder: Path | None = None

    def search(self, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k by IVF-PQ, then (rerank > 0) exact inner products of the top-`rerank` candidates."""
        faiss = require_faiss()
        faiss.extract_index_ivf(self.index).nprobe = int(self.params["nprobe"])
        q = self._queries(queries).numpy()
        k = max(1, min(int(k), self.ntotal))
        rerank = int(self.params.get("rerank", 0))
        candidates = max(k, min(rerank, self.ntotal))
        scores, ids = self.index.search(q, candidates)
        if rerank and self.store is not None:
            vectors = self.store.gather(ids)  # [Q, C, D]
            exact = np.einsum("qcd,qd->qc", vectors, q)
            exact[ids < 0] = -np.inf
            order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
            scores, ids = np.take_along_axis(exact, order, 1), np.take_along_axis(ids, order, 1)
        return torch.from_numpy(np.ascontiguousarray(scores[:, :k])), torch.from_numpy(ids[:, :k]).long()

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None,
                          rerank: int | None = None) -> None:
        """Change `nprobe` or the number of re-ranked candidates without rebuilding."""
        if nprobe is not None:
            self.params["nprobe"] = int(nprobe)
        if rerank is not None:
            self.params["rerank"] = int(rerank)

    def _save_data(self, folder: Path) -> None:
        """The data files were written by the build; only index.json changes (search parameters)."""
        if self.folder is None or Path(folder).resolve() != self.folder.resolve():
            raise ZscirError(f"an ivfpq index lives in its build folder {self.folder}; copy the folder instead")


def _sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))


def write_store(blocks: Iterable, folder: Path, dim: int | None, dtype: str, normalize: bool) -> VectorStore:
    """Stream [b, D] blocks (torch or numpy) into `folder/vectors.f*` (L2-normalised if asked)."""
    writer = None
    for block in blocks:
        x = torch.as_tensor(np.asarray(block) if not torch.is_tensor(block) else block).detach().float().cpu()
        if x.dim() != 2 or not torch.isfinite(x).all():
            raise ZscirError(f"index vectors: a block of shape {tuple(x.shape)} is not a finite [rows, D] matrix")
        if normalize:
            x = torch.nn.functional.normalize(x, dim=-1)
        if writer is None:
            dim = dim or x.shape[1]
            writer = VectorStoreWriter(folder / store_name(dtype), dim, dtype)
        writer.append(x.numpy())
    if writer is None or writer.count == 0:
        raise ZscirError("index vectors: the stream was empty")
    writer.close()
    return VectorStore(folder / store_name(dtype), writer.dim, dtype)


def exact_top_k(store: VectorStore, queries: np.ndarray, k: int, block_rows: int = 65536) -> np.ndarray:
    """[Q, k] exact inner-product neighbours by streaming the store (the slow reference)."""
    best_s = np.full((queries.shape[0], 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((queries.shape[0], 0), dtype=np.int64)
    for start, block in store.blocks(block_rows):
        s = queries @ block.T
        i = np.broadcast_to(np.arange(start, start + block.shape[0]), s.shape)
        s, i = np.concatenate([best_s, s], 1), np.concatenate([best_i, i], 1)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each truth row's ids that appear in the found row."""
    hits = [len(set(f.tolist()) & set(t.tolist())) / t.shape[0] for f, t in zip(found, truth)]
    return float(np.mean(hits))


def build_ivfpq(blocks: Iterable, folder: str | os.PathLike, n: int, dim: int, memory_budget: int | str = "4GB",
                plan: IVFPQPlan | None = None, opq: bool = False, fast_scan: bool = False, normalize: bool = True,
                k: int = 50, target_recall: float = 0.95, heldout: int = 200, nprobes=(8, 16, 32, 64, 128, 256),
                reranks=(0, 200, 500, 1000), seed: int = 0, progress: bool = True) -> IVFPQIndex:
    """Build an on-disk IVF-PQ index from a stream of vector blocks and tune it on held-out rows.

    Args:
        blocks: iterable of [b, D] blocks (one pass), e.g. the chunks of a folder index.
        folder: the index folder (created): vectors.f16, lists.ivfdata (not with fast-scan: its lists are
            inside index.faiss), index.faiss, index.json.
        n: total rows the stream will give (the plan needs it before the stream is read).
        dim: D.
        memory_budget: bytes or "4GB" (`plan_ivfpq`); ignored when `plan` is given.
        plan: explicit parameters.
        opq: OPQ rotation (with the budget's plan).
        fast_scan: 4-bit fast-scan codes, lists in memory (with the budget's plan; `IVFPQPlan.fast_scan`).
        normalize: L2-normalise (cosine similarity).
        k: recall@k is tuned and reported.
        target_recall: the cheapest (nprobe, rerank) reaching it is kept (else the most accurate one).
        heldout: stored rows (outside the training sample) used as queries for the recall measurement.
        nprobes / reranks: the settings tried.
        seed: sample and k-means seed.
        progress: print one line per stage.
    Returns:
        The IVFPQIndex, saved in `folder` (reload with `load_index(folder)`); `params` holds the plan,
        the chosen setting, `recall` (at k, against exact, on the held-out rows) and the sweep.
    """
    faiss = require_faiss()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan = plan or plan_ivfpq(n, dim, memory_budget, opq, fast_scan=fast_scan)
    say = print if progress else (lambda *a, **kw: None)
    times = {}
    start = time.perf_counter()
    store = write_store(blocks, folder, dim, plan.store_dtype, normalize)
    times["store_s"] = time.perf_counter() - start
    n = store.count
    if plan.nlist > n:
        raise ZscirError(f"ivfpq: nlist={plan.nlist} is larger than the number of vectors ({n})")
    train_rows = _sample_rows(n, plan.train_size, seed)
    rest = np.setdiff1d(np.arange(n), train_rows) if n > plan.train_size else np.arange(n)
    query_rows = np.sort(np.random.default_rng(seed + 1).choice(rest, size=min(heldout, rest.size), replace=False))
    say(f"ivfpq: {n} vectors stored ({times['store_s']:.1f}s); training on {train_rows.size} "
        f"(nlist {plan.nlist}, {plan.pq_bytes}-byte codes{', OPQ' if plan.opq else ''}"
        f"{', 4-bit fast-scan' if plan.fast_scan else ''})", flush=True)

    start = time.perf_counter()
    sample = store.sample(train_rows, plan.block_rows)
    spec = plan.spec
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))  # the IndexIVFPQ[FastScan] (under OPQ's transform)
    ivf.cp.seed = seed
    if not plan.fast_scan:
        ivf.do_polysemous_training = False  # index_factory's default; costly and unused by this search
    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:  # k-means of the coarse cells on every visible GPU
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
    index.train(sample)
    del sample
    times["train_s"] = time.perf_counter() - start

    start = time.perf_counter()
    (folder / LISTS_NAME).unlink(missing_ok=True)
    if not plan.fast_scan:  # fast-scan adds only to its own in-memory block lists (FAISS raises otherwise)
        lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(folder / LISTS_NAME))
        lists.update_totsize(2 * n * (ivf.code_size + 8))  # room for every list's doubling once (a sparse file)
        ivf.replace_invlists(lists, True)
        lists.this.disown()
    for _, block in store.blocks(plan.block_rows):
        index.add(block)
    times["add_s"] = time.perf_counter() - start
    faiss.write_index(index, str(folder / "index.faiss"))
    say(f"ivfpq: trained {times['train_s']:.1f}s, filled {times['add_s']:.1f}s", flush=True)

    params = {**asdict(plan), "spec": spec, "k": k, **{key: round(v, 2) for key, v in times.items()}}
    result = IVFPQIndex("ivfpq", dim, n, normalize, params, index=index)
    result.store, result.folder = store, folder
    tune(result, store.sample(query_rows), k, target_recall, nprobes, reranks)
    result.save(folder)
    say(f"ivfpq: nprobe {params['nprobe']}, rerank {params['rerank']}: recall@{k} {params['recall']:.3f} "
        f"against exact on {query_rows.size} held-out rows", flush=True)
    return result


def tune(index: IVFPQIndex, queries: np.ndarray, k: int, target_recall: float, nprobes, reranks,
         timed: int = 20) -> dict:
    """Measure recall@k of each (nprobe, rerank) against exact search; keep the fastest reaching the target.

    Each re-rank depth is swept over increasing nprobe (ending at all cells) until the target is reached; the
    settings that reach it are timed on `timed` one-query searches and the fastest is kept (none reaches it:
    the most accurate).
    Writes `nprobe`, `rerank`, `recall`, `latency_ms` and `sweep` into `index.params`.
    """
    truth = exact_top_k(index.store, queries, k)
    sweep = []
    for rerank in reranks:
        # every cell probed is the last resort, so a small index (nlist below the smallest nprobe) is swept too
        for nprobe in [p for p in nprobes if p < index.params["nlist"]] + [index.params["nlist"]]:
            index.set_search_params(nprobe=nprobe, rerank=rerank)
            _, found = index.search(torch.from_numpy(queries), k)
            sweep.append({"nprobe": nprobe, "rerank": rerank, "recall": round(recall_at(found.numpy(), truth), 4)})
            if sweep[-1]["recall"] >= target_recall:
                break  # a larger nprobe at this rerank only costs more
    reached = [s for s in sweep if s["recall"] >= target_recall]
    for setting in reached:
        index.set_search_params(nprobe=setting["nprobe"], rerank=setting["rerank"])
        begin = time.perf_counter()
        for i in range(timed):
            index.search(torch.from_numpy(queries[i % queries.shape[0]][None]), k)
        setting["latency_ms"] = round((time.perf_counter() - begin) * 1000 / timed, 3)
    best = min(reached, key=lambda s: s["latency_ms"]) if reached else max(sweep, key=lambda s: s["recall"])
    index.set_search_params(nprobe=best["nprobe"], rerank=best["rerank"])
    index.params.update(recall=best["recall"], latency_ms=best.get("latency_ms"), target_recall=target_recall,
                        sweep=sweep, heldout=int(queries.shape[0]))
    return best


def load_ivfpq(folder: Path, common: dict) -> IVFPQIndex:
    """Open a saved ivfpq folder: stored vectors and (not fast-scan) lists stay on disk (memory-mapped)."""
    faiss = require_faiss()
    path = folder / "index.faiss"
    fast_scan = bool(common["params"].get("fast_scan"))
    if not path.is_file() or not (fast_scan or (folder / LISTS_NAME).is_file()):
        raise ZscirError(f"{folder}: index.faiss or {LISTS_NAME} missing (incomplete index folder)")
    flags = 0 if fast_scan else faiss.IO_FLAG_ONDISK_SAME_DIR
    index = IVFPQIndex(**common, index=faiss.read_index(str(path), flags))
    dtype = common["params"].get("store_dtype", "float16")
    index.store, index.folder = VectorStore(folder / store_name(dtype), common["dim"], dtype), folder
    return index
