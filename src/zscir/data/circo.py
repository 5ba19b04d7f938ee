"""CIRCO layout -> CIRSplit.

Files (METHODS §6): `annotations/{val,test}.json` (list of {id, reference_img_id, relative_caption,
shared_concept, target_img_id, gt_img_ids}; test: no targets) and the gallery, COCO 2017 unlabeled:
`COCO2017_unlabeled/annotations/image_info_unlabeled2017.json` ({"images": [{"id", "file_name"}, ...]})
with the files in `COCO2017_unlabeled/unlabeled2017/{file_name}`.

Image ids are integers in the files; names are their decimal strings (`int(name)` for submissions).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from zscir.data.records import CIRSplit, Query, get_field, read_json_as, require_file

NAME = "circo"
SPLITS = ("val", "test")
EVAL_SPLITS = ("val", "test")
ALIASES: dict[str, str] = {}
GALLERY_INFO = "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json"
GALLERY_DIR = "COCO2017_unlabeled/unlabeled2017"


def load(root: Path, split: str) -> list[CIRSplit]:
    """Parse one CIRCO split and the COCO unlabeled gallery.

    Args:
        root: the CIRCO root folder.
        split: "val" or "test".
    Returns:
        [CIRSplit] named "circo/{split}".
    """
    annotations_path = require_file(root, f"annotations/{split}.json", NAME)
    info_path = require_file(root, GALLERY_INFO, NAME)

    entries = get_field(read_json_as(info_path, dict), "images", list, info_path, None)
    images: dict[str, Path] = {}
    for j, entry in enumerate(entries):
        image_id = get_field(entry, "id", int, info_path, j)
        images[str(image_id)] = root / GALLERY_DIR / get_field(entry, "file_name", str, info_path, j)

    has_targets = split != "test"
    queries = []
    for i, record in enumerate(read_json_as(annotations_path, list)):
        field = partial(get_field, record, path=annotations_path, index=i)

        query_id = str(field("id", int))  # first: it also checks that the record is an object
        targets: tuple[str, ...] = ()
        if has_targets:
            # the annotated target first (recall uses it), then the other ground truths (mAP uses all).
            primary = field("target_img_id", int)
            targets = tuple(str(t) for t in dict.fromkeys([primary, *field("gt_img_ids", list, item=int)]))
        concept = field("shared_concept", str) if "shared_concept" in record else None
        queries.append(Query(
            query_id=query_id,
            reference=str(field("reference_img_id", int)),
            captions=(field("relative_caption", str),),
            targets=targets,
            shared_concept=concept,
            source=f"{annotations_path}: record {i}",
        ))
    return [CIRSplit(dataset=NAME, name=f"{NAME}/{split}", images=images, gallery=list(images), queries=queries)]
