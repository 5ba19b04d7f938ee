"""CIRR layout -> CIRSplit.

Files (METHODS §6): `captions/cap.rc2.{split}.json` (list of {pairid, reference, target_hard, caption,
img_set{members}}; no target on test1) and `image_splits/split.rc2.{split}.json` ({name: path relative to
the root}). The two folders sit in the root or, as in the official release, in `root/cirr/`; image paths
are relative to the root either way. The gallery is the whole split's image table, in file order.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from zscir.data.records import CIRSplit, Query, get_field, read_json_as, require_file
from zscir.errors import DataError

NAME = "cirr"
SPLITS = ("train", "val", "test1")
EVAL_SPLITS = ("val", "test1")
ALIASES = {"test": "test1", "dev": "val"}


def _annotation_prefix(root: Path) -> str:
    """"" when captions/ sits in the root, "cirr/" for the official nested layout."""
    if not (root / "captions").is_dir() and (root / "cirr" / "captions").is_dir():
        return "cirr/"
    return ""


def load(root: Path, split: str) -> list[CIRSplit]:
    """Parse one CIRR split (see the module docstring).

    Args:
        root: the CIRR root folder.
        split: "train", "val" or "test1".
    Returns:
        [CIRSplit] named "cirr/{split}".
    """
    prefix = _annotation_prefix(root)
    table_path = require_file(root, f"{prefix}image_splits/split.rc2.{split}.json", NAME)
    captions_path = require_file(root, f"{prefix}captions/cap.rc2.{split}.json", NAME)

    table = read_json_as(table_path, dict)
    images: dict[str, Path] = {}
    for name, relative in table.items():
        if not isinstance(relative, str):
            raise DataError(f"{table_path}: entry {name!r} should be a relative path string, "
                            f"got {type(relative).__name__}")
        images[name] = root / relative

    has_targets = split != "test1"
    queries = []
    for i, record in enumerate(read_json_as(captions_path, list)):
        field = partial(get_field, record, path=captions_path, index=i)

        queries.append(Query(
            query_id=str(field("pairid", int)),
            reference=field("reference", str),
            captions=(field("caption", str),),
            targets=(field("target_hard", str),) if has_targets else (),
            group=tuple(field("img_set.members", list, item=str)),
            source=f"{captions_path}: record {i}",
        ))
    return [CIRSplit(dataset=NAME, name=f"{NAME}/{split}", images=images, gallery=list(images), queries=queries)]
