"""On-disk cache of image features (and of small derived tensors such as query matrices).

Image features are computed once per key = (backbone vision fingerprint, preprocessing, ordered
list of (name, path, file stamp)) and stored under `{cache_dir}/images/{key}/` as chunk files
(`chunk-00000.safetensors`, ...) plus an `index.json`. Chunks are written atomically as they finish,
so a killed extraction keeps its finished chunks and the rerun only encodes the rest (and removes
the temp files the killed one left). Any change of the weights, the image processor, the dtype, the
target-pad option, the image list or a file changes the key: the stamp of a file is its size,
modification and status-change times (a file replaced in place, even with its old mtime restored,
gets a new ctime), or with `content_hash=True` the SHA-256 of its bytes (slower: reads every file).

Images that are missing or do not decode are not cached as failures: their rows are marked invalid
and retried on the next run (the user may have fixed them). The caller decides whether a failure
stops the run (`ImageFeatures.failed`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zscir.data.images import try_load_image
from zscir.errors import ZscirError
from zscir.registry import default_cache_dir
from zscir.retrieval.shards import SINGLE, ProcessGroup
from zscir.utils.hashing import hash_parts
from zscir.utils.io import atomic_path, remove_stale_temps, write_json_atomic

CACHE_VERSION = 2  # 2: file stamps in the key
INDEX_NAME = "index.json"


def default_feature_dir() -> Path:
    """`zscir.registry.default_cache_dir()/features` (`$ZSCIR_CACHE/features`)."""
    return default_cache_dir() / "features"


@dataclass
class ImageFeatures:
    """Image embeddings of a list of named images.

    Attributes:
        names: image names, the rows of `features`.
        features: [N, P] float32 CPU embeddings, not normalised (Phi reads raw embeddings).
            Rows of failed images are zero.
        failed: {name: reason} for images that are missing or do not decode.
        rows: {name: row} for O(1) lookups.
        num_encoded: how many images this call actually encoded (0 when fully cached).
        key: the cache key (folder name) or None when not cached.
    """

    names: list[str]
    features: torch.Tensor
    failed: dict[str, str] = field(default_factory=dict)
    num_encoded: int = 0
    key: str | None = None

    def __post_init__(self):
        self.rows = {name: i for i, name in enumerate(self.names)}

    def lookup(self, names: Sequence[str]) -> torch.Tensor:
        """[len(names), P] features of the given names (KeyError names the first unknown one)."""
        try:
            index = torch.tensor([self.rows[n] for n in names], dtype=torch.long)
        except KeyError as exc:
            raise KeyError(f"image {exc.args[0]!r} has no features (not in the encoded list)") from None
        return self.features.index_select(0, index) if len(index) else self.features[:0]


def _stat_stamp(path: Path) -> list[int] | None:
    """(size, mtime_ns, ctime_ns) of a file, None when it is missing (a file that appears changes the key)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _content_stamp(path: Path) -> str | None:
    """SHA-256 of a file's bytes, None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def encode_image_files(backbone, paths: Sequence[os.PathLike], pool: Executor, pad_to_ratio: float | None = None,
                       batch_size: int = 64, bar=None) -> tuple[list[int], torch.Tensor, dict[int, str]]:
    """Decode image files on `pool`'s threads and encode them, `batch_size` per forward pass.

    The one decode + encode loop of the feature cache and the folder indexer; a file that does not
    load is reported, never fatal.

    Args:
        backbone: a `Backbone` with a vision tower.
        paths: the files, in order.
        pool: an executor whose threads decode the images (`zscir.data.images.try_load_image`).
        pad_to_ratio: SEARLE target pad ratio (e.g. 1.25) or None.
        batch_size: images per forward pass.
        bar: a progress bar advanced by each batch, or None.
    Returns:
        (positions in `paths` of the decoded files, [len(positions), P] their raw embeddings,
        {position: reason} of the files that did not load).
    """
    positions: list[int] = []
    encoded: list[torch.Tensor] = []
    failed: dict[int, str] = {}
    for start in range(0, len(paths), batch_size):
        batch = range(start, min(start + batch_size, len(paths)))
        loaded = list(pool.map(try_load_image, [paths[i] for i in batch]))
        ok = [(i, image) for i, (image, _) in zip(batch, loaded) if image is not None]
        failed.update({i: reason for i, (_, reason) in zip(batch, loaded) if reason is not None})
        if ok:
            encoded.append(backbone.encode_pixels(backbone.preprocess([image for _, image in ok], pad_to_ratio)))
            positions.extend(i for i, _ in ok)
        if bar is not None:
            bar.update(len(batch))
    features = torch.cat(encoded) if encoded else torch.zeros(0, backbone.projection_dim)
    return positions, features, failed


class FeatureCache:
    """Encode images once per (backbone, preprocessing, image list) and reuse the result.

    Args:
        cache_dir: root folder; None → `default_feature_dir()`. `enabled=False` keeps nothing on disk.
        chunk_size: images per chunk file (the unit of resumption).
        workers: threads that decode images while the model runs.
        progress: show tqdm bars (hidden when not a TTY).
        content_hash: stamp files by the SHA-256 of their bytes instead of (size, mtime, ctime).
        group: the process group (`zscir.retrieval.shards.process_group`): under several processes each
            encodes its share of the unfinished chunks and every process returns the merged result.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None, chunk_size: int = 1024, workers: int = 4,
                 progress: bool = True, enabled: bool = True, content_hash: bool = False,
                 group: ProcessGroup = SINGLE):
        self.root = Path(cache_dir) if cache_dir is not None else default_feature_dir()
        self.chunk_size = max(1, int(chunk_size))
        self.workers = max(1, int(workers))
        self.progress = progress
        self.enabled = enabled
        self.content_hash = content_hash
        self.group = group
        if group.world > 1 and not enabled:
            raise ZscirError("encoding across several processes needs the feature cache on disk (it is disabled)")

    # ---- keys ---------------------------------------------------------------------------------
    @staticmethod
    def image_key(vision_fingerprint: str, images: Mapping[str, os.PathLike], pad_to_ratio: float | None,
                  content_hash: bool = False, workers: int = 4) -> str:
        """Cache key of an image list (and of what the files hold) under a backbone and preprocessing.

        Args:
            vision_fingerprint: `Backbone.vision_fingerprint()` (weights, image processor and dtype).
            images: ordered {name: path}.
            pad_to_ratio: the target-pad ratio (None = plain CLIP preprocessing).
            content_hash: stamp each file by its SHA-256 instead of (size, mtime, ctime).
            workers: threads that stat / hash the files.
        Returns:
            A hex string, the folder name under `{cache_dir}/images/`.
        """
        paths = [Path(p).expanduser().absolute() for p in images.values()]
        stamp = _content_stamp if content_hash else _stat_stamp
        with ThreadPoolExecutor(max(1, workers)) as pool:
            stamps = list(pool.map(stamp, paths))
        listing = [[name, str(p), st] for name, p, st in zip(images, paths, stamps)]
        return hash_parts(CACHE_VERSION, vision_fingerprint, {"pad_to_ratio": pad_to_ratio}, listing)

    # ---- image features -----------------------------------------------------------------------
    def image_features(self, backbone, images: Mapping[str, os.PathLike], pad_to_ratio: float | None = None,
                       batch_size: int = 64, desc: str = "image features") -> ImageFeatures:
        """Embeddings of every image in `images`, from the cache where possible.

        Args:
            backbone: a `Backbone` with a vision tower.
            images: ordered {name: path}; encode the union of gallery and references here once.
            pad_to_ratio: SEARLE target pad ratio (e.g. 1.25) or None.
            batch_size: images per forward pass.
            desc: label of the progress bar.
        Returns:
            ImageFeatures (failed images listed in `.failed`, their rows zero).
        """
        names = list(images)
        paths = [Path(images[n]) for n in names]
        dim = backbone.projection_dim
        key = folder = None
        if self.enabled:
            fingerprint = backbone.vision_fingerprint()
            key = self.image_key(fingerprint, images, pad_to_ratio, self.content_hash, self.workers)
            folder = self.root / "images" / key
            remove_stale_temps(folder)  # chunks a killed extraction was writing
            self._write_index(folder, key, names, paths, dim, pad_to_ratio, backbone.name, fingerprint)
        chunks = [slice(s, min(s + self.chunk_size, len(names))) for s in range(0, len(names), self.chunk_size)]
        features = torch.zeros(len(names), dim)
        valid = torch.zeros(len(names), dtype=torch.bool)
        failed: dict[str, str] = {}
        todo: list[int] = []
        for c, rows in enumerate(chunks):
            stored = self._read_chunk(folder, c, rows.stop - rows.start, dim) if folder is not None else None
            if stored is None:
                todo.append(c)
            else:
                features[rows], valid[rows] = stored[:2]
                if not bool(stored[1].all()):
                    todo.append(c)  # retry the failed images of an otherwise finished chunk
        num_encoded = 0
        self.group.barrier()  # every process has scanned before any writes: all agree on `todo`
        mine = self.group.share(todo)
        if mine:
            from tqdm.auto import tqdm

            total = sum(int((~valid[chunks[c]]).sum()) for c in mine)
            with tqdm(total=total, desc=desc, unit="img", disable=None if self.progress else True) as bar, \
                    ThreadPoolExecutor(self.workers) as pool:
                for c in mine:
                    rows = chunks[c]
                    pending = [i for i in range(rows.start, rows.stop) if not valid[i]]
                    done, encoded, reasons = encode_image_files(backbone, [paths[i] for i in pending], pool,
                                                                pad_to_ratio, batch_size, bar)
                    chunk_failed = {pending[j] - rows.start: reason for j, reason in reasons.items()}
                    failed.update({names[pending[j]]: reason for j, reason in reasons.items()})
                    if done:
                        index = torch.tensor([pending[j] for j in done])
                        features[index] = encoded
                        valid[index] = True
                        num_encoded += len(done)
                    if folder is not None:
                        self._write_chunk(folder, c, features[rows], valid[rows], chunk_failed)
        if self.group.world > 1:  # merge: read the chunks the other processes wrote
            self.group.barrier()
            for c in set(todo) - set(mine):
                rows = chunks[c]
                stored = self._read_chunk(folder, c, rows.stop - rows.start, dim)
                if stored is not None:
                    features[rows], valid[rows] = stored[:2]
                    failed.update({names[rows.start + int(i)]: r for i, r in stored[2].items()})
        for i in (~valid).nonzero().flatten().tolist():
            failed.setdefault(names[i], f"{paths[i]}: not encoded")
        return ImageFeatures(names, features, failed, num_encoded, key)

    # ---- derived tensors (query matrices, pseudo tokens) ---------------------------------------
    def tensor(self, kind: str, key_parts: Sequence, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A small derived tensor, computed once per key and then read from `{cache_dir}/{kind}/{key}`.

        Args:
            kind: folder name, e.g. "queries".
            key_parts: JSON-serialisable parts that determine the result completely (fingerprints,
                prompts, the image-feature key, ...).
            compute: called on a cache miss.
        Returns:
            The tensor (float32, CPU).
        """
        if not self.enabled:
            return compute()
        from safetensors.torch import load_file, save_file

        path = self.root / kind / f"{hash_parts(CACHE_VERSION, *key_parts)}.safetensors"
        remove_stale_temps(path.parent)
        if path.is_file():
            try:
                return load_file(str(path))["tensor"]
            except Exception:  # a damaged file is recomputed, never trusted
                pass
        value = compute()
        with atomic_path(path) as tmp:
            save_file({"tensor": value.detach().float().cpu().contiguous()}, str(tmp))
        return value

    # ---- files --------------------------------------------------------------------------------
    def _write_index(self, folder: Path, key: str, names, paths, dim, pad_to_ratio, backbone_name,
                     fingerprint) -> None:
        if (folder / INDEX_NAME).is_file():
            return
        write_json_atomic(folder / INDEX_NAME, {
            "version": CACHE_VERSION, "key": key, "backbone": backbone_name,
            "vision_fingerprint": fingerprint, "pad_to_ratio": pad_to_ratio,
            "dim": dim, "chunk_size": self.chunk_size, "names": names, "paths": [str(p) for p in paths],
        }, indent=None)

    def _chunk_path(self, folder: Path, c: int) -> Path:
        return folder / f"chunk-{self.chunk_size}-{c:05d}.safetensors"

    def _read_chunk(self, folder: Path, c: int, rows: int, dim: int):
        """(features [rows, dim], valid [rows], {row in chunk: failure reason}) or None (missing / unusable)."""
        from safetensors import safe_open

        path = self._chunk_path(folder, c)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                feats, valid = f.get_tensor("features"), f.get_tensor("valid").bool()
                reasons = json.loads((f.metadata() or {}).get("failed", "{}"))
        except Exception:  # truncated / foreign file: recompute that chunk
            return None
        if tuple(feats.shape) != (rows, dim) or tuple(valid.shape) != (rows,):
            return None
        return feats.float(), valid, reasons

    def _write_chunk(self, folder: Path, c: int, feats: torch.Tensor, valid: torch.Tensor,
                     failed: Mapping[int, str] | None = None) -> None:
        """One chunk file; `failed` = {row in chunk: reason} (kept so a merging process can report it)."""
        from safetensors.torch import save_file

        meta = {"failed": json.dumps({str(i): r for i, r in (failed or {}).items()})}
        with atomic_path(self._chunk_path(folder, c)) as tmp:
            save_file({"features": feats.contiguous(), "valid": valid.to(torch.uint8).contiguous()}, str(tmp),
                      metadata=meta)
