"""FashionIQ layout -> one CIRSplit per category.

Files (METHODS §6): `captions/cap.{category}.{split}.json` (list of {candidate, target, captions[2]}; no
target on test), `image_splits/split.{category}.{split}.json` (list of image ids = the category's
gallery) and `images/{id}.jpg` (or `.png`). Query ids are "{category}/{index in the captions file}".
"""

from __future__ import annotations

from pathlib import Path

from zscir.data.images import list_files
from zscir.data.records import CIRSplit, Query, get_field, read_json_as, require_file
from zscir.errors import DataError, ZscirError

NAME = "fashioniq"
SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val",)
ALIASES: dict[str, str] = {}
CATEGORIES = ("dress", "shirt", "toptee")
IMAGE_SUFFIXES = (".jpg", ".png")  # preference order when both exist; a missing image reports the first


def load(root: Path, split: str, categories: tuple[str, ...] = CATEGORIES) -> list[CIRSplit]:
    """Parse FashionIQ captions and image splits, one CIRSplit per category.

    Args:
        root: the FashionIQ root folder.
        split: "train", "val" or "test".
        categories: which categories to load, in order.
    Returns:
        CIRSplits named "fashioniq/{category}/{split}".
    """
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown or not categories:
        raise ZscirError(f"fashioniq: unknown categories {unknown}; expected some of {', '.join(CATEGORIES)}")
    on_disk = list_files(root / "images")  # one directory listing instead of a stat per image

    def image_path(image_id: str) -> Path:
        for suffix in IMAGE_SUFFIXES:
            if image_id + suffix in on_disk:
                return root / "images" / (image_id + suffix)
        return root / "images" / (image_id + IMAGE_SUFFIXES[0])

    has_targets = split != "test"
    result = []
    for category in categories:
        split_path = require_file(root, f"image_splits/split.{category}.{split}.json", NAME)
        captions_path = require_file(root, f"captions/cap.{category}.{split}.json", NAME)
        ids = read_json_as(split_path, list)
        for j, image_id in enumerate(ids):
            if not isinstance(image_id, str):
                raise DataError(f"{split_path}: entry {j} should be an image id string, got {type(image_id).__name__}")
        gallery = list(dict.fromkeys(ids))  # file order, repeated ids kept once

        queries = []
        for i, record in enumerate(read_json_as(captions_path, list)):
            captions = get_field(record, "captions", list, captions_path, i, item=str)
            if not captions:
                raise DataError(f"{captions_path}: record {i}: field 'captions' is empty")
            queries.append(Query(
                query_id=f"{category}/{i}",
                reference=get_field(record, "candidate", str, captions_path, i),
                captions=tuple(captions),
                targets=(get_field(record, "target", str, captions_path, i),) if has_targets else (),
                source=f"{captions_path}: record {i}",
            ))
        names = dict.fromkeys(gallery)
        for q in queries:
            names.update(dict.fromkeys((q.reference, *q.targets)))
        images = {name: image_path(name) for name in names}
        result.append(CIRSplit(dataset=NAME, name=f"{NAME}/{category}/{split}", images=images,
                               gallery=gallery, queries=queries))
    return result
