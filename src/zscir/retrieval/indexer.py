"""Index an image folder for search: resumable, incremental, atomic.

Layout of an index folder (`zscir index --out INDEX`):

    INDEX/manifest.json          written last, atomically: backbone, vision fingerprint, dim, count,
                                 backend, images root, failed files, current snapshot
    INDEX/chunks/chunk-*.safetensors
                                 encoded images: `features` [n, P] float32 (raw, not normalised) with the
                                 relative paths, file stamps (size, mtime) and fingerprint in the metadata;
                                 each written atomically as soon as it is encoded (the unit of resumption)
    INDEX/snapshot-NNNNNN/       the search structure of one build: `zscir.retrieval.index` files
                                 (index.json + vectors / index.faiss) and `ids.json` (row → relative path)

A rerun encodes only files that are new or changed (size or mtime) since they were encoded, drops
files that disappeared, and rebuilds the search structure from the chunks. A killed run keeps its
finished chunks. Files that do not decode are reported, skipped and retried on the next run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zscir.data.images import IMAGE_EXTENSIONS, list_images
from zscir.errors import ZscirError
from zscir.retrieval.features import encode_image_files
from zscir.retrieval.index import BACKENDS, STREAMED_BACKENDS, build_index
from zscir.retrieval.ivfpq import build_ivfpq
from zscir.retrieval.shards import SINGLE, ProcessGroup
from zscir.utils.io import atomic_path, read_json, remove_stale_temps, write_json_atomic

INDEX_VERSION = 1
MANIFEST_NAME = "manifest.json"
IDS_NAME = "ids.json"
CHUNK_DIR = "chunks"
SNAPSHOT_RE = re.compile(r"^snapshot-(\d{6})$")
CHUNK_RE = re.compile(r"^chunk-(\d{6})\.safetensors$")


@dataclass
class IndexReport:
    """What one `index_folder` call did.

    Attributes:
        index_dir: the index folder.
        count: images in the index now.
        encoded: images encoded by this call.
        reused: images whose features came from earlier chunks.
        removed: previously indexed files that no longer exist (dropped).
        failed: {relative path: reason} for files that could not be read (skipped).
        backend: the search backend built.
    """

    index_dir: Path
    count: int
    encoded: int
    reused: int
    removed: int
    failed: dict[str, str] = field(default_factory=dict)
    backend: str = "exact"

    def summary(self) -> str:
        """One line for the CLI."""
        line = (f"{self.index_dir}: {self.count} images indexed ({self.backend}); encoded {self.encoded}, "
                f"reused {self.reused}, removed {self.removed}")
        if self.failed:
            line += f"; skipped {len(self.failed)} unreadable"
        return line


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def read_manifest(index_dir: str | os.PathLike) -> dict:
    """The manifest of a finished index.

    Raises:
        ZscirError: the folder or its manifest is missing (the message says how to build one).
    """
    index_dir = Path(index_dir)
    if not (index_dir / MANIFEST_NAME).is_file():
        what = "does not exist" if not index_dir.exists() else f"has no {MANIFEST_NAME}"
        raise ZscirError(f"index folder {index_dir} {what}; build it with `zscir index`")
    manifest = read_json(index_dir / MANIFEST_NAME)
    if manifest.get("version") != INDEX_VERSION:
        raise ZscirError(f"{index_dir / MANIFEST_NAME}: index version {manifest.get('version')} != {INDEX_VERSION}; "
                         "rebuild it with `zscir index`")
    return manifest


def load_ids(index_dir: str | os.PathLike, manifest: dict | None = None) -> list[str]:
    """Row → relative image path table of the current snapshot."""
    manifest = manifest or read_manifest(index_dir)
    return read_json(Path(index_dir) / manifest["snapshot"] / IDS_NAME)


# ---- chunks -----------------------------------------------------------------------------------------
@dataclass
class _Record:
    stamp: list[int]
    chunk: str
    row: int


class _ChunkFeatures:
    """{chunk file name: [n, P] float32 features}, read on first use and kept for the last `keep` chunks only,
    so that building from the chunks never holds every feature at once (indexes larger than memory)."""

    def __init__(self, chunk_dir: Path, keep: int = 8):
        from collections import OrderedDict

        self.chunk_dir, self.keep, self._cache = chunk_dir, keep, OrderedDict()

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._cache:
            from safetensors import safe_open

            with safe_open(str(self.chunk_dir / name), framework="pt") as f:
                self[name] = f.get_tensor("features").float()
        self._cache.move_to_end(name)
        return self._cache[name]

    def __setitem__(self, name: str, features: torch.Tensor) -> None:
        self._cache[name] = features
        while len(self._cache) > self.keep:
            self._cache.popitem(last=False)


def _read_chunks(chunk_dir: Path, fingerprint: str) -> tuple[dict[str, _Record], _ChunkFeatures, list[Path]]:
    """Records of every encoded file (a later chunk wins), the chunk features (lazy), and unusable chunk files."""
    from safetensors import safe_open

    records: dict[str, _Record] = {}
    tensors = _ChunkFeatures(chunk_dir)
    stale: list[Path] = []
    for path in sorted(chunk_dir.glob("chunk-*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                rows = f.get_slice("features").get_shape()[0]
            paths, stamps = json.loads(meta["paths"]), json.loads(meta["stamps"])
        except Exception:  # truncated or foreign file: its images are simply encoded again
            stale.append(path)
            continue
        if meta.get("fingerprint") != fingerprint or len(paths) != rows:
            stale.append(path)
            continue
        for row, (rel, stamp) in enumerate(zip(paths, stamps)):
            records[rel] = _Record(list(stamp), path.name, row)
    return records, tensors, stale


def _next_number(names, pattern: re.Pattern) -> int:
    numbers = [int(m.group(1)) for n in names if (m := pattern.match(n))]
    return max(numbers, default=-1) + 1


def _write_chunk(path: Path, features: torch.Tensor, paths: list[str], stamps: list[list[int]],
                 fingerprint: str) -> None:
    from safetensors.torch import save_file

    meta = {"paths": json.dumps(paths), "stamps": json.dumps(stamps), "fingerprint": fingerprint}
    with atomic_path(path) as tmp:
        save_file({"features": features.contiguous()}, str(tmp), metadata=meta)


# ---- the job ----------------------------------------------------------------------------------------
def index_folder(
    images_dir: str | os.PathLike,
    backbone,
    index_dir: str | os.PathLike,
    backend: str = "exact",
    chunk_size: int = 256,
    batch_size: int = 32,
    workers: int = 4,
    progress: bool = True,
    index_options: dict | None = None,
    on_chunk: Callable[[int], None] | None = None,
    group: ProcessGroup = SINGLE,
) -> IndexReport:
    """Encode every image under `images_dir` (new or changed files only) and build a search index.

    Args:
        images_dir: folder scanned recursively for image files (`zscir.data.images.list_images`).
        backbone: a `zscir.models.backbone.Backbone` with a vision tower.
        index_dir: output folder (created; may already hold an earlier index of the same folder).
        backend: "exact", "flat", "ivf" or "hnsw" (`zscir.retrieval.index.build_index`), or "ivfpq" (on disk,
            streamed from the chunks, re-ranked exactly: `zscir.retrieval.ivfpq.build_ivfpq`).
        chunk_size: images per chunk file (the unit that survives an interruption).
        batch_size: images per forward pass.
        workers: threads decoding images.
        progress: show a tqdm bar (hidden when not a TTY).
        index_options: extra `build_index` options (nlist, nprobe, m, ef_search, ...) or `build_ivfpq` ones
            (memory_budget, opq, ...).
        on_chunk: called with the number of chunks written so far after each chunk (tests use it to
            simulate an interruption).
        group: the process group (`zscir.retrieval.shards.process_group`): each process encodes its share
            of the new chunks; the main process merges them and builds the index, the others return a
            report of their own share (count 0) without building anything.
    Returns:
        An IndexReport.
    Raises:
        ZscirError: missing folder, no images, no readable image, unknown backend.
    """
    images_dir, index_dir = Path(images_dir).expanduser(), Path(index_dir).expanduser()
    known = BACKENDS + STREAMED_BACKENDS
    if backend not in known:
        raise ZscirError(f"unknown index backend {backend!r}; expected one of {', '.join(known)}")
    if not images_dir.is_dir():
        raise ZscirError(f"image folder {images_dir} does not exist or is not a folder")
    files = list_images(images_dir, exclude=index_dir)
    if not files:
        raise ZscirError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {images_dir}")
    if index_dir.resolve() == images_dir.resolve():
        raise ZscirError("the index folder must not be the image folder itself")

    fingerprint = backbone.vision_fingerprint()
    chunk_dir = index_dir / CHUNK_DIR
    chunk_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(index_dir, recursive=True)  # chunk / snapshot / manifest temp files of a killed run
    records, tensors, stale = _read_chunks(chunk_dir, fingerprint)

    stamps: dict[str, list[int]] = {}
    failed: dict[str, str] = {}
    for rel in files:
        try:
            stamps[rel] = _stamp(images_dir / rel)
        except OSError as exc:  # vanished or unreadable between listing and stat
            failed[rel] = f"{images_dir / rel}: {exc}"
    todo = [rel for rel in files if rel in stamps and (rel not in records or records[rel].stamp != stamps[rel])]
    reused = len(stamps) - len(todo)

    encoded = 0
    # chunk j of this run holds todo[j*chunk_size : (j+1)*chunk_size] and is named number + j, whichever
    # process encodes it: the same batches as one process, so the same features bit for bit
    number = _next_number(os.listdir(chunk_dir), CHUNK_RE)
    parts = [(number + j, todo[s : s + chunk_size]) for j, s in enumerate(range(0, len(todo), chunk_size))]
    group.barrier()  # every process has scanned the chunks before any new one appears
    if group.is_main:
        for path in stale:  # chunks of other weights or damaged files: useless from now on
            path.unlink(missing_ok=True)
    mine = group.share(parts)
    if mine:
        from tqdm.auto import tqdm

        written = 0
        total = sum(len(part) for _, part in mine)
        with tqdm(total=total, desc="index images", unit="img", disable=None if progress else True) as bar, \
                ThreadPoolExecutor(max(1, workers)) as pool:
            for chunk_number, part in mine:
                done, features, reasons = encode_image_files(backbone, [images_dir / rel for rel in part], pool,
                                                             None, batch_size, bar)
                failed.update({part[j]: reason for j, reason in reasons.items()})
                rows = [part[j] for j in done]
                if rows:
                    name = f"chunk-{chunk_number:06d}.safetensors"
                    _write_chunk(chunk_dir / name, features, rows, [stamps[r] for r in rows], fingerprint)
                    tensors[name] = features
                    records.update({rel: _Record(stamps[rel], name, i) for i, rel in enumerate(rows)})
                    encoded += len(rows)
                written += 1
                if on_chunk is not None:
                    on_chunk(written)
    if group.world > 1:
        shares = group.gather((encoded, failed))  # also waits for every process to finish its chunks
        if not group.is_main:  # the main process merges and builds; this one only reports its share
            return IndexReport(index_dir, 0, encoded, 0, 0, failed, backend)
        encoded = sum(n for n, _ in shares)
        failed = {rel: reason for _, share in shares for rel, reason in share.items()}
        records, tensors, _ = _read_chunks(chunk_dir, fingerprint)  # the chunks of every process

    live = [rel for rel in files if rel in records and rel in stamps and rel not in failed]
    if not live:
        raise ZscirError(f"none of the {len(files)} images under {images_dir} could be read "
                         f"(e.g. {next(iter(failed.values()), '?')})")
    previous = _previous_paths(index_dir)
    removed = len(previous - set(files)) if previous is not None else 0

    snapshot = f"snapshot-{_next_number(os.listdir(index_dir), SNAPSHOT_RE):06d}"
    dim = backbone.projection_dim
    if backend in STREAMED_BACKENDS:  # on disk, from the chunks block by block: never N x P in memory
        blocks = (torch.stack([tensors[records[rel].chunk][records[rel].row] for rel in live[s : s + 4096]])
                  for s in range(0, len(live), 4096))
        index = build_ivfpq(blocks, index_dir / snapshot, len(live), dim, progress=progress, **(index_options or {}))
    else:
        vectors = torch.stack([tensors[records[rel].chunk][records[rel].row] for rel in live])  # [N, P]
        index = build_index(vectors, backend=backend, **(index_options or {}))
        index.save(index_dir / snapshot)
    write_json_atomic(index_dir / snapshot / IDS_NAME, live, indent=None)
    write_json_atomic(index_dir / MANIFEST_NAME, {
        "version": INDEX_VERSION, "backbone": _portable_name(backbone.name), "vision_fingerprint": fingerprint,
        "dim": dim, "count": len(live), "backend": backend, "index_params": index.params,
        "images_root": str(images_dir.resolve()), "snapshot": snapshot, "failed": failed,
    })
    _cleanup(index_dir, snapshot, chunk_dir, {records[rel].chunk for rel in live})
    return IndexReport(index_dir, len(live), encoded, reused, removed, failed, backend)


def _portable_name(name: str) -> str:
    """A backbone folder given relative to the cwd is stored absolute (the index may be used elsewhere)."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def _previous_paths(index_dir: Path) -> set[str] | None:
    try:
        return set(load_ids(index_dir))
    except (ZscirError, KeyError, OSError):
        return None


def _cleanup(index_dir: Path, keep_snapshot: str, chunk_dir: Path, live_chunks: set[str]) -> None:
    """Remove older snapshots and chunks that no longer hold a live image (after the manifest moved on)."""
    for entry in os.listdir(index_dir):
        if SNAPSHOT_RE.match(entry) and entry != keep_snapshot:
            shutil.rmtree(index_dir / entry, ignore_errors=True)
    for entry in os.listdir(chunk_dir):
        if CHUNK_RE.match(entry) and entry not in live_chunks:
            (chunk_dir / entry).unlink(missing_ok=True)
