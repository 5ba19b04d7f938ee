"""Test-server submission files for CIRR and CIRCO, built from a split and a score matrix.

- CIRR (rc2): two files, {"version": "rc2", "metric": "recall", "<pairid>": [top-50 names]} and
  {"version": "rc2", "metric": "recall_subset", "<pairid>": [top-3 names within img_set]}; the reference
  image never appears in its own list.
- CIRCO: {"<id>": [50 unique integer COCO image ids]} for every query (reference not removed).

Every submission is validated (coverage, types, lengths, uniqueness) before it is written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from zscir.data.records import CIRSplit
from zscir.errors import DataError, ZscirError
from zscir.evaluation.metrics import allowed_mask, as_scores, rank_gallery
from zscir.utils.io import write_json_atomic

CIRR_VERSION = "rc2"
TOP_K = 50
SUBSET_K = 3


def _ranked_names(split: CIRSplit, scores, k: int, remove_reference: bool, restrict_to_group: bool) -> list[list[str]]:
    """Top-k gallery names per query."""
    s = as_scores(scores, (len(split.queries), len(split.gallery)))
    mask = allowed_mask(split, remove_reference, restrict_to_group) if remove_reference or restrict_to_group else None
    counts = mask.sum(1) if mask is not None else torch.full((len(split.queries),), len(split.gallery))
    if len(counts) and int(counts.min()) < k:
        row = int(counts.argmin())
        pool = "its image set" if restrict_to_group else "the gallery"
        extra = " minus its reference" if remove_reference else ""
        raise DataError(f"{split.name}: query {split.queries[row].query_id} can be ranked against only "
                        f"{int(counts[row])} images ({pool}{extra}, {len(split.gallery)} gallery images), but the "
                        f"test server expects {k} per query; is the split complete?")
    ranked = rank_gallery(s, k, mask)
    return [[split.gallery[j] for j in row] for row in ranked.tolist()]


def cirr_submission(split: CIRSplit, scores, k: int = TOP_K, subset_k: int = SUBSET_K) -> tuple[dict, dict]:
    """Build (and validate) the two CIRR submission objects.

    Args:
        split: a CIRR split (normally "cirr/test1").
        scores: [len(split.queries), len(split.gallery)] score matrix.
        k: length of the recall lists (the server expects 50).
        subset_k: length of the subset lists (the server expects 3).
    Returns:
        (recall, recall_subset) dicts ready for JSON.
    """
    if split.dataset != "cirr":
        raise ZscirError(f"{split.name}: a CIRR submission needs a CIRR split")
    full = _ranked_names(split, scores, k, remove_reference=True, restrict_to_group=False)
    subset = _ranked_names(split, scores, subset_k, remove_reference=True, restrict_to_group=True)
    recall: dict[str, Any] = {"version": CIRR_VERSION, "metric": "recall"}
    recall_subset: dict[str, Any] = {"version": CIRR_VERSION, "metric": "recall_subset"}
    for q, names, sub in zip(split.queries, full, subset):
        recall[q.query_id] = names
        recall_subset[q.query_id] = sub
    validate_cirr_submission(recall, split, k)
    validate_cirr_submission(recall_subset, split, subset_k)
    return recall, recall_subset


def circo_submission(split: CIRSplit, scores, k: int = TOP_K) -> dict[str, list[int]]:
    """Build (and validate) the CIRCO submission object.

    Args:
        split: a CIRCO split (normally "circo/test").
        scores: [len(split.queries), len(split.gallery)] score matrix.
        k: number of image ids per query (the server expects 50).
    Returns:
        {"<id>": [k unique integer image ids]}.
    """
    if split.dataset != "circo":
        raise ZscirError(f"{split.name}: a CIRCO submission needs a CIRCO split")
    ranked = _ranked_names(split, scores, k, remove_reference=False, restrict_to_group=False)
    try:
        submission = {q.query_id: [int(name) for name in names] for q, names in zip(split.queries, ranked)}
    except ValueError as exc:
        raise DataError(f"{split.name}: CIRCO gallery names must be integer COCO ids ({exc})") from exc
    validate_circo_submission(submission, split, k)
    return submission


def _check_lists(submission: dict, split: CIRSplit, k: int, what: str, item_type: type) -> None:
    """Coverage of every query and per-list length, element type and uniqueness."""
    expected = {q.query_id for q in split.queries}
    keys = {key for key in submission if key not in ("version", "metric")}
    missing, extra = sorted(expected - keys), sorted(keys - expected)
    if missing:
        raise DataError(f"{what}: {len(missing)} queries have no prediction (e.g. {missing[:3]})")
    if extra:
        raise DataError(f"{what}: {len(extra)} keys are not query ids of {split.name} (e.g. {extra[:3]})")
    for key in expected:
        names = submission[key]
        if not isinstance(names, list) or len(names) != k:
            size = len(names) if isinstance(names, list) else type(names).__name__
            raise DataError(f"{what}: query {key}: expected a list of {k} predictions, got {size}")
        bad = [n for n in names if not isinstance(n, item_type) or isinstance(n, bool)]
        if bad:
            raise DataError(f"{what}: query {key}: predictions must be {item_type.__name__}, got {bad[0]!r}")
        if len(set(names)) != len(names):
            raise DataError(f"{what}: query {key}: duplicate predictions")


def validate_cirr_submission(submission: dict, split: CIRSplit, k: int | None = None) -> None:
    """Check a CIRR submission object against its split; raise DataError naming the first problem.

    Args:
        submission: {"version": "rc2", "metric": "recall" | "recall_subset", "<pairid>": [names]}.
        split: the CIRR split it answers.
        k: expected list length (default 50 for recall, 3 for recall_subset).
    """
    if not isinstance(submission, dict):
        raise DataError(f"CIRR submission must be a JSON object, got {type(submission).__name__}")
    metric = submission.get("metric")
    if submission.get("version") != CIRR_VERSION or metric not in ("recall", "recall_subset"):
        raise DataError(f'CIRR submission needs "version": "{CIRR_VERSION}" and "metric": "recall" or '
                        f'"recall_subset", got {submission.get("version")!r} / {metric!r}')
    what = f"CIRR {metric} submission"
    k = k if k is not None else (TOP_K if metric == "recall" else SUBSET_K)
    _check_lists(submission, split, k, what, str)
    gallery = set(split.gallery)
    for q in split.queries:
        names = submission[q.query_id]
        allowed = set(q.group) if metric == "recall_subset" else gallery
        outside = [n for n in names if n not in allowed]
        if outside:
            where = "img_set" if metric == "recall_subset" else "gallery"
            raise DataError(f"{what}: query {q.query_id}: {outside[0]!r} is not in the {where}")
        if q.reference in names:
            raise DataError(f"{what}: query {q.query_id}: lists its own reference {q.reference!r}")


def validate_circo_submission(submission: dict, split: CIRSplit, k: int = TOP_K) -> None:
    """Check a CIRCO submission object against its split; raise DataError naming the first problem.

    Args:
        submission: {"<id>": [k unique integer image ids]}.
        split: the CIRCO split it answers.
        k: expected list length.
    """
    if not isinstance(submission, dict):
        raise DataError(f"CIRCO submission must be a JSON object, got {type(submission).__name__}")
    what = "CIRCO submission"
    _check_lists(submission, split, k, what, int)
    gallery = set(split.gallery)
    for key in submission:
        outside = [i for i in submission[key] if str(i) not in gallery]
        if outside:
            raise DataError(f"{what}: query {key}: image id {outside[0]} is not in the gallery")


def write_submission(split: CIRSplit, scores, out_dir: str | Path, k: int = TOP_K) -> list[Path]:
    """Build, validate and atomically write the submission file(s) of a test split.

    Args:
        split: a CIRR or CIRCO split (FashionIQ has no test server).
        scores: [len(split.queries), len(split.gallery)] score matrix.
        out_dir: folder for the files.
        k: predictions per query (50 on both servers).
    Returns:
        The written paths: CIRR `cirr_{split}_recall.json` and `cirr_{split}_recall_subset.json`;
        CIRCO `circo_{split}.json`.
    """
    out_dir = Path(out_dir)
    stem = split.name.replace("/", "_")
    if split.dataset == "cirr":
        recall, recall_subset = cirr_submission(split, scores, k)
        files = {out_dir / f"{stem}_recall.json": recall, out_dir / f"{stem}_recall_subset.json": recall_subset}
    elif split.dataset == "circo":
        files = {out_dir / f"{stem}.json": circo_submission(split, scores, k)}
    else:
        raise ZscirError(f"{split.name}: only CIRR and CIRCO have test servers; evaluate {split.dataset} on val")
    for path, obj in files.items():
        write_json_atomic(path, obj)
    return list(files)
