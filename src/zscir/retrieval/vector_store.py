"""Vectors on disk: a raw row-major [N, D] float16 / float32 file written by streaming, read in blocks or by row.

The file is `vectors.f16` (or `.f32`) with no header (its size gives N); the index folder's
`index.json` records dtype and dim. Sequential passes read blocks with plain file reads (the page
cache keeps them, the process does not), exact re-ranking gathers a few hundred rows through a
read-only memory map.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from zscir.errors import ZscirError

DTYPES = {"float16": np.float16, "float32": np.float32}


def store_name(dtype: str) -> str:
    """File name of a store of `dtype` ("float16" → vectors.f16)."""
    return f"vectors.f{np.dtype(DTYPES[dtype]).itemsize * 8}"


class VectorStoreWriter:
    """Append [b, D] blocks to a new store file (written under a temporary name, renamed on `close`).

    Args:
        path: the final file path.
        dim: D.
        dtype: "float16" (half the disk, re-ranking error ~1e-3 in cosine) or "float32".
    """

    def __init__(self, path: str | os.PathLike, dim: int, dtype: str = "float16"):
        if dtype not in DTYPES:
            raise ZscirError(f"vector store dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.path, self.dim, self.dtype = Path(path), int(dim), DTYPES[dtype]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".partial")
        self._file = open(self._tmp, "wb")  # noqa: SIM115 (closed in close())
        self.count = 0

    def append(self, block) -> None:
        """Write [b, D] rows (numpy or torch, any float dtype)."""
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != self.dim:
            raise ZscirError(f"vector block has shape {block.shape}, expected [rows, {self.dim}]")
        self._file.write(np.ascontiguousarray(block, dtype=self.dtype).tobytes())
        self.count += block.shape[0]

    def close(self) -> int:
        """Flush, rename into place; returns N."""
        self._file.close()
        os.replace(self._tmp, self.path)
        return self.count


class VectorStore:
    """Read access to a store file.

    Args:
        path: the file.
        dim: D.
        dtype: "float16" or "float32".
    """

    def __init__(self, path: str | os.PathLike, dim: int, dtype: str = "float16"):
        self.path, self.dim, self.dtype = Path(path), int(dim), DTYPES[dtype]
        if not self.path.is_file():
            raise ZscirError(f"{self.path}: missing (incomplete index folder)")
        self.row_bytes = self.dim * np.dtype(self.dtype).itemsize
        size = self.path.stat().st_size
        if size % self.row_bytes:
            raise ZscirError(f"{self.path}: size {size} is not a multiple of a row ({self.row_bytes} bytes)")
        self.count = size // self.row_bytes
        self._map = None

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32 [stop - start, D] (a plain read, no mapping)."""
        start, stop = max(0, start), min(stop, self.count)
        with open(self.path, "rb") as f:
            f.seek(start * self.row_bytes)
            raw = np.fromfile(f, dtype=self.dtype, count=(stop - start) * self.dim)
        return raw.reshape(-1, self.dim).astype(np.float32)

    def blocks(self, rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """(start row, [b, D] float32 block) over the whole store in order."""
        for start in range(0, self.count, rows):
            yield start, self.read(start, start + rows)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """float32 rows at the given indices (any shape of indices; result shape + [D]); -1 → zeros."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.count, self.dim))
        rows = np.asarray(rows)
        flat = rows.reshape(-1)
        out = np.zeros((flat.size, self.dim), dtype=np.float32)
        ok = flat >= 0
        order = np.argsort(flat[ok], kind="stable")  # ascending offsets: friendlier to the disk
        picked = flat[ok][order]
        values = np.empty((picked.size, self.dim), dtype=np.float32)
        values[order] = self._map[picked]
        out[ok] = values
        return out.reshape(*rows.shape, self.dim)

    def sample(self, rows: np.ndarray, block: int = 65536) -> np.ndarray:
        """float32 rows at sorted indices `rows` by one sequential pass (for training samples)."""
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        out = np.empty((rows.size, self.dim), dtype=np.float32)
        filled = 0
        for start, values in self.blocks(block):
            lo, hi = np.searchsorted(rows, [start, start + values.shape[0]])
            out[filled : filled + hi - lo] = values[rows[lo:hi] - start]
            filled += hi - lo
        return out
