"""One dataset protocol for CIRR, FashionIQ and CIRCO: typed queries, evaluation splits, `load_benchmark`.

Each benchmark module (`zscir.data.cirr`, `.fashioniq`, `.circo`) only parses its own layout into
`CIRSplit`s; validation, error messages and consistency checks live here, once.

Conventions shared by all three:
- image names are strings (CIRCO's integer COCO ids are stored as `str(id)`; `int(name)` gives them back);
- `Query.targets[0]` is the primary (annotated) target; CIRCO lists its other ground truths after it;
- captions reach the text tower as the official protocol writes them (METHODS §1, `prepare_caption`):
  FashionIQ's are stripped of ".?, " at both ends, CIRR's and CIRCO's go in as written; an empty
  caption (real files hold a few) is kept and composed as written, never refused.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

from zscir.errors import DataError, ZscirError
from zscir.utils.io import read_json

# dataset name -> module that parses its layout (each exposes NAME, SPLITS, EVAL_SPLITS, ALIASES, load()).
DATASETS: dict[str, str] = {
    "cirr": "zscir.data.cirr",
    "fashioniq": "zscir.data.fashioniq",
    "circo": "zscir.data.circo",
}

_PUNCTUATION = ".?, "
# How captions are prepared for the text tower: "official" = as each benchmark's official code does;
# "strip" = every caption stripped of surrounding whitespace and trailing ".?, " (zscir before 0.2).
CAPTION_CLEANING = ("official", "strip")


def strip_caption(text: str) -> str:
    """`text` without surrounding whitespace and trailing ".", "?", "," and spaces (may become empty)."""
    return text.strip().rstrip(_PUNCTUATION)


def prepare_caption(dataset: str, text: str, cleaning: str = "official") -> str:
    """A caption as it goes into the prompt template (METHODS §1).

    Args:
        dataset: "cirr", "fashioniq" or "circo".
        text: the caption as written in the annotation file.
        cleaning: "official": FashionIQ strips ".", "?", "," and spaces at both ends (the official
            code's `strip('.?, ')`), CIRR and CIRCO are left as written; "strip": any dataset's caption
            loses surrounding whitespace and trailing ".?, ".
    Returns:
        The prepared caption (may be empty: real files hold empty captions).
    """
    if cleaning == "official":
        return text.strip(_PUNCTUATION) if dataset == "fashioniq" else text
    if cleaning == "strip":
        return strip_caption(text)
    raise ZscirError(f"unknown caption cleaning {cleaning!r}; expected one of {', '.join(CAPTION_CLEANING)}")


@dataclass(frozen=True)
class Query:
    """One composed query: a reference image plus one or more relative captions.

    Attributes:
        query_id: unique within its split: CIRR pairid, CIRCO id, FashionIQ "{category}/{index}".
        reference: image name of the reference (a key of `CIRSplit.images`).
        captions: cleaned relative captions (1 for CIRR/CIRCO, 2 for FashionIQ).
        targets: ground-truth image names; empty on test splits. `targets[0]` is the primary target
            (CIRR target_hard, FashionIQ target, CIRCO target_img_id), then CIRCO's other gt_img_ids.
        group: CIRR img_set members (the subset used by Recall_subset), else empty.
        shared_concept: CIRCO's shared concept (a composer may prepend it), else None.
        source: where the query was read ("{file}: record {index}"), for messages.
    """

    query_id: str
    reference: str
    captions: tuple[str, ...]
    targets: tuple[str, ...] = ()
    group: tuple[str, ...] = ()
    shared_concept: str | None = None
    source: str = field(default="", compare=False)

    @property
    def has_empty_caption(self) -> bool:
        """True when one of the captions is empty or only whitespace (composed as written)."""
        return any(not c.strip() for c in self.captions)


@dataclass
class CIRSplit:
    """One evaluation unit: a gallery and the queries searched in it (FashionIQ: one per category).

    Treat it as read-only after loading.

    Attributes:
        dataset: "cirr" | "fashioniq" | "circo" (selects the metric protocol).
        name: e.g. "cirr/val", "fashioniq/dress/val", "circo/test".
        images: every image name the split needs (gallery, references, targets) -> file path.
        gallery: gallery image names in a fixed order (the columns of a score matrix).
        queries: the queries (the rows of a score matrix).
    """

    dataset: str
    name: str
    images: dict[str, Path]
    gallery: list[str]
    queries: list[Query]

    @property
    def has_targets(self) -> bool:
        """True when every query has ground truth (val/train); False on test splits."""
        return bool(self.queries) and all(q.targets for q in self.queries)

    def gallery_positions(self) -> dict[str, int]:
        """Map gallery image name -> column index in a score matrix.

        Returns:
            A new dict {name: index}.
        """
        return {name: i for i, name in enumerate(self.gallery)}

    def image_paths(self) -> list[Path]:
        """Every image file this split needs (gallery, references, targets), without duplicates.

        Returns:
            A list of paths in the image table's order.
        """
        return list(dict.fromkeys(self.images.values()))

    def problems(self, examples: int = 3) -> list[str]:
        """Consistency problems between the queries and the image table (empty list = consistent).

        Args:
            examples: how many example names to show per problem.
        Returns:
            One line per kind of problem, with a count and a few examples.
        """
        in_gallery = set(self.gallery)
        found: dict[str, list[str]] = {}

        def add(kind: str, item: str) -> None:
            found.setdefault(kind, []).append(item)

        seen_ids: set[str] = set()
        for q in self.queries:
            if q.query_id in seen_ids:
                add("duplicate query ids", q.query_id)
            seen_ids.add(q.query_id)
            if q.reference not in self.images:
                add("references missing from the image table", f"{q.reference!r} (query {q.query_id})")
            for t in q.targets:
                if t not in in_gallery:
                    add("targets missing from the gallery", f"{t!r} (query {q.query_id})")
            for m in q.group:
                if m not in in_gallery:
                    add("img_set members missing from the gallery", f"{m!r} (query {q.query_id})")
        if len(in_gallery) != len(self.gallery):
            add("duplicate gallery names", f"{len(self.gallery) - len(in_gallery)} repeated")
        for name in self.gallery:
            if name not in self.images:
                add("gallery names without an image path", repr(name))
        return [
            f"{len(items)} {kind} (e.g. {', '.join(items[:examples])})" for kind, items in found.items()
        ]

    def empty_caption_note(self, examples: int = 3) -> str | None:
        """One line counting the queries with an empty caption and where they are, or None if there are none."""
        empty = [q for q in self.queries if q.has_empty_caption]
        if not empty:
            return None
        where = "; ".join(f"{q.source or 'query'} (query {q.query_id})" for q in empty[:examples])
        more = f" (+{len(empty) - examples} more)" if len(empty) > examples else ""
        noun = "query" if len(empty) == 1 else "queries"
        return f"{self.name}: {len(empty)} {noun} with an empty caption, composed as written: {where}{more}"

    def check(self) -> None:
        """Raise DataError with the first consistency problem, if any (see `problems`)."""
        issues = self.problems()
        if issues:
            more = f" (+{len(issues) - 1} more kinds; run `zscir check-data`)" if len(issues) > 1 else ""
            raise DataError(f"{self.name}: {issues[0]}{more}")


# ---------------------------------------------------------------------------------------------
# Loading


def dataset_module(dataset: str) -> ModuleType:
    """The module that parses `dataset`'s layout.

    Args:
        dataset: "cirr", "fashioniq" or "circo".
    Returns:
        The imported module (with NAME, SPLITS, EVAL_SPLITS, ALIASES and load()).
    """
    if dataset not in DATASETS:
        raise ZscirError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    return importlib.import_module(DATASETS[dataset])


def resolve_split(dataset: str, split: str) -> str:
    """Canonical split name (CIRR "test" -> "test1"), or ZscirError naming the valid ones.

    Args:
        dataset: dataset name.
        split: split as typed by the user.
    Returns:
        The split name used in the file names.
    """
    module = dataset_module(dataset)
    split = module.ALIASES.get(split, split)
    if split not in module.SPLITS:
        raise ZscirError(f"{dataset}: unknown split {split!r}; expected one of {', '.join(module.SPLITS)}")
    return split


def load_benchmark(
    dataset: str,
    root: str | Path,
    split: str,
    *,
    categories: Iterable[str] | None = None,
    strict: bool = True,
    caption_cleaning: str = "official",
) -> list[CIRSplit]:
    """Load one split of a benchmark as evaluation units.

    Args:
        dataset: "cirr", "fashioniq" or "circo".
        root: the dataset folder (CIRR: holding `captions/` or `cirr/captions/` and the image folders;
            FashionIQ: `captions/`, `image_splits/`, `images/`; CIRCO: `annotations/`, `COCO2017_unlabeled/`).
        split: "val", "test" (CIRR: "test1"), "train" where the dataset has one.
        categories: FashionIQ only: subset of ("dress", "shirt", "toptee"); default all three.
        strict: raise DataError if a query names an image absent from the image table / gallery.
            `check-data` loads with strict=False and reports the problems instead.
        caption_cleaning: how captions are prepared (`prepare_caption`): "official" (default) or "strip".
    Returns:
        A list of CIRSplit: one for CIRR and CIRCO, one per category for FashionIQ.
    Raises:
        DataError: a missing annotation file (naming it), malformed JSON, a missing or mistyped field
            (naming file, record index and field), or (strict) an inconsistency.
    """
    module = dataset_module(dataset)
    split = resolve_split(dataset, split)
    root = Path(root).expanduser()
    options: dict[str, Any] = {}
    if categories is not None:
        if dataset != "fashioniq":
            raise ZscirError(f"{dataset}: `categories` only applies to fashioniq")
        options["categories"] = tuple(categories)
    if caption_cleaning not in CAPTION_CLEANING:
        prepare_caption(dataset, "", caption_cleaning)  # raises, naming the valid ones
    splits = module.load(root, split, **options)
    for s in splits:
        s.queries = [replace(q, captions=tuple(prepare_caption(dataset, c, caption_cleaning) for c in q.captions))
                     for q in s.queries]
    if strict:
        for s in splits:
            s.check()
    return splits


# ---------------------------------------------------------------------------------------------
# Parsing helpers shared by the layout modules


def require_file(root: Path, relative: str, dataset: str) -> Path:
    """Return root/relative, or raise DataError in one line naming the expected file.

    Args:
        root: the dataset root given by the user.
        relative: the expected file, relative to root.
        dataset: dataset name, for the message.
    Returns:
        The path of the existing file.
    """
    path = root / relative
    if not path.is_file():
        hint = "" if root.is_dir() else " (the root folder does not exist)"
        raise DataError(f"{dataset}: expected file {relative} is missing under {root}{hint}")
    return path


def read_json_as(path: Path, kind: type) -> Any:
    """Read a JSON file whose top level must be of type `kind` (list or dict).

    Args:
        path: the file.
        kind: `list` or `dict`.
    Returns:
        The parsed JSON value.
    Raises:
        DataError: missing file, malformed JSON or wrong top-level type (naming the file).
    """
    value = read_json(path)
    if not isinstance(value, kind):
        expected = "a list" if kind is list else "an object"
        raise DataError(f"{path}: expected {expected} at the top level, got {type(value).__name__}")
    return value


_TYPE_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def _check_type(value: Any, kind: type, where: str, name: str) -> Any:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise DataError(f"{where}: field '{name}' should be {_TYPE_NAMES.get(kind, kind.__name__)}, "
                        f"got {type(value).__name__}")
    return value


def get_field(record: Any, name: str, kind: type, path: Path, index: int | None, item: type | None = None) -> Any:
    """Read a required field of an annotation record, checking its type.

    Args:
        record: the parsed record (must be a dict).
        name: field name; a dotted name ("img_set.members") reads a nested field.
        kind: expected Python type (str, int, list, dict).
        path: the annotation file, for the message.
        index: the record's index in the file (None for a top-level object).
        item: for lists, the expected type of every element.
    Returns:
        The field's value.
    Raises:
        DataError: "{path}: record {index}: missing field '{name}'" or a type mismatch.
    """
    where = f"{path}: record {index}" if index is not None else str(path)
    value = record
    parts = name.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(value, dict):
            outer = ".".join(parts[:depth]) or "record"
            raise DataError(f"{where}: {outer} should be an object, got {type(value).__name__}")
        if part not in value:
            raise DataError(f"{where}: missing field '{name}'")
        value = value[part]
    _check_type(value, kind, where, name)
    if item is not None:
        for j, element in enumerate(value):
            _check_type(element, item, where, f"{name}[{j}]")
    return value
