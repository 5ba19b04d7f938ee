"""Test-server submissions: contents vs a plain ranking loop, validation of bad submissions, atomic files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zscir.data.records import CIRSplit, Query
from zscir.errors import DataError, ZscirError
from zscir.evaluation.submission import (
    circo_submission,
    cirr_submission,
    validate_circo_submission,
    validate_cirr_submission,
    write_submission,
)

NUM_G, NUM_Q = 64, 9


def ranking(row, excluded=(), allowed=None):
    """Gallery indices by descending score (ties: lower index), filtered; written from the definition."""
    order = sorted(range(len(row)), key=lambda j: (-row[j], j))
    return [j for j in order if j not in excluded and (allowed is None or j in allowed)]


def make_cirr(seed):
    rng = np.random.default_rng(seed)
    gallery = [f"test1-{i}-0-img0" for i in range(NUM_G)]
    groups = [rng.choice(NUM_G, 6, replace=False).tolist() for _ in range(NUM_Q)]
    queries = [Query(str(12000 + i), gallery[g[0]], ("c",), group=tuple(gallery[j] for j in g))
               for i, g in enumerate(groups)]
    split = CIRSplit("cirr", "cirr/test1", {n: Path(n) for n in gallery}, gallery, queries)
    # ties in half the seeds exercise the tie rule
    scores = rng.integers(0, 4, (NUM_Q, NUM_G)) if seed % 2 else rng.standard_normal((NUM_Q, NUM_G))
    return split, torch.tensor(scores, dtype=torch.float32), groups


def make_circo(seed):
    rng = np.random.default_rng(seed)
    ids = rng.choice(600000, NUM_G, replace=False).tolist()
    gallery = [str(i) for i in ids]
    queries = [Query(str(q), gallery[int(rng.integers(NUM_G))], ("c",), shared_concept="x") for q in range(NUM_Q)]
    split = CIRSplit("circo", "circo/test", {n: Path(n) for n in gallery}, gallery, queries)
    return split, torch.tensor(rng.standard_normal((NUM_Q, NUM_G)), dtype=torch.float32), ids


@pytest.mark.parametrize("seed", range(6))
def test_cirr_submission_matches_ranking(seed):
    split, scores, groups = make_cirr(seed)
    recall, subset = cirr_submission(split, scores)
    assert (recall["version"], recall["metric"]) == ("rc2", "recall")
    assert (subset["version"], subset["metric"]) == ("rc2", "recall_subset")
    assert len(recall) == len(subset) == NUM_Q + 2
    for i, q in enumerate(split.queries):
        ref = groups[i][0]
        row = scores[i].tolist()
        assert recall[q.query_id] == [split.gallery[j] for j in ranking(row, (ref,))[:50]]
        assert subset[q.query_id] == [split.gallery[j] for j in ranking(row, (ref,), set(groups[i]))[:3]]
        assert q.reference not in recall[q.query_id]


@pytest.mark.parametrize("seed", range(6))
def test_circo_submission_matches_ranking(seed):
    split, scores, ids = make_circo(seed)
    sub = circo_submission(split, scores)
    assert set(sub) == {q.query_id for q in split.queries}
    for i, q in enumerate(split.queries):
        assert sub[q.query_id] == [ids[j] for j in ranking(scores[i].tolist())[:50]]  # reference not removed
        assert all(type(v) is int for v in sub[q.query_id])


def test_write_submission_files(tmp_path):
    split, scores, _ = make_cirr(0)
    paths = write_submission(split, scores, tmp_path / "out")
    assert [p.name for p in paths] == ["cirr_test1_recall.json", "cirr_test1_recall_subset.json"]
    assert json.loads(paths[0].read_text()) == cirr_submission(split, scores)[0]
    split, scores, _ = make_circo(1)
    (path,) = write_submission(split, scores, tmp_path / "out")
    assert path.name == "circo_test.json" and json.loads(path.read_text()) == circo_submission(split, scores)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "circo_test.json", "cirr_test1_recall.json", "cirr_test1_recall_subset.json"]  # no temp files left
    fiq = CIRSplit("fashioniq", "fashioniq/dress/test", {}, ["a"], [Query("dress/0", "a", ("x",))])
    with pytest.raises(ZscirError, match="only CIRR and CIRCO"):
        write_submission(fiq, torch.zeros(1, 1), tmp_path)


def test_bad_scores_shape_rejected():
    split, scores, _ = make_cirr(0)
    with pytest.raises(ValueError, match="shape"):
        cirr_submission(split, scores[:, :-1])


def _broken_cirr(change):
    split, scores, _ = make_cirr(3)
    recall, subset = cirr_submission(split, scores)
    q0 = split.queries[0]
    return split, change(recall, subset, q0)


@pytest.mark.parametrize("change,message", [
    (lambda r, s, q: (r.pop(q.query_id), r)[1], "1 queries have no prediction"),
    (lambda r, s, q: (r.update({"999": r[q.query_id]}), r)[1], "not query ids"),
    (lambda r, s, q: (r[q.query_id].pop(), r)[1], "expected a list of 50 predictions, got 49"),
    (lambda r, s, q: (r[q.query_id].__setitem__(1, r[q.query_id][0]), r)[1], "duplicate predictions"),
    (lambda r, s, q: (r[q.query_id].__setitem__(0, q.reference), r)[1], "lists its own reference"),
    (lambda r, s, q: (r[q.query_id].__setitem__(0, 7), r)[1], "must be str"),
    (lambda r, s, q: (r[q.query_id].__setitem__(0, "nope"), r)[1], "'nope' is not in the gallery"),
    (lambda r, s, q: {**r, "version": "rc1"}, '"version": "rc2"'),
    (lambda r, s, q: (s[q.query_id].__setitem__(0, next(n for n in r[q.query_id] if n not in q.group)), s)[1],
     "is not in the img_set"),
])
def test_validate_cirr_rejects(change, message):
    split, broken = _broken_cirr(change)
    with pytest.raises(DataError, match=message):
        validate_cirr_submission(broken, split)


@pytest.mark.parametrize("change,message", [
    (lambda s, q: (s.pop(q), s)[1], "no prediction"),
    (lambda s, q: (s[q].__setitem__(0, str(s[q][0])), s)[1], "must be int"),
    (lambda s, q: (s[q].__setitem__(0, True), s)[1], "must be int"),
    (lambda s, q: (s[q].__setitem__(2, s[q][1]), s)[1], "duplicate predictions"),
    (lambda s, q: (s[q].__setitem__(2, -5), s)[1], "image id -5 is not in the gallery"),
    (lambda s, q: {**s, q: s[q][:10]}, "expected a list of 50 predictions, got 10"),
])
def test_validate_circo_rejects(change, message):
    split, scores, _ = make_circo(2)
    sub = circo_submission(split, scores)
    with pytest.raises(DataError, match=message):
        validate_circo_submission(change(sub, "0"), split)
