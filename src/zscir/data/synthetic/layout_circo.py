"""Write a synthetic CIRCO: annotations/{val,test}.json and a COCO-style gallery
COCO2017_unlabeled/annotations/image_info_unlabeled2017.json with images in COCO2017_unlabeled/unlabeled2017/.

Queries have several ground truths, as in CIRCO: each query's target scene is rendered 2-4 times
with different jitter, and "add" edits are sometimes under-specified ("add a blue star": any size,
any free cell), in which case several different target scenes are rendered. After the whole gallery
exists, `gt_img_ids` is computed from the definition: every gallery image whose scene satisfies the
query's edit (`edit_matches`). Val and test queries share one gallery, which also holds the
references, two hard negatives per query and random distractors. Image ids are random 6-digit ints.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zscir.data.synthetic.captions import object_phrase
from zscir.data.synthetic.edits import Edit, apply_edit, edit_matches, relative_caption, sample_edit
from zscir.data.synthetic.gallery import ImageStore, hard_negatives, new_jitter
from zscir.data.synthetic.scene import Scene, random_scene
from zscir.utils.io import write_json_atomic

# CIRCO's semantic aspect labels, by edit kind
ASPECTS: dict[str, list[str]] = {
    "recolour": ["direct_addressing"],
    "reshape": ["compare_change"],
    "resize": ["comparative_statement"],
    "move": ["spatial_relations_background"],
    "add": ["addition", "cardinality"],
    "remove": ["negation", "cardinality"],
    "background": ["spatial_relations_background"],
}
GALLERY = "COCO2017_unlabeled"


def shared_concept(reference: Scene, edit: Edit) -> str:
    """What the reference and every target have in common, in words.

    An object the edit leaves alone ("a small red circle"), else the background ("a white background").
    """
    kept = [o for o in reference.objects if edit.kind in ("background", "add") or o.cell != edit.cell]
    if kept:
        return object_phrase(kept[0])
    return f"a {reference.background} background"


def _targets(ref: Scene, edit: Edit, rng: random.Random) -> list[Scene]:
    if edit.fully_specified:
        return [apply_edit(ref, edit)] * rng.randint(2, 4)  # one scene, several renders
    options = [apply_edit(ref, Edit("add", colour=edit.colour, shape=edit.shape, size=s, to_cell=c))
               for s in ("small", "large") for c in ref.free_cells()]
    return rng.sample(options, min(len(options), rng.randint(2, 4)))


def write_circo(root: Path, seed: int, n_queries: dict[str, int], negatives: int, n_distractors: int,
                image_size: int) -> dict[str, Any]:
    """Write the synthetic CIRCO and its sidecar `scenes.json`.

    Args:
        root: output folder (the CIRCO root).
        seed: world seed.
        n_queries: {"val": int, "test": int}.
        negatives: hard negatives (one edit away from a target) per query.
        n_distractors: random extra gallery images.
        image_size: image side in pixels.
    Returns:
        Counts {"val": queries, "test": queries, "images": gallery size}.
    """
    root = Path(root)
    rng = random.Random(f"{seed}-circo")
    store = ImageStore(image_size)
    image_dir = root / GALLERY / "unlabeled2017"
    ids_taken: set[int] = set()
    scenes_by_id: dict[int, Scene] = {}

    def add(scene: Scene) -> int:
        while True:
            image_id = rng.randint(1, 999_999)
            if image_id not in ids_taken:
                ids_taken.add(image_id)
                break
        store.write(str(image_id), scene, new_jitter(rng), image_dir / f"{image_id:012d}.png")
        scenes_by_id[image_id] = scene
        return image_id

    pending: dict[str, list[dict]] = {}
    for split in ("val", "test"):
        pending[split] = []
        for index in tqdm(range(n_queries.get(split, 0)), desc=f"circo {split}", disable=None):
            ref = random_scene(rng)
            edit = sample_edit(ref, rng, underspecified_add=rng.random() < 0.5)
            targets = _targets(ref, edit, rng)
            ref_id = add(ref)
            target_ids = [add(t) for t in targets]
            for scene, _ in hard_negatives(targets[0], rng, negatives, exclude=[ref]):
                if not edit_matches(ref, scene, edit):
                    add(scene)
            pending[split].append({"id": index, "ref": ref, "edit": edit, "reference_img_id": ref_id,
                                   "target_img_id": target_ids[0],
                                   "relative_caption": relative_caption(ref, edit, rng),
                                   "shared_concept": shared_concept(ref, edit)})
    for _ in range(n_distractors):
        add(random_scene(rng))

    # ground truths from the definition: every gallery scene that satisfies the edit
    by_shape: dict[tuple[str, int], list[int]] = defaultdict(list)
    for image_id, scene in scenes_by_id.items():
        by_shape[(scene.background, len(scene.objects))].append(image_id)
    sidecar: dict[str, Any] = {"queries": {}}
    for split, queries in pending.items():
        annotations, side = [], []
        for q in queries:
            ref, edit, target = q["ref"], q["edit"], scenes_by_id[q["target_img_id"]]
            candidates = by_shape[(target.background, len(target.objects))]
            gts = [i for i in candidates if edit_matches(ref, scenes_by_id[i], edit)]
            gts.remove(q["target_img_id"])
            gts = [q["target_img_id"]] + sorted(gts)
            record: dict[str, Any] = {"reference_img_id": q["reference_img_id"]}
            if split == "val":
                record["target_img_id"] = q["target_img_id"]
            record.update(relative_caption=q["relative_caption"], shared_concept=q["shared_concept"])
            if split == "val":
                record["gt_img_ids"] = gts
            record["id"] = q["id"]
            if split == "val":
                record["semantic_aspects"] = list(ASPECTS[edit.kind])
            annotations.append(record)
            side.append({"id": q["id"], "reference": q["reference_img_id"], "target": q["target_img_id"],
                         "gt_img_ids": gts, "caption": q["relative_caption"], "edits": [edit.to_dict()],
                         "edit_type": edit.kind})
        write_json_atomic(root / "annotations" / f"{split}.json", annotations, indent=1)
        sidecar["queries"][split] = side
    info = {
        "info": {"description": "zscir synthetic world gallery (COCO 2017 unlabeled layout)", "version": "1.0",
                 "year": 2017, "contributor": "zscir", "url": "", "date_created": ""},
        "licenses": [],
        "images": [{"license": 0, "file_name": f"{i:012d}.png", "coco_url": "", "height": image_size,
                    "width": image_size, "date_captured": "", "id": i} for i in sorted(scenes_by_id)],
        "categories": [],
    }
    write_json_atomic(root / GALLERY / "annotations" / "image_info_unlabeled2017.json", info, indent=None)
    sidecar["images"] = store.records
    write_json_atomic(root / "scenes.json", sidecar, indent=None)
    return {"val": len(pending["val"]), "test": len(pending["test"]), "images": len(scenes_by_id)}
