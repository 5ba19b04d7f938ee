"""Robust image loading and fast integrity checks of many image files."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from zscir.errors import DataError

DECODE_MODES = ("none", "verify", "full")
# The one list of image file suffixes a folder scan picks up (indexing, OTI, generator training).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def load_image(path: str | os.PathLike):
    """Open an image file as an RGB PIL image, fully decoded.

    Args:
        path: the image file.
    Returns:
        A `PIL.Image.Image` in mode "RGB" (palette images with transparency go through RGBA first).
    Raises:
        DataError: the file is missing or cannot be decoded (the message names the path).
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on bad files
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc


def to_rgb(image):
    """An RGB copy of a PIL image, with high-bit-depth grayscale scaled to 8 bits.

    PIL's own `convert("RGB")` clips 16-bit values (mode "I;16", "I") at 255, which turns a 16-bit
    grayscale PNG almost white; here 0..65535 maps to 0..255. Mode "I" holding only 8-bit values
    (max ≤ 255) is taken as 8-bit, mode "F" as 0..1 when its max is ≤ 1 (else 0..255). Palette images with
    transparency go through RGBA first.
    """
    from PIL import Image

    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        import numpy as np

        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
            scale = 255.0 / 65535.0 if peak <= 65535 else 255.0 / peak
        elif image.mode == "F" and peak <= 1.0:
            scale = 255.0
        else:
            scale = 1.0
        gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def try_load_image(path: str | os.PathLike):
    """`load_image` that reports instead of raising: (image, None), or (None, the one-line reason)."""
    try:
        return load_image(path), None
    except DataError as exc:
        return None, str(exc)


def list_images(root: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[str]:
    """Image files under `root`, recursively, as sorted POSIX paths relative to `root`.

    Args:
        root: the folder to scan (hidden sub-folders, e.g. `.git`, are skipped).
        exclude: a folder to leave out (the index folder when it sits inside `root`).
    Returns:
        Relative paths of the non-hidden files with an `IMAGE_EXTENSIONS` suffix (any case).
    """
    root = Path(root)
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for directory, dirs, files in os.walk(root):
        here = Path(directory)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (skip is None or (here / d).resolve() != skip))
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append((here / name).relative_to(root).as_posix())
    return sorted(found)


def list_files(directory: str | os.PathLike) -> set[str]:
    """Names of the regular files directly inside `directory` (empty set if it does not exist).

    One `scandir` replaces a `stat` per image, which matters for 100k-image galleries.

    Args:
        directory: a folder.
    Returns:
        A set of file names (not paths).
    """
    try:
        with os.scandir(directory) as entries:
            return {e.name for e in entries if e.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


@dataclass
class ImageCheckReport:
    """Result of `check_images`.

    Attributes:
        total: number of distinct paths checked.
        missing: paths that do not exist.
        corrupt: (path, reason) for files that exist but do not decode.
    """

    total: int
    missing: list[Path] = field(default_factory=list)
    corrupt: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no image is missing or corrupt."""
        return not self.missing and not self.corrupt

    def summary(self, examples: int = 3) -> str:
        """One line: counts plus a few example paths.

        Args:
            examples: how many example paths to show per kind of problem.
        Returns:
            e.g. "2297 images: all present and decodable" or "2297 images: 3 missing (e.g. ...), 1 undecodable (...)".
        """
        if self.ok:
            return f"{self.total} images: all present and decodable"
        parts = []
        if self.missing:
            shown = ", ".join(str(p) for p in self.missing[:examples])
            parts.append(f"{len(self.missing)} missing (e.g. {shown})")
        if self.corrupt:
            shown = ", ".join(f"{p} [{reason}]" for p, reason in self.corrupt[:examples])
            parts.append(f"{len(self.corrupt)} undecodable (e.g. {shown})")
        return f"{self.total} images: " + ", ".join(parts)


def _decode_error(path: Path, mode: str) -> str | None:
    """None if the file decodes, else a short reason."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if mode == "full":
                image.load()
            else:
                image.verify()  # header + checksums (PNG); cheap, no pixel decode
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def check_images(
    paths: Iterable[str | os.PathLike], decode: str = "verify", workers: int = 8, progress: bool = True
) -> ImageCheckReport:
    """Find missing and undecodable images among `paths`.

    Args:
        paths: image files (duplicates are checked once).
        decode: "none" (existence only), "verify" (PIL `verify`: fast, catches truncated PNGs and
            non-images) or "full" (decode every pixel: slow, catches truncated JPEGs too).
        workers: threads used for decoding (I/O bound).
        progress: show a tqdm bar (hidden when not a TTY).
    Returns:
        An ImageCheckReport (missing and corrupt paths in input order).
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
    unique = list(dict.fromkeys(Path(p) for p in paths))
    by_dir: dict[Path, list[Path]] = defaultdict(list)
    for p in unique:
        by_dir[p.parent].append(p)
    present: set[Path] = set()
    for directory, members in by_dir.items():
        names = list_files(directory)
        present.update(p for p in members if p.name in names)
    report = ImageCheckReport(total=len(unique), missing=[p for p in unique if p not in present])
    if decode == "none":
        return report

    from tqdm.auto import tqdm

    existing = [p for p in unique if p in present]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(tqdm(pool.map(lambda p: _decode_error(p, decode), existing), total=len(existing),
                            desc="checking images", unit="img", disable=None if progress else True))
    report.corrupt = [(p, r) for p, r in zip(existing, reasons) if r is not None]
    return report
