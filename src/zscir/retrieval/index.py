"""One nearest-neighbour index interface: an exact torch backend and FAISS backends (flat, IVF, HNSW).

All backends rank by inner product; `build_index` L2-normalises the vectors (and `search` the
queries) by default, so scores are cosine similarities. FAISS is imported lazily (`zscir[index]`).

Saved form: a folder with `index.json` ({backend, dim, ntotal, params}) and either
`vectors.safetensors` (exact) or `index.faiss`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.errors import ZscirError, require
from zscir.utils.io import atomic_path, read_json, write_json_atomic

BACKENDS = ("exact", "flat", "ivf", "hnsw")  # built in memory by build_index
STREAMED_BACKENDS = ("ivfpq",)  # built on disk from a stream of blocks (zscir.retrieval.ivfpq.build_ivfpq)
META_NAME = "index.json"
CHUNK_ELEMENTS = 1 << 24  # exact search: query rows per matmul so that [rows, N] stays around this size


def _as_matrix(vectors, what: str) -> torch.Tensor:
    x = torch.as_tensor(vectors).detach().float().cpu()
    if x.dim() != 2 or x.shape[0] == 0:
        raise ZscirError(f"{what} must be a non-empty [N, D] matrix, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ZscirError(f"{what} contain NaN or inf")
    return x


@dataclass
class Index:
    """Base of the backends. `search` returns (scores [Q, k] float32, indices [Q, k] long), best first.

    Attributes:
        backend: one of BACKENDS.
        dim: vector size D.
        ntotal: number of indexed vectors.
        normalize: whether vectors / queries are L2-normalised before the inner product.
        params: backend options (nlist, nprobe, m, ef_search, ...).
    """

    backend: str
    dim: int
    ntotal: int
    normalize: bool = True
    params: dict = field(default_factory=dict)

    def _queries(self, queries) -> torch.Tensor:
        q = _as_matrix(queries, "queries")
        if q.shape[1] != self.dim:
            raise ZscirError(f"queries have dimension {q.shape[1]}, the index has {self.dim}")
        return F.normalize(q, dim=-1) if self.normalize else q

    def search(self, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k neighbours of each query.

        Args:
            queries: [Q, D] torch tensor or numpy array.
            k: neighbours per query (clamped to the index size).
        Returns:
            (scores [Q, k'], indices [Q, k']) with k' = min(k, ntotal); FAISS may return -1 for
            rows it could not fill (approximate backends with too few probed cells).
        """
        raise NotImplementedError

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index to `folder` (atomic per file); reload with `load_index(folder)`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_data(folder)
        write_json_atomic(folder / META_NAME, {"backend": self.backend, "dim": self.dim, "ntotal": self.ntotal,
                                               "normalize": self.normalize, "params": self.params})
        return folder

    def _save_data(self, folder: Path) -> None:
        raise NotImplementedError


@dataclass
class ExactIndex(Index):
    """Brute force in torch: batched matmul + topk. `vectors` is [N, D] (already normalised if asked)."""

    vectors: torch.Tensor | None = None

    def search(self, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        q = self._queries(queries)
        k = max(1, min(int(k), self.ntotal))
        step = max(1, CHUNK_ELEMENTS // self.ntotal)
        scores, indices = [], []
        for start in range(0, q.shape[0], step):
            top = torch.topk(q[start : start + step] @ self.vectors.T, k, dim=1)  # [rows, N] -> [rows, k]
            scores.append(top.values)
            indices.append(top.indices)
        return torch.cat(scores), torch.cat(indices)

    def _save_data(self, folder: Path) -> None:
        from safetensors.torch import save_file

        with atomic_path(folder / "vectors.safetensors") as tmp:
            save_file({"vectors": self.vectors.contiguous()}, str(tmp))


@dataclass
class FaissIndex(Index):
    """A FAISS inner-product index (flat, IVF-flat or HNSW-flat)."""

    index: object = None

    def search(self, queries, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.set_search_params(**{n: self.params[n] for n in ("nprobe", "ef_search") if n in self.params})
        q = self._queries(queries).numpy()
        k = max(1, min(int(k), self.ntotal))
        scores, indices = self.index.search(q, k)
        return torch.from_numpy(scores), torch.from_numpy(indices).long()

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change IVF `nprobe` or HNSW `efSearch` (accuracy / speed) without rebuilding."""
        faiss = require_faiss()
        if nprobe is not None and self.backend == "ivf":
            self.params["nprobe"] = int(nprobe)
            faiss.extract_index_ivf(self.index).nprobe = int(nprobe)
        if ef_search is not None and self.backend == "hnsw":
            self.params["ef_search"] = int(ef_search)
            self.index.hnsw.efSearch = int(ef_search)

    def _save_data(self, folder: Path) -> None:
        faiss = require_faiss()
        with atomic_path(folder / "index.faiss") as tmp:
            faiss.write_index(self.index, str(tmp))


def require_faiss():
    """Import faiss or raise MissingExtraError naming `zscir[index]`."""
    return require("faiss", "index")


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
    x = _as_matrix(vectors, "index vectors")
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
        from zscir.retrieval.ivfpq import load_ivfpq  # at call time: ivfpq builds on this module

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
