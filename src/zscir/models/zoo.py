"""Published inversion networks by name, and hub ids: what `--phi` takes besides a local path.

    --phi searle-vit-b32        a zoo name: fetched once into `{cache}/zoo/`, format (and sha256) checked
    --phi owner/repo            a Hugging Face repo holding a zscir folder (config.json + model.safetensors)
    --phi owner/repo/file.pt    one file of a Hugging Face repo (published {'Phi': ...} or Pic2Word format)
    --phi ./phi_best.pt         a local file or folder (always wins when it exists)

The URLs are the ones the official READMEs and hub entry points use. No hash is published for any of
them; an entry's `sha256` is filled in once a download has been checked (then a changed file is
refused). Offline, the error names the URL and the exact path to put the file at.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from zscir.errors import ModelLoadError, require
from zscir.registry import default_cache_dir
from zscir.utils.io import atomic_path


@dataclass(frozen=True)
class ZooEntry:
    """A published inversion-network checkpoint.

    Attributes:
        name: the `--phi` name.
        url: where it is downloaded from.
        filename: the file name in the cache.
        backbone: the registered backbone it belongs to.
        input_dim / output_dim / hidden_dim: P, H and the hidden width its `{'Phi': ...}` state dict must have.
        sha256: the expected content hash, or None when none is published or recorded.
        source: the official file that names the URL.
    """

    name: str
    url: str
    filename: str
    backbone: str
    input_dim: int
    output_dim: int
    hidden_dim: int
    sha256: str | None
    source: str


ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("searle-vit-b32", "https://github.com/miccunifi/SEARLE/releases/download/weights/SEARLE_ViT-B32.pt",
             "SEARLE_ViT-B32.pt", "ViT-B/32", 512, 512, 2048, None,
             "miccunifi/SEARLE hubconf.py (torch.hub 'searle', backbone ViT-B/32)"),
    ZooEntry("searle-vit-l14", "https://github.com/miccunifi/SEARLE/releases/download/weights/SEARLE_ViT-L14.pt",
             "SEARLE_ViT-L14.pt", "ViT-L/14", 768, 768, 3072, None,
             "miccunifi/SEARLE hubconf.py (torch.hub 'searle', backbone ViT-L/14: SEARLE-XL)"),
    ZooEntry("lincir-vit-l14", "https://huggingface.co/navervision/zeroshot-cir-models/resolve/main/lincir_large.pt",
             "lincir_large.pt", "ViT-L/14", 768, 768, 3072, None,
             "navervision/lincir README.md (demo model file 'LinCIR (VIT-L)')"),
]}

MAX_DOWNLOAD_BYTES = 2 * 1024**3  # a Phi is ~100 MB (bigG); refuse anything absurd


def zoo_dir() -> Path:
    """`{cache}/zoo`: where zoo checkpoints are kept."""
    return default_cache_dir() / "zoo"


def zoo_path(entry: ZooEntry) -> Path:
    """Where the entry's file lives once fetched (and where to put it by hand when offline)."""
    return zoo_dir() / entry.name / entry.filename


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_zoo_file(entry: ZooEntry, path: Path) -> None:
    """Refuse a file whose sha256 (when known) or `{'Phi': ...}` keys and shapes do not match the entry.

    Raises:
        ModelLoadError: naming the file and what differs.
    """
    import torch

    if entry.sha256 is not None:
        found = sha256_of(path)
        if found != entry.sha256:
            raise ModelLoadError(f"{path}: sha256 {found[:16]}… is not the published {entry.name!r} file "
                                 f"({entry.sha256[:16]}…); delete it and fetch again")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable torch checkpoint for {entry.name!r} ({exc})") from exc
    state = checkpoint.get("Phi") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: no 'Phi' state dict (the published format of {entry.name!r})")
    p, h, d = entry.input_dim, entry.output_dim, entry.hidden_dim
    expected = {"layers.0.weight": (d, p), "layers.0.bias": (d,), "layers.3.weight": (d, d), "layers.3.bias": (d,),
                "layers.6.weight": (h, d), "layers.6.bias": (h,)}
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    if shapes != expected:
        raise ModelLoadError(f"{path}: {entry.name!r} ({entry.backbone}) needs the keys and shapes {expected}, "
                             f"found {shapes}")


def fetch(entry: ZooEntry, timeout: float = 30.0) -> Path:
    """The entry's checked file in the cache, downloading it once (atomically) if it is not there.

    Raises:
        ModelLoadError: unreachable URL (one line: which file to put where), HTTP error, bad hash or format.
    """
    import urllib.error
    import urllib.request

    path = zoo_path(entry)
    if path.is_file():
        check_zoo_file(entry, path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as response, atomic_path(path) as tmp:
            size = 0
            with open(tmp, "wb") as out:
                while block := response.read(1 << 20):
                    size += len(block)
                    if size > MAX_DOWNLOAD_BYTES:
                        raise ModelLoadError(f"{entry.url}: more than {MAX_DOWNLOAD_BYTES} bytes; not a Phi")
                    out.write(block)
            try:
                check_zoo_file(entry, Path(tmp))
            except ModelLoadError as exc:
                raise ModelLoadError(f"{entry.url}: {str(exc).split(': ', 1)[-1]}") from exc
    except urllib.error.HTTPError as exc:
        raise ModelLoadError(f"{entry.url}: HTTP {exc.code}; download {entry.name!r} by hand and put it at "
                             f"{path}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelLoadError(f"phi {entry.name!r}: cannot download {entry.url} ({reason}); put the file at "
                             f"{path}") from exc
    return path


def looks_like_hub_id(text: str) -> bool:
    """"owner/repo" or "owner/repo/path/file.pt" (not a relative or absolute local path)."""
    parts = text.split("/")
    return len(parts) >= 2 and all(parts) and not text.startswith((".", "~")) and not os.path.isabs(text)


def fetch_from_hub(spec: str) -> Path:
    """`owner/repo` (a zscir folder: config.json + model.safetensors) or `owner/repo/path/file.pt` from the hub.

    Raises:
        ModelLoadError: hub unreachable / offline, unknown repo or file (one line).
    """
    hub = require("huggingface_hub", "train")
    parts = spec.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
    try:
        if filename is not None:
            return Path(hub.hf_hub_download(repo_id=repo, filename=filename))
        config = Path(hub.hf_hub_download(repo_id=repo, filename="config.json"))
        hub.hf_hub_download(repo_id=repo, filename="model.safetensors")
        return config.parent
    except Exception as exc:
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        what = f"{filename!r} of {repo!r}" if filename else f"config.json + model.safetensors of {repo!r}"
        raise ModelLoadError(f"{spec}: not a local path, not a zoo name ({', '.join(ZOO)}), and {what} could not be "
                             f"fetched from the Hugging Face hub{offline}: {type(exc).__name__}") from exc


def resolve_phi(name_or_path: str | os.PathLike) -> Path:
    """A local path for an inversion network: the path itself, a zoo checkpoint (fetched once), or a hub download.

    Raises:
        ModelLoadError: none of these (names the zoo entries).
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    text = str(name_or_path)
    if text in ZOO:
        return fetch(ZOO[text])
    if looks_like_hub_id(text):
        return fetch_from_hub(text)
    raise ModelLoadError(f"{text}: no such file or folder, nor a zoo name (known: {', '.join(ZOO)}) or a hub id "
                         "(owner/repo or owner/repo/file.pt)")
