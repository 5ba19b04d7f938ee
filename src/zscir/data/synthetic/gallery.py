"""Shared pieces of the benchmark writers: rendering images to disk and picking hard negatives."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterable

from zscir.data.synthetic.edits import Edit, apply_edit, sample_edit
from zscir.data.synthetic.render import render_scene
from zscir.data.synthetic.scene import Scene

# Hard negatives differ from the target by one of these (they keep the object count, as a
# near-miss should); one edit away means they share every other attribute with the target.
NEGATIVE_KINDS: tuple[str, ...] = ("recolour", "reshape", "resize", "move", "background")


class ImageStore:
    """Renders scenes to PNG files and remembers each image's scene graph and jitter seed.

    Args:
        image_size: side of the written images in pixels.
    """

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.records: dict[str, dict[str, Any]] = {}  # image name -> {"scene": ..., "jitter": ...}

    def write(self, name: str, scene: Scene, jitter: int, path: Path, **extra: Any) -> None:
        """Render `scene` with `jitter` and save it as PNG at `path`, recording it under `name`."""
        if name in self.records:
            raise ValueError(f"image name {name!r} written twice")
        path.parent.mkdir(parents=True, exist_ok=True)
        render_scene(scene, self.image_size, jitter).save(path, format="PNG")
        self.records[name] = {**extra, "scene": scene.to_dict(), "jitter": jitter}


def hard_negatives(target: Scene, rng: random.Random, k: int, exclude: Iterable[Scene] = (),
                   max_tries: int = 200) -> list[tuple[Scene, Edit]]:
    """Up to `k` distinct scenes one attribute edit away from `target`.

    Args:
        target: the scene the negatives must resemble.
        rng: random source.
        k: how many negatives.
        exclude: scenes a negative must not equal (the target is always excluded).
        max_tries: give up after this many draws (returns fewer negatives).
    Returns:
        [(negative scene, the edit of `target` that makes it)].
    """
    banned = set(exclude) | {target}
    found: list[tuple[Scene, Edit]] = []
    for _ in range(max_tries):
        if len(found) == k:
            break
        edit = sample_edit(target, rng, NEGATIVE_KINDS)
        scene = apply_edit(target, edit)
        if scene not in banned:
            banned.add(scene)
            found.append((scene, edit))
    return found


def new_jitter(rng: random.Random) -> int:
    """A fresh jitter seed (31 bits) for one rendered image."""
    return rng.getrandbits(31)
