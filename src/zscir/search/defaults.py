"""Offline defaults of the search service: the synthetic world's gallery and tiny models built by `zscir demo`.

    {cache}/world/data/cirr/dev/       gallery served by `zscir serve` without arguments (CIRR-style val images)
    {cache}/world/synthetic-clip/      the tiny CLIP (registered backbone `synthetic-clip`)
    {cache}/world/phi/                 the tiny Phi trained on the world (optional: without it the page
                                       offers the image / text / sum methods)
    {cache}/indexes/world-cirr-dev/    the index built on first use
with {cache} = `zscir.registry.default_cache_dir()`.
"""

from __future__ import annotations

from pathlib import Path

from zscir.errors import ZscirError

WORLD_BACKBONE = "synthetic-clip"
WORLD_GALLERY = ("data", "cirr", "dev")
WORLD_PHI = "phi"
WORLD_INDEX = "world-cirr-dev"


def world_dir() -> Path:
    """`{cache}/world`, where `zscir demo` builds the synthetic world and its models."""
    from zscir.registry import default_cache_dir

    return default_cache_dir() / "world"


def world_gallery() -> Path:
    """The folder of gallery images served by default."""
    return world_dir().joinpath(*WORLD_GALLERY)


def world_phi() -> Path | None:
    """The world's trained Phi folder, or None when it has not been trained yet."""
    path = world_dir() / WORLD_PHI
    return path if path.exists() else None


def default_index_dir() -> Path:
    """Where the default index of the world's gallery lives."""
    from zscir.registry import default_cache_dir

    return default_cache_dir() / "indexes" / WORLD_INDEX


def ensure_world_index(progress: bool = True) -> Path:
    """The default index folder, built from the world's gallery on first use.

    Returns:
        The index folder (it holds a manifest).
    Raises:
        ZscirError: the world or its tiny CLIP is absent ("run `zscir demo` first").
    """
    from zscir.search.indexer import MANIFEST_NAME, index_folder

    index_dir = default_index_dir()
    if (index_dir / MANIFEST_NAME).is_file():
        return index_dir
    gallery, clip = world_gallery(), world_dir() / WORLD_BACKBONE
    for needed, what in ((gallery, "synthetic gallery"), (clip, "tiny CLIP")):
        if not needed.exists():
            raise ZscirError(f"the {what} is missing ({needed}): run `zscir demo` first, "
                             "or serve an index built with `zscir index`")
    from zscir.models.backbone import Backbone

    print(f"indexing the synthetic gallery {gallery} into {index_dir} (first use)")
    report = index_folder(gallery, Backbone.load(WORLD_BACKBONE), index_dir, progress=progress)
    print(report.summary())
    return index_dir
