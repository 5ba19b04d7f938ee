"""The in-memory index backends behind `zscir.retrieval.index`: an exact torch index and FAISS indexes.

All rank by inner product; scores are cosine similarities when the index normalises (the default of
`build_index`). FAISS is imported lazily (`zscir[index]`). `Index.save` writes a folder with `index.json`
({backend, dim, ntotal, params}) and either `vectors.safetensors` (exact) or `index.faiss`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.errors import ZscirError, require
from zscir.utils.io import atomic_path, write_json_atomic

META_NAME = "index.json"
CHUNK_ELEMENTS = 1 << 24  # exact search: query rows per matmul so that [rows, N] stays around this size


def as_matrix(vectors, what: str) -> torch.Tensor:
    """`vectors` as a finite float32 CPU [N, D] matrix (N ≥ 1), or a ZscirError naming `what`."""
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
        q = as_matrix(queries, "queries")
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
