"""Write a synthetic FashionIQ: captions/cap.{cat}.{split}.json, image_splits/split.{cat}.{split}.json,
images/{id}.png.

Categories are families of scenes by object count: dress = one object, shirt = two, toptee = three.
Edits keep the object count (recolour, reshape, resize, move, background), so a category's gallery
stays one family. Like FashionIQ's two annotators, each query has two captions: half of the queries
get two paraphrases of one edit, the other half two different edits (each caption says one of them,
on different parts of the scene; the target has both). Captions are FashionIQ-like attribute statements
about the target ("the circle is green", "has a black background"), not edit commands. Image ids look
like ASINs ("B00..."). Each query adds its reference, its target and `negatives` hard negatives of the
target to the gallery.
"""

from __future__ import annotations

import random
import string
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zscir.data.synthetic.edits import Edit, apply_edit, relative_caption, sample_edit
from zscir.data.synthetic.gallery import NEGATIVE_KINDS, ImageStore, hard_negatives, new_jitter
from zscir.data.synthetic.scene import Scene, random_scene
from zscir.utils.io import write_json_atomic

CATEGORIES: dict[str, int] = {"dress": 1, "shirt": 2, "toptee": 3}  # category -> objects per scene
SPLITS: tuple[str, ...] = ("train", "val", "test")
COMPOUND_KINDS: tuple[str, ...] = ("recolour", "reshape", "resize", "background")


def _asin(rng: random.Random, taken: set[str]) -> str:
    while True:
        asin = "B00" + "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(7))
        if asin not in taken:
            taken.add(asin)
            return asin


def _two_paraphrases(ref: Scene, edit: Edit, rng: random.Random) -> list[str]:
    first = relative_caption(ref, edit, rng, style="attribute")
    for _ in range(20):
        second = relative_caption(ref, edit, rng, style="attribute")
        if second != first:
            return [first, second]
    return [first, first]


def _query(ref: Scene, rng: random.Random) -> tuple[Scene, list[Edit], list[str]]:
    if rng.random() < 0.5:
        edit = sample_edit(ref, rng, NEGATIVE_KINDS)
        return apply_edit(ref, edit), [edit], _two_paraphrases(ref, edit, rng)
    first = sample_edit(ref, rng, COMPOUND_KINDS)
    while True:  # a second edit on another part of the scene (another object, or the background)
        second = sample_edit(ref, rng, COMPOUND_KINDS)
        if (second.kind == "background") != (first.kind == "background") or (
                second.kind != "background" and second.cell != first.cell):
            break
    target = apply_edit(apply_edit(ref, first), second)
    captions = [relative_caption(ref, e, rng, style="attribute") for e in (first, second)]
    return target, [first, second], captions


def _write_one(root: Path, category: str, split: str, n: int, negatives: int, rng: random.Random,
               store: ImageStore, taken: set[str]) -> list[dict]:
    """Write cap.{category}.{split}.json and split.{category}.{split}.json; returns the sidecar queries."""
    used: set[Scene] = set()
    captions: list[dict] = []
    ids: list[str] = []
    queries: list[dict] = []

    def add(scene: Scene) -> str:
        asin = _asin(rng, taken)
        store.write(asin, scene, new_jitter(rng), root / "images" / f"{asin}.png", category=category, split=split)
        ids.append(asin)
        return asin

    for index in tqdm(range(n), desc=f"fashioniq {category} {split}", disable=None):
        while True:
            ref = random_scene(rng, CATEGORIES[category])
            target, edits, texts = _query(ref, rng)
            if ref in used or target in used:
                continue
            negs = hard_negatives(target, rng, negatives, exclude=used | {ref})
            if len(negs) == negatives:
                break
        used.update([ref, target] + [s for s, _ in negs])
        candidate, target_id = add(ref), add(target)
        for scene, _ in negs:
            add(scene)
        record: dict[str, Any] = {} if split == "test" else {"target": target_id}
        record.update(candidate=candidate, captions=texts)
        captions.append(record)
        queries.append({"index": index, "candidate": candidate, "target": target_id, "captions": texts,
                        "edits": [e.to_dict() for e in edits], "edit_type": "+".join(e.kind for e in edits)})
    rng.shuffle(ids)
    write_json_atomic(root / "captions" / f"cap.{category}.{split}.json", captions, indent=1)
    write_json_atomic(root / "image_splits" / f"split.{category}.{split}.json", ids, indent=1)
    return queries


def write_fashioniq(root: Path, seed: int, n_queries: dict[str, int], negatives: int,
                    image_size: int) -> dict[str, Any]:
    """Write the synthetic FashionIQ and its sidecar `scenes.json`.

    Args:
        root: output folder (the FashionIQ root).
        seed: world seed.
        n_queries: split -> queries per category (a split with 0 is not written).
        negatives: hard negatives of each target added to the gallery.
        image_size: image side in pixels.
    Returns:
        Counts {"{cat}.{split}": {"queries": int, "images": int}}.
    """
    root = Path(root)
    store = ImageStore(image_size)
    taken: set[str] = set()
    sidecar: dict[str, Any] = {"queries": {}}
    counts = {}
    for category in CATEGORIES:
        for split in SPLITS:
            n = n_queries.get(split, 0)
            if n <= 0:
                continue
            before = len(store.records)
            rng = random.Random(f"{seed}-fashioniq-{category}-{split}")
            queries = _write_one(root, category, split, n, negatives, rng, store, taken)
            sidecar["queries"][f"{category}.{split}"] = queries
            counts[f"{category}.{split}"] = {"queries": len(queries), "images": len(store.records) - before}
    sidecar["images"] = store.records
    write_json_atomic(root / "scenes.json", sidecar, indent=None)
    return counts
