"""Write a synthetic CIRR: captions/cap.rc2.{split}.json, image_splits/split.rc2.{split}.json, images.

Each image set holds 6 images: a reference R, a target T = 1-3 edits of R (CIRR-like captions, see
`cirr_captions`) and 4 hard negatives, each one attribute edit away from T. Queries of a set: R -> T,
then T -> N1, T -> N2, ... (`queries_per_set`
in total), so every target lies in its query's img_set, as in CIRR. Scene graphs are unique within
a split, so the target is the only image of the split that satisfies its caption. Distractor sets
of single random images fill the gallery up. File and field names follow the real CIRR rc2 files.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zscir.data.synthetic.cirr_captions import apply_changes, composite_caption, sample_changes
from zscir.data.synthetic.gallery import ImageStore, hard_negatives, new_jitter
from zscir.data.synthetic.scene import Scene, random_scene
from zscir.utils.io import write_json_atomic

SET_SIZE = 6
# How much of the target a CIRR-format caption says (calibrated on the property "text only vs image
# only", real CIRR: 20.9 vs 7.4 R@1, Pic2Word Table 2). Measured with the shipped world CLIP on the val
# split (R@1 image / text): content clause in 50% of captions, whole-target clause in 30% of those
# -> 12.2 / 1.8; every caption with a content clause -> 9.2 / 3.2; and the whole target whenever it
# fits (one change, at most two objects) -> 10.2 / 10.8.
CONTENT_FRACTION = 1.0
SCENE_FRACTION = 1.0
# split name in the file names -> image name prefix and image folder (real CIRR uses "dev" for val)
SPLITS: dict[str, str] = {"train": "train", "val": "dev", "test1": "test1"}


def _image_dir(prefix: str, set_id: int) -> str:
    # real CIRR spreads train images over numbered sub-folders ("./train/34/...")
    return f"train/{set_id // 100}" if prefix == "train" else prefix


def _one_set(rng: random.Random, used: set[Scene]) -> tuple[Scene, list, Scene, list]:
    while True:
        ref = random_scene(rng)
        edits = sample_changes(ref, rng)
        target = apply_changes(ref, edits)
        if ref in used or target in used:
            continue
        negatives = hard_negatives(target, rng, SET_SIZE - 2, exclude=used | {ref})
        if len(negatives) == SET_SIZE - 2:
            used.update([ref, target] + [n for n, _ in negatives])
            return ref, edits, target, negatives


def edit_type(changes: list) -> str:
    """The edit type reported per query: the kind of a single change, else "2 changes" / "3 changes"."""
    return changes[0].kind if len(changes) == 1 else f"{len(changes)} changes"


def write_cirr_split(root: Path, split: str, rng: random.Random, n_sets: int, queries_per_set: int,
                     n_distractors: int, store: ImageStore, first_pairid: int) -> tuple[list[dict], list[dict]]:
    """Write one CIRR split (captions, split file, images).

    Args:
        root: the CIRR root (holds captions/, image_splits/ and the image folders).
        split: "train", "val" or "test1" (test1 captions carry no targets).
        rng: random source of this split.
        n_sets: number of 6-image sets.
        queries_per_set: 1..5 queries per set (R->T, then T->negative_i).
        n_distractors: extra single images (not in any set) added to the split.
        store: records every image's scene graph for the sidecar.
        first_pairid: pairid of the first query (pairids are unique over all splits).
    Returns:
        (the sidecar's query records, the sidecar's set records) of this split.
    """
    if not 1 <= queries_per_set <= SET_SIZE - 1:
        raise ValueError(f"queries_per_set must be in 1..{SET_SIZE - 1}, got {queries_per_set}")
    prefix = SPLITS[split]
    used: set[Scene] = set()
    captions: list[dict] = []
    split_files: dict[str, str] = {}
    queries: list[dict] = []
    sets: list[dict] = []
    pairid = first_pairid

    def add_image(name: str, scene: Scene, set_id: int) -> None:
        rel = f"./{_image_dir(prefix, set_id)}/{name}.png"
        store.write(name, scene, new_jitter(rng), root / rel, split=split, set_id=set_id)
        split_files[name] = rel

    for set_id in tqdm(range(n_sets), desc=f"cirr {split}", disable=None):
        ref, edits, target, negatives = _one_set(rng, used)
        scenes = [ref, target] + [n for n, _ in negatives]
        order = list(range(SET_SIZE))
        rng.shuffle(order)  # order[i] = position of scenes[i] in the members list
        names = [""] * SET_SIZE
        for i, scene in enumerate(scenes):
            names[order[i]] = f"{prefix}-{set_id}-{order[i]}-img{rng.randint(0, 1)}"
            add_image(names[order[i]], scene, set_id)
        members = list(names)
        sets.append({"id": set_id, "reference": names[order[0]], "target": names[order[1]],
                     "negatives": [{"name": names[order[2 + j]], "edit": e.to_dict()}
                                   for j, (_, e) in enumerate(negatives)]})
        # query 0: R -> T; query j: T -> negative j (its edit is known, its caption is said from T)
        pairs = [(0, 1, edits, ref)] + [(1, 2 + j, [negatives[j][1]], target) for j in range(queries_per_set - 1)]
        for src, dst, changes, src_scene in pairs:
            caption = composite_caption(src_scene, changes, rng, CONTENT_FRACTION, SCENE_FRACTION)
            record: dict[str, Any] = {"pairid": pairid, "reference": names[order[src]]}
            if split != "test1":
                record["target_hard"] = names[order[dst]]
                record["target_soft"] = {names[order[dst]]: 1.0}
            record["caption"] = caption
            img_set: dict[str, Any] = {"id": set_id, "members": members, "reference_rank": order[src]}
            if split != "test1":
                img_set["target_rank"] = order[dst]
            record["img_set"] = img_set
            captions.append(record)
            queries.append({"pairid": pairid, "split": split, "reference": names[order[src]],
                            "target": names[order[dst]], "caption": caption, "edits": [e.to_dict() for e in changes],
                            "edit_type": edit_type(changes)})
            pairid += 1
    for i in range(n_distractors):
        set_id = n_sets + i
        while True:
            scene = random_scene(rng)
            if scene not in used:
                used.add(scene)
                break
        add_image(f"{prefix}-{set_id}-0-img0", scene, set_id)
    write_json_atomic(root / "captions" / f"cap.rc2.{split}.json", captions, indent=1)
    write_json_atomic(root / "image_splits" / f"split.rc2.{split}.json", split_files, indent=1)
    return queries, sets


def write_cirr(root: Path, seed: int, sizes: dict[str, tuple[int, int]], queries_per_set: int,
               image_size: int) -> dict[str, Any]:
    """Write the whole synthetic CIRR (train, val, test1) and its sidecar `scenes.json`.

    Args:
        root: output folder (the CIRR root).
        seed: world seed.
        sizes: split -> (number of sets, number of distractor images).
        queries_per_set: queries per 6-image set.
        image_size: image side in pixels.
    Returns:
        Counts {split: {"queries": int, "images": int}}.
    """
    root = Path(root)
    store = ImageStore(image_size)
    sidecar: dict[str, Any] = {"queries": {}, "sets": {}}
    counts = {}
    pairid = 0
    for split in SPLITS:
        n_sets, n_distractors = sizes[split]
        before = len(store.records)
        rng = random.Random(f"{seed}-cirr-{split}")
        queries, sets = write_cirr_split(root, split, rng, n_sets, queries_per_set, n_distractors, store, pairid)
        pairid += len(queries)
        sidecar["queries"][split] = queries
        sidecar["sets"][split] = sets
        counts[split] = {"queries": len(queries), "images": len(store.records) - before}
    sidecar["images"] = store.records
    write_json_atomic(root / "scenes.json", sidecar, indent=None)
    return counts
