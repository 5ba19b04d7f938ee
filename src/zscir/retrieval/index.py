"""Build, load and compare nearest-neighbour indexes: exact (torch), FAISS flat / IVF / HNSW, and IVF-PQ on disk.

The in-memory backends are in `zscir.retrieval.backends`, IVF-PQ in `zscir.retrieval.ivfpq`; this module
is the one door to all of them.

All backends rank by inner product; `build_index` L2-normalises the vectors (and `search` the
queries) by default, so scores are cosine similarities. FAISS is imported lazily (`zscir[index]`).

Saved form: a folder with `index.json` ({backend, dim, ntotal, params}) and either
`vectors.safetensors` (exact) or `index.faiss`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch.nn.functional as F

from zscir.errors import ZscirError
from zscir.retrieval.backends import META_NAME, ExactIndex, FaissIndex, Index, as_matrix, require_faiss
from zscir.retrieval.ivfpq import load_ivfpq
from zscir.utils.io import read_json

BACKENDS = ("exact", "flat", "ivf", "hnsw")  # built in memory by build_index
STREAMED_BACKENDS = ("ivfpq",)  # built on disk from a stream of blocks (zscir.retrieval.ivfpq.build_ivfpq)
def build_index(vectors, backend: str = "exact", normalize: bool = True, nlist: int | None = None, nprobe: int = 8,
                m: int = 32, ef_construction: int = 80, ef_search: int = 64, seed: int = 0) -> Index:
    """Build an inner-product index over `vectors`.

    Args:
        vectors: [N, D] gallery vectors (torch or numpy).
        backend: "exact" (torch), "flat" (FAISS IndexFlatIP, exact), "ivf" (IndexIVFFlat, approximate) or
            "hnsw" (IndexHNSWFlat, approximate).
        normalize: L2-normalise vectors and queries (cosine similarity).
        nlist: IVF cells; default ≈ 4·sqrt(N), at most N / 39 so that k-means has enough points per cell.
        nprobe: IVF cells visited per query.
        m: HNSW neighbours per node.
        ef_construction / ef_search: HNSW candidate-list sizes at build / search time.
        seed: k-means seed of IVF training.
    Returns:
        An `Index` (ExactIndex or FaissIndex).
    """
    if backend not in BACKENDS:
        raise ZscirError(f"unknown index backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    x = as_matrix(vectors, "index vectors")
    if normalize:
        x = F.normalize(x, dim=-1)
    n, d = x.shape
    if backend == "exact":
        return ExactIndex("exact", d, n, normalize, {}, vectors=x.contiguous())
    faiss = require_faiss()
    data = x.numpy()
    if backend == "flat":
        index, params = faiss.IndexFlatIP(d), {}
    elif backend == "ivf":
        nlist = int(nlist) if nlist else max(1, min(int(4 * n ** 0.5), n // 39))
        if nlist > n:
            raise ZscirError(f"ivf: nlist={nlist} is larger than the number of vectors ({n})")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(data)
        params = {"nlist": nlist, "nprobe": int(nprobe)}
    else:  # hnsw
        index = faiss.IndexHNSWFlat(d, int(m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        params = {"m": int(m), "ef_construction": int(ef_construction), "ef_search": int(ef_search)}
    index.add(data)
    return FaissIndex(backend, d, n, normalize, params, index=index)


def load_index(folder: str | os.PathLike) -> Index:
    """Load an index written by `Index.save`.

    Args:
        folder: the saved folder.
    Returns:
        The index, with its saved search parameters.
    """
    folder = Path(folder)
    meta = read_json(folder / META_NAME)
    backend = meta.get("backend")
    if backend not in BACKENDS + STREAMED_BACKENDS:
        raise ZscirError(f"{folder / META_NAME}: unknown backend {backend!r}")
    common = dict(backend=backend, dim=int(meta["dim"]), ntotal=int(meta["ntotal"]),
                  normalize=bool(meta.get("normalize", True)), params=dict(meta.get("params", {})))
    if backend == "exact":
        from safetensors.torch import load_file

        path = folder / "vectors.safetensors"
        if not path.is_file():
            raise ZscirError(f"{path}: missing (incomplete index folder)")
        return ExactIndex(**common, vectors=load_file(str(path))["vectors"])
    if backend == "ivfpq":
        return load_ivfpq(folder, common)
    faiss = require_faiss()
    path = folder / "index.faiss"
    if not path.is_file():
        raise ZscirError(f"{path}: missing (incomplete index folder)")
    index = FaissIndex(**common, index=faiss.read_index(str(path)))
    index.set_search_params(nprobe=common["params"].get("nprobe"), ef_search=common["params"].get("ef_search"))
    return index


def recall_against_exact(index: Index, exact: Index, queries, k: int) -> float:
    """Fraction of the exact top-k neighbours that `index` also returns (mean over queries).

    Args:
        index: the index under test (e.g. IVF or HNSW).
        exact: an exact index over the same vectors.
        queries: [Q, D].
        k: neighbours compared.
    Returns:
        Recall in [0, 1]; 1.0 means identical top-k sets.
    """
    _, approx = index.search(queries, k)
    _, truth = exact.search(queries, k)
    hits = (approx[:, :, None] == truth[:, None, :]).any(-1).sum(1)  # [Q]
    return float(hits.double().mean() / truth.shape[1])
