"""Defaults of `zscir serve` without arguments: the synthetic world's gallery and tiny models built by `zscir demo`.

    {cache}/world/data/cirr/dev/       gallery served by `zscir serve` without arguments (CIRR-style val images)
    {cache}/world/synthetic-clip/      the tiny CLIP (registered backbone `synthetic-clip`; the fast world uses
                                       it too unless it trained its own)
    {cache}/world/phi/                 the tiny Phi trained on the world (optional: without it the page
                                       offers the image / text / sum methods)
    {cache}/indexes/world-cirr-dev/    the index built on first use
with {cache} = `zscir.registry.default_cache_dir()`. When only `zscir demo --fast` has run, the same layout
under {cache}/world-fast/ is served instead (index `world-fast-cirr-dev`), with a notice on the page that
its models were trained for seconds.
"""

from __future__ import annotations

from pathlib import Path

from zscir.errors import ZscirError
from zscir.models.backbone import Backbone
from zscir.registry import default_cache_dir
from zscir.retrieval.indexer import MANIFEST_NAME, index_folder

WORLD_BACKBONE = "synthetic-clip"
WORLD_GALLERY = ("data", "cirr", "dev")
WORLD_PHI = "phi"
WORLD_INDEX = "world-cirr-dev"
FULL_WORLD, FAST_WORLD = "world", "world-fast"  # the folders of `zscir demo` and `zscir demo --fast`
FAST_NOTICE = ("these are the models of `zscir demo --fast`, trained for seconds: the ranking is close to "
               "arbitrary. Run `zscir demo` (a few minutes on a CPU) for models that really retrieve.")


def world_dir(name: str = FULL_WORLD) -> Path:
    """`{cache}/world` (or `{cache}/world-fast`), where `zscir demo` builds the synthetic world and its models."""
    return default_cache_dir() / name


def world_backbone(world: Path) -> Path:
    """The tiny CLIP of a world: its own folder when it trained one (`zscir demo --fast --train-clip`), else the
    shipped world CLIP that every demo run unpacks into `{cache}/world/synthetic-clip`."""
    own = world / WORLD_BACKBONE
    return own if own.is_dir() else world_dir(FULL_WORLD) / WORLD_BACKBONE


def served_world() -> Path:
    """The world `zscir serve` uses: the full demo's when it was built, else the fast demo's.

    Raises:
        ZscirError: neither demo has built its gallery and tiny CLIP (the message says what to run).
    """
    for name in (FULL_WORLD, FAST_WORLD):
        folder = world_dir(name)
        if folder.joinpath(*WORLD_GALLERY).is_dir() and world_backbone(folder).is_dir():
            return folder
    full = world_dir(FULL_WORLD)
    raise ZscirError(f"the synthetic gallery and tiny CLIP are missing (looked in {full} and "
                     f"{world_dir(FAST_WORLD)}): run `zscir demo` first (its fast variant is served too), "
                     "or serve an index built with `zscir index`")


def is_fast(world: Path) -> bool:
    """True for the world of `zscir demo --fast` (its models are barely trained)."""
    return world.name == FAST_WORLD


def world_gallery(world: Path | None = None) -> Path:
    """The folder of gallery images served by default."""
    return (world or world_dir()).joinpath(*WORLD_GALLERY)


def world_phi(world: Path | None = None) -> Path | None:
    """The world's trained Phi folder, or None when it has not been trained yet."""
    path = (world or world_dir()) / WORLD_PHI
    return path if path.exists() else None


def default_index_dir(world: Path | None = None) -> Path:
    """Where the default index of a world's gallery lives."""
    name = WORLD_INDEX if world is None or not is_fast(world) else f"{FAST_WORLD}-cirr-dev"
    return default_cache_dir() / "indexes" / name


def ensure_world_index(world: Path | None = None, progress: bool = True) -> Path:
    """The default index folder of a world (default: `served_world()`), built from its gallery on first use.

    Returns:
        The index folder (it holds a manifest).
    Raises:
        ZscirError: the world or its tiny CLIP is absent ("run `zscir demo` first").
    """
    world = world or served_world()
    index_dir = default_index_dir(world)
    if (index_dir / MANIFEST_NAME).is_file():
        return index_dir
    gallery, clip = world_gallery(world), world_backbone(world)
    for needed, what in ((gallery, "synthetic gallery"), (clip, "tiny CLIP")):
        if not needed.exists():
            raise ZscirError(f"the {what} is missing ({needed}): run `zscir demo` first, "
                             "or serve an index built with `zscir index`")
    print(f"indexing the synthetic gallery {gallery} into {index_dir} (first use)")
    report = index_folder(gallery, Backbone.load(str(clip)), index_dir, progress=progress)
    print(report.summary())
    return index_dir
