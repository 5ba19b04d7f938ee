"""OTI tokens on disk, and SEARLE-OTI as a retrieval method (METHODS.md §3).

Long runs go through `invert_to_store`: tokens are written in chunks (atomically) into a folder keyed
by the settings (`TokenStore`), and a rerun skips the images already done. `oti_pseudo_tokens` turns
that into a retrieval method ("SEARLE-OTI"): pseudo tokens for the reference images of a split, ready
for `compose_queries`. The optimiser itself is `zscir.oti.optimise`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from zscir.errors import DataError, ZscirError
from zscir.oti.concepts import ConceptBank
from zscir.oti.optimise import OTIConfig, invert_images
from zscir.registry import default_cache_dir
from zscir.retrieval.features import FeatureCache
from zscir.retrieval.shards import SINGLE, ProcessGroup
from zscir.utils.hashing import hash_parts
from zscir.utils.io import atomic_path, read_json, write_json_atomic

STORE_VERSION = 1
META_NAME = "meta.json"


class TokenStore:
    """A folder of OTI tokens: `meta.json` (what produced them) + `tokens-{label}.safetensors` chunks.

    Each chunk holds `tokens` [n, H] and the `image_embeds` [n, P] they were inverted from (so Phi
    distillation reads its training pairs from the store alone), with the image names in the file's
    metadata; chunks are written atomically, so an interrupted run loses at most the chunk in progress.

    Args:
        folder: the store folder (created).
        meta: the settings the tokens depend on; refused (ZscirError) if the folder holds tokens made
            with different settings. None opens an existing store read-only.
    """

    def __init__(self, folder: str | os.PathLike, meta: dict | None = None):
        self.folder = Path(folder)
        self.inverted = 0  # images this process inverted into the store (`invert_to_store`)
        meta_path = self.folder / META_NAME
        if meta is None:
            if not meta_path.is_file():
                raise DataError(f"{self.folder}: not an OTI token folder (no {META_NAME})")
            self.meta = read_json(meta_path)
            return
        meta = json.loads(json.dumps({"version": STORE_VERSION, **meta}))  # normalise tuples etc.
        if meta_path.is_file():
            found = read_json(meta_path)
            if found != meta:
                diff = _differences(found, meta)
                raise ZscirError(f"{self.folder} holds OTI tokens made with other settings (differs in {diff}); "
                                 "use another output folder or delete it")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(meta_path, meta)
        self.meta = meta

    def _chunks(self) -> list[Path]:
        return sorted(self.folder.glob("tokens-*.safetensors"))

    def index(self) -> dict[str, tuple[Path, int]]:
        """{image name: (chunk file, row)} of every stored token."""
        from safetensors import safe_open

        found = {}
        for path in self._chunks():
            with safe_open(str(path), "pt") as f:
                for row, name in enumerate(json.loads(f.metadata()["names"])):
                    found[name] = (path, row)
        return found

    def write_chunk(self, label: str, names: Sequence[str], tokens: torch.Tensor, image_embeds: torch.Tensor) -> Path:
        """Write chunk `tokens-{label}` (tokens [n, H], image embeddings [n, P]) atomically; returns its path.

        The label names the chunk's place in its image list (`chunk_label`), so processes writing side
        by side never pick the same file and a rerun writes the same files as an uninterrupted run.
        """
        from safetensors.torch import save_file

        path = self.folder / f"tokens-{label}.safetensors"
        with atomic_path(path) as tmp:
            save_file({"tokens": tokens.detach().float().cpu().contiguous(),
                       "image_embeds": image_embeds.detach().float().cpu().contiguous()}, str(tmp),
                      metadata={"names": json.dumps(list(names))})
        return path

    def lookup(self, names: Sequence[str]) -> torch.Tensor:
        """[len(names), H] stored tokens (DataError names the first missing image)."""
        from safetensors.torch import load_file

        index = self.index()
        missing = [n for n in names if n not in index]
        if missing:
            raise DataError(f"{self.folder}: no OTI token for {len(missing)} image(s), e.g. {missing[:3]}")
        loaded: dict[Path, torch.Tensor] = {}
        rows = []
        for name in names:
            path, row = index[name]
            if path not in loaded:
                loaded[path] = load_file(str(path))["tokens"]
            rows.append(loaded[path][row])
        return torch.stack(rows) if rows else torch.empty(0, int(self.meta.get("hidden_size", 0)))

    def pairs(self) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Everything stored: (names, image_embeds [N, P], tokens [N, H]) in chunk order (Phi distillation's data)."""
        from safetensors import safe_open

        names, embeds, tokens = [], [], []
        for path in self._chunks():
            with safe_open(str(path), "pt") as f:
                names += json.loads(f.metadata()["names"])
                embeds.append(f.get_tensor("image_embeds"))
                tokens.append(f.get_tensor("tokens"))
        if not names:
            raise DataError(f"{self.folder}: the OTI token folder is empty; run `zscir invert` first")
        return names, torch.cat(embeds), torch.cat(tokens)


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two nested dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} → {y!r}")
    return out


def store_meta(backbone, bank: ConceptBank | None, config: OTIConfig, features_key: str | None = None) -> dict:
    """The settings OTI tokens depend on (the `TokenStore` guard)."""
    return {"oti": config.result_key(), "text_fingerprint": backbone.text_fingerprint(),
            "hidden_size": backbone.hidden_size,
            "concepts": None if (bank is None or config.phrase_weight == 0) else bank.fingerprint,
            "features": features_key}


def chunk_label(names: Sequence[str], chunk_size: int, chunk: int) -> str:
    """`{hash of the image list and chunk size}-{chunk:05d}`: chunk files of one list sort in list order."""
    return f"{hash_parts(list(names), chunk_size)[:12]}-{chunk:05d}"


class ChunkClaims:
    """First come, first served chunks between independent processes of one run (no launcher, no barrier).

    Before inverting a chunk, `invert_to_store` claims it here; the process that creates the claim file
    first (O_EXCL, atomic on a local file system) inverts it, the others skip it. Processes that go through
    the same stores in the same order therefore share the work as they become free, whatever each one did
    before. A chunk whose claimer died stays missing: the next `invert_to_store` without claims inverts it.

    Args:
        folder: this run's claim folder (created; give every run a new one, and remove it after the run).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def claim(self, store: Path, label: str) -> bool:
        """True if this process is the first to claim chunk `label` of the store folder `store`."""
        path = self.folder / f"{hash_parts(str(Path(store).resolve()))[:16]}-{label}"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


def invert_to_store(backbone, names: Sequence[str], image_embeds: torch.Tensor, bank: ConceptBank | None,
                    config: OTIConfig, folder: str | os.PathLike, chunk_size: int = 256, progress: bool = True,
                    features_key: str | None = None, group: ProcessGroup = SINGLE,
                    claims: ChunkClaims | None = None) -> TokenStore:
    """Resumable OTI over an image list: images already in `folder` are skipped, the rest inverted in chunks.

    The list is cut into fixed chunks of `chunk_size` images; a chunk with images still missing is
    inverted (those images, in batches from the chunk's start) and written as one file. Under several
    processes (`group`) every process agrees on the unfinished chunks, inverts its share of them
    (round robin) and waits for the others. Every image's random streams are seeded by its name and
    each chunk is optimised in the same batches whatever the number of processes, so 1 and N
    processes write the same tokens (bit-identical on the CPU with the same thread count; tested).

    Args:
        backbone / bank / config: as in `invert_images`.
        names: N unique image names.
        image_embeds: [N, P] their embeddings.
        folder: the TokenStore folder (shared by all processes).
        chunk_size: images per chunk file (the unit of resumption and of sharing out).
        features_key: identifies the image features (e.g. the feature-cache key); stored in the meta.
        group: the process group (`zscir.retrieval.shards.process_group`); one process by default.
        claims: share the chunks first come, first served with other processes instead (`ChunkClaims`;
            with the default `group`). The store then holds this process's chunks and those of the others
            that finished: the caller waits for them.
    Returns:
        The TokenStore holding a token for every name (on every process, after all have finished; with
        `claims`, the ones this process claimed); its `inverted` counts the images this process inverted.
    """
    from tqdm.auto import tqdm

    config.check()
    chunk_size = max(1, int(chunk_size))
    meta = store_meta(backbone, bank, config, features_key)
    if group.is_main:
        TokenStore(folder, meta)  # creates the folder and meta.json (or refuses other settings) once
    group.barrier()
    store = TokenStore(folder, meta)
    done = store.index()
    chunks = [range(s, min(s + chunk_size, len(names))) for s in range(0, len(names), chunk_size)]
    todo = [c for c, rows in enumerate(chunks) if any(names[i] not in done for i in rows)]
    group.barrier()  # every process has scanned before any chunk is written: all agree on `todo`
    mine = group.share(todo)
    pending = {c: [i for i in chunks[c] if names[i] not in done] for c in mine}
    with tqdm(total=sum(map(len, pending.values())), desc="OTI", unit="img", disable=not progress or None) as bar:
        for c, rows in pending.items():
            label = chunk_label(names, chunk_size, c)
            if claims is not None and not claims.claim(store.folder, label):
                bar.total -= len(rows)  # another process inverts it
                bar.refresh()
                continue
            chunk_names = [names[i] for i in rows]
            result = invert_images(backbone, image_embeds[rows], bank, config, chunk_names, _bar=bar)
            store.write_chunk(label, chunk_names, result.tokens, image_embeds[rows])
            store.inverted += len(rows)
    group.barrier()
    return store


def features_key(backbone, pad_to_ratio: float | None) -> str:
    """What the image embeddings of a store depend on besides the image itself: vision weights + preprocessing."""
    return hash_parts(backbone.vision_fingerprint(), {"pad_to_ratio": pad_to_ratio})


def settings_dir(root: str | os.PathLike, backbone, bank: ConceptBank | None, config: OTIConfig,
                 pad_to_ratio: float | None = None) -> Path:
    """`root/{hash of the settings}`: a token folder that other settings (another CLIP, OTI recipe or
    concept bank) never reuse, so they get their own folder instead of a refusal."""
    meta = store_meta(backbone, bank, config, features_key(backbone, pad_to_ratio))
    return Path(root) / hash_parts(meta)


def default_oti_dir(backbone, bank: ConceptBank | None, config: OTIConfig, pad_to_ratio: float | None = None) -> Path:
    """`{cache}/oti/{hash of the settings}`: where the SEARLE-OTI helpers keep tokens by default."""
    return settings_dir(default_cache_dir() / "oti", backbone, bank, config, pad_to_ratio)


def oti_tokens_for(backbone, names: Sequence[str], features, bank: ConceptBank | None,
                   config: OTIConfig | None = None, folder: str | os.PathLike | None = None,
                   pad_to_ratio: float | None = None, chunk_size: int = 256, progress: bool = True,
                   claims: ChunkClaims | None = None) -> torch.Tensor | None:
    """Pseudo tokens of named images whose embeddings are already computed; each image is inverted once.

    Args:
        backbone: a `Backbone`.
        names: images to return tokens for (repeats allowed).
        features: an `ImageFeatures` holding them (e.g. `Evaluator.features()`); failed images are refused.
        bank / config: as in `invert_images`.
        folder: TokenStore folder; default `default_oti_dir(...)` (under the zscir cache), shared by every
            image list with the same backbone, preprocessing and settings (tokens are keyed by image name).
        pad_to_ratio: the preprocessing the features were computed with (part of the store's key).
        chunk_size / claims: as in `invert_to_store`; with `claims` nothing is returned (the other
            processes' chunks may still be running).
    Returns:
        [len(names), H] float32 EMA tokens in the order of `names` (None with `claims`).
    Raises:
        DataError: a name without features, or whose image failed to encode.
    """
    config = config or OTIConfig()
    unique = list(dict.fromkeys(names))
    failed = [n for n in unique if n in features.failed]
    if failed:
        raise DataError(f"{len(failed)} image(s) to invert could not be encoded, e.g. {failed[0]}: "
                        f"{features.failed[failed[0]]}")
    embeds = features.lookup(unique)
    key = features_key(backbone, pad_to_ratio)
    folder = folder if folder is not None else default_oti_dir(backbone, bank, config, pad_to_ratio)
    store = invert_to_store(backbone, unique, embeds, bank, config, folder, chunk_size, progress, key,
                            claims=claims)
    return None if claims is not None else store.lookup(list(names))


def oti_pseudo_tokens(backbone, images: Mapping[str, os.PathLike], names: Sequence[str],
                      bank: ConceptBank | None, config: OTIConfig | None = None,
                      folder: str | os.PathLike | None = None, cache=None, pad_to_ratio: float | None = None,
                      chunk_size: int = 256, progress: bool = True) -> torch.Tensor:
    """SEARLE-OTI as a retrieval method: pseudo tokens for named images, inverted once and kept on disk.

    Typical use: `oti_pseudo_tokens(backbone, split.images, [q.reference for q in split.queries], bank)`,
    then `compose_queries(backbone, tokens, [q.captions for q in split.queries])`.

    Args:
        backbone: a `Backbone` with both towers.
        images: {name: path} holding at least `names` (e.g. `CIRSplit.images`).
        names: images to return tokens for (repeats allowed; each is inverted once).
        bank: concepts and phrases (see `ConceptBank.build`).
        config: OTIConfig.
        folder: TokenStore folder (default: see `oti_tokens_for`).
        cache: a `FeatureCache` for the image embeddings (default: the standard one).
        pad_to_ratio: SEARLE target pad (e.g. 1.25) or None.
    Returns:
        [len(names), H] float32 EMA tokens, in the order of `names`.
    Raises:
        DataError: an image missing from `images` or that does not load.
    """
    unique = list(dict.fromkeys(names))
    missing = [n for n in unique if n not in images]
    if missing:
        raise DataError(f"{len(missing)} image(s) to invert are not in the image table, e.g. {missing[:3]}")
    cache = cache if cache is not None else FeatureCache(progress=progress)
    feats = cache.image_features(backbone, {n: images[n] for n in unique}, pad_to_ratio, desc="OTI image features")
    return oti_tokens_for(backbone, names, feats, bank, config, folder, pad_to_ratio, chunk_size, progress)


def oti_reference_tokens(evaluator, bank: ConceptBank | None, config: OTIConfig | None = None,
                         folder: str | os.PathLike | None = None, progress: bool = True, chunk_size: int = 256,
                         claims: ChunkClaims | None = None) -> torch.Tensor | None:
    """SEARLE-OTI tokens of an `Evaluator`'s active queries' reference images (its cached features reused).

    Use: `ev.evaluate("phi", pseudo_tokens=oti_reference_tokens(ev, bank))`.

    Returns:
        [Q, H] float32 EMA tokens, rows = `evaluator.split.queries` (None with `claims`, see `oti_tokens_for`).
    """
    refs = [q.reference for q in evaluator.split.queries]
    return oti_tokens_for(evaluator.backbone, refs, evaluator.features(), bank, config, folder,
                          evaluator.pad_to_ratio, chunk_size, progress, claims)
