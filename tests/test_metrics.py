"""Metrics: vectorised functions vs plain loops written from the definitions, and hand-worked toy cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from zscir.data.records import CIRSplit, Query
from zscir.errors import DataError
from zscir.evaluation import metrics as M

SEEDS = range(40)


# ---- slow references, written from the definitions --------------------------------------------


def ref_ranking(row, excluded=(), allowed=None):
    """Gallery indices by descending score, ties by index; `excluded` removed; only `allowed` kept."""
    order = sorted(range(len(row)), key=lambda j: (-row[j], j))
    return [j for j in order if j not in excluded and (allowed is None or j in allowed)]


def ref_recall(scores, targets, k, refs=None, groups=None):
    """100 * fraction of queries whose target is in the first k of its (filtered) ranking."""
    hits = 0
    for i, row in enumerate(scores):
        excluded = (refs[i],) if refs is not None else ()
        allowed = set(groups[i]) if groups is not None else None
        hits += targets[i] in ref_ranking(list(row), excluded, allowed)[:k]
    return 100.0 * hits / len(scores)


def ref_ap(ranking, gt, k):
    """AP@K = sum_{i<=K} P@i * rel_i / min(#GT, K)."""
    total, hits = 0.0, 0
    for i, j in enumerate(ranking[:k], start=1):
        if j in gt:
            hits += 1
            total += hits / i
    return total / min(len(gt), k)


def random_scores(rng, num_q, num_g, ties):
    if ties:  # few distinct values: exercises the tie rule
        return rng.integers(0, 3, size=(num_q, num_g)).astype(np.float32)
    return rng.standard_normal((num_q, num_g)).astype(np.float32)


# ---- fast vs slow, many seeds -------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_recall_with_reference_removed_matches_loop(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    num_q, num_g = int(rng.integers(1, 9)), int(rng.integers(2, 25))
    if seed % 3 == 0:
        monkeypatch.setattr(M, "CHUNK_ELEMENTS", 7)  # several row chunks
    scores = random_scores(rng, num_q, num_g, ties=seed % 4 == 1)
    refs = rng.integers(0, num_g, num_q).tolist()
    targets = rng.integers(0, num_g, num_q).tolist()  # sometimes == reference: must be a miss
    allowed = torch.ones(num_q, num_g, dtype=torch.bool)
    allowed[torch.arange(num_q), torch.tensor(refs)] = False
    ranks = M.target_ranks(torch.from_numpy(scores), torch.tensor(targets), allowed)
    plain = M.target_ranks(torch.from_numpy(scores), torch.tensor(targets))
    for k in (1, 2, 5, num_g):
        assert M.recall_at_k(ranks, k) == pytest.approx(ref_recall(scores, targets, k, refs=refs))
        assert M.recall_at_k(plain, k) == pytest.approx(ref_recall(scores, targets, k))


@pytest.mark.parametrize("seed", SEEDS)
def test_recall_subset_matches_loop(seed):
    rng = np.random.default_rng(1000 + seed)
    num_q, num_g = int(rng.integers(1, 9)), int(rng.integers(7, 25))
    scores = random_scores(rng, num_q, num_g, ties=seed % 4 == 1)
    refs, targets, groups = [], [], []
    for _ in range(num_q):
        group = rng.choice(num_g, size=6, replace=False).tolist()
        refs.append(group[int(rng.integers(0, 6))] if rng.random() < 0.8 else int(rng.integers(0, num_g)))
        targets.append(group[int(rng.integers(0, 6))] if rng.random() < 0.9 else int(rng.integers(0, num_g)))
        groups.append(group)
    allowed = torch.zeros(num_q, num_g, dtype=torch.bool)
    for i, g in enumerate(groups):
        allowed[i, g] = True
        allowed[i, refs[i]] = False
    ranks = M.target_ranks(scores, torch.tensor(targets), allowed)
    for k in (1, 2, 3):
        assert M.recall_at_k(ranks, k) == pytest.approx(ref_recall(scores, targets, k, refs=refs, groups=groups))


@pytest.mark.parametrize("seed", SEEDS)
def test_rank_gallery_and_map_match_loop(seed, monkeypatch):
    rng = np.random.default_rng(2000 + seed)
    num_q, num_g = int(rng.integers(1, 9)), int(rng.integers(5, 40))
    if seed % 3 == 0:
        monkeypatch.setattr(M, "CHUNK_ELEMENTS", 5)
    scores = random_scores(rng, num_q, num_g, ties=seed % 4 == 1)
    gts = [rng.choice(num_g, size=int(rng.integers(1, 6)), replace=False).tolist() for _ in range(num_q)]
    width = max(map(len, gts))
    relevant = torch.tensor([g + [-1] * (width - len(g)) for g in gts])
    k_max = min(12, num_g)
    ranked = M.rank_gallery(scores, k_max)
    assert ranked.tolist() == [ref_ranking(list(row))[:k_max] for row in scores]
    for k in (1, 3, 5, 10, 12):
        expected = [ref_ap(ref_ranking(list(row)), set(g), k) for row, g in zip(scores, gts)]
        got = M.average_precision_at_k(ranked, relevant, k)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
        assert M.mean_average_precision_at_k(ranked, relevant, k) == pytest.approx(100 * np.mean(expected))


@pytest.mark.parametrize("seed", range(10))
def test_rank_gallery_with_mask_matches_loop(seed):
    rng = np.random.default_rng(3000 + seed)
    num_q, num_g = 4, 12
    scores = random_scores(rng, num_q, num_g, ties=seed % 2 == 0)
    refs = rng.integers(0, num_g, num_q).tolist()
    allowed = torch.ones(num_q, num_g, dtype=torch.bool)
    allowed[torch.arange(num_q), torch.tensor(refs)] = False
    ranked = M.rank_gallery(scores, num_g - 1, allowed)
    assert ranked.tolist() == [ref_ranking(list(row), (r,)) for row, r in zip(scores, refs)]


# ---- hand-worked toy cases ----------------------------------------------------------------------


def test_toy_recall_reference_removal():
    # gallery: 0 = reference (best score), 1 = target, 2, 3
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.2]])
    removed = torch.tensor([[False, True, True, True]])
    assert M.recall_at_k(M.target_ranks(scores, torch.tensor([1]), removed), 1) == 100.0
    assert M.recall_at_k(M.target_ranks(scores, torch.tensor([1])), 1) == 0.0  # reference kept: rank 1
    assert M.target_ranks(scores, torch.tensor([0]), removed).item() > 10**9  # target == reference: never a hit


def test_toy_ties_go_to_lower_index():
    scores = torch.tensor([[0.5, 0.7, 0.5, 0.5]])
    assert M.rank_gallery(scores, 4).tolist() == [[1, 0, 2, 3]]
    assert M.target_ranks(scores, torch.tensor([2])).item() == 2


def test_toy_ties_inside_top_k_and_across_the_cut():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.0],    # tie inside the top 3 only
                           [0.2, 0.9, 0.2, 0.2, 0.2]])   # tie across the 3rd place
    assert M.rank_gallery(scores, 3).tolist() == [[1, 0, 2], [1, 0, 2]]


def test_toy_average_precision():
    a, b, c, x, y, z = range(6)
    ranked = torch.tensor([[a, x, b, y, z]])
    gt = torch.tensor([[a, b, c]])
    # P@1 = 1, P@3 = 2/3; normalised by min(#GT=3, K)
    assert M.average_precision_at_k(ranked, gt, 5).item() == pytest.approx((1 + 2 / 3) / 3)
    assert M.average_precision_at_k(ranked, gt, 1).item() == pytest.approx(1.0)
    assert M.average_precision_at_k(ranked, gt, 2).item() == pytest.approx(1 / 2)
    # two ground truths, both found at ranks 2 and 3
    assert M.average_precision_at_k(torch.tensor([[x, a, b]]), torch.tensor([[a, b, -1]]), 3).item() == \
        pytest.approx((1 / 2 + 2 / 3) / 2)


def test_duplicates_rejected():
    with pytest.raises(ValueError, match="more than once"):
        M.average_precision_at_k(torch.tensor([[1, 2, 1]]), torch.tensor([[1]]), 3)
    with pytest.raises(ValueError, match="more than once"):
        M.average_precision_at_k(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 2]]), 3)
    with pytest.raises(ValueError, match="no ground truth"):
        M.average_precision_at_k(torch.tensor([[1, 2, 3]]), torch.tensor([[-1]]), 3)


def test_bad_scores_rejected():
    with pytest.raises(ValueError, match="NaN"):
        M.as_scores(torch.tensor([[0.1, float("nan")]]))
    with pytest.raises(ValueError, match="shape"):
        M.as_scores(torch.zeros(2, 3), (3, 2))


# ---- the dispatcher -----------------------------------------------------------------------------


def split_of(dataset, gallery, queries):
    return CIRSplit(dataset=dataset, name=f"{dataset}/toy", images={g: Path(f"{g}.png") for g in gallery},
                    gallery=list(gallery), queries=queries)


def test_evaluate_cirr_toy():
    gallery = ["r1", "t1", "x", "y", "r2", "t2"]
    queries = [
        Query("1", "r1", ("c",), targets=("t1",), group=("r1", "t1", "x")),
        Query("2", "r2", ("c",), targets=("t2",), group=("r2", "t2", "y")),
    ]
    #                      r1    t1    x     y     r2    t2
    scores = torch.tensor([[0.99, 0.50, 0.60, 0.90, 0.00, 0.10],   # minus r1: y x t1 ... ; subset: x t1
                           [0.00, 0.10, 0.20, 0.30, 0.99, 0.95]])  # minus r2: t2 first; subset: t2 y
    m = M.evaluate_split(split_of("cirr", gallery, queries), scores)
    assert list(m) == ["R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "Avg"]
    assert m["R@1"] == 50.0 and m["R@5"] == 100.0 and m["R@50"] == 100.0
    assert m["Rs@1"] == 50.0 and m["Rs@2"] == 100.0
    assert m["Avg"] == pytest.approx((100.0 + 50.0) / 2)


def test_evaluate_circo_toy_keeps_reference():
    gallery = ["10", "11", "12", "13", "14"]
    queries = [Query("0", "10", ("c",), targets=("11", "13"))]
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.7, 0.2]])  # ranking: 10 11 13 14 12 (reference stays first)
    m = M.evaluate_split(split_of("circo", gallery, queries), scores)
    assert m["R@5"] == 100.0
    assert m["mAP@5"] == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert m["mAP@50"] == pytest.approx(m["mAP@5"])  # gallery shorter than K: remaining positions irrelevant


def test_evaluate_fashioniq_and_mean():
    gallery = [f"g{i}" for i in range(60)]
    queries = [Query("dress/0", "ref", ("a", "b"), targets=("g5",)),
               Query("dress/1", "g7", ("a", "b"), targets=("g7",))]
    scores = torch.zeros(2, 60)
    scores[0, :20] = 1.0  # g5 ties with 19 others, lower index wins: rank 5 -> in R@10
    scores[1, 7] = -1.0   # g7 last of 60 -> rank 59: miss at 50 (its own reference is NOT removed)
    m = M.evaluate_split(split_of("fashioniq", gallery, queries), scores)
    assert m == {"R@10": 50.0, "R@50": 50.0, "Avg": 50.0}
    avg = M.mean_metrics({"dress": m, "shirt": {"R@10": 20.0, "R@50": 40.0, "Avg": 30.0}})
    assert avg == {"R@10": 35.0, "R@50": 45.0, "Avg": 40.0}


@pytest.mark.parametrize("seed", range(15))
def test_evaluate_split_matches_loops(seed):
    rng = np.random.default_rng(4000 + seed)
    num_g, num_q = 60, 7
    gallery = [f"im{i}" for i in range(num_g)]
    scores = rng.standard_normal((num_q, num_g))
    refs = rng.integers(0, num_g, num_q).tolist()
    groups = [rng.choice(num_g, 6, replace=False).tolist() for _ in range(num_q)]
    for g, r in zip(groups, refs):
        g[0] = r
    targets = [g[int(rng.integers(1, 6))] for g in groups]
    cirr = [Query(str(i), gallery[refs[i]], ("c",), targets=(gallery[targets[i]],),
                  group=tuple(gallery[j] for j in groups[i])) for i in range(num_q)]
    m = M.evaluate_split(split_of("cirr", gallery, cirr), scores)
    per = M.per_query_metrics(split_of("cirr", gallery, cirr), scores)
    one = [slice(i, i + 1) for i in range(num_q)]  # the loop on each query alone: 100 (hit) or 0
    for k in (1, 5, 10, 50):
        assert m[f"R@{k}"] == pytest.approx(ref_recall(scores, targets, k, refs=refs))
        assert per[f"R@{k}"].tolist() == [ref_recall(scores[q], targets[q], k, refs=refs[q]) / 100 for q in one]
    for k in (1, 2, 3):
        assert m[f"Rs@{k}"] == pytest.approx(ref_recall(scores, targets, k, refs=refs, groups=groups))
        assert per[f"Rs@{k}"].tolist() == [ref_recall(scores[q], targets[q], k, refs=refs[q], groups=groups[q]) / 100
                                           for q in one]
    assert set(per) == set(m) - {"Avg"}

    gts = [rng.choice(num_g, int(rng.integers(1, 8)), replace=False).tolist() for _ in range(num_q)]
    circo = [Query(str(i), gallery[refs[i]], ("c",), targets=tuple(gallery[j] for j in gts[i])) for i in range(num_q)]
    m = M.evaluate_split(split_of("circo", gallery, circo), scores)
    for k in (5, 10, 25, 50):
        expected = [ref_ap(ref_ranking(list(row)), set(g), k) for row, g in zip(scores, gts)]
        assert m[f"mAP@{k}"] == pytest.approx(100 * np.mean(expected))
        assert M.per_query_metrics(split_of("circo", gallery, circo), scores)[f"mAP@{k}"].tolist() == \
            pytest.approx(expected)
        assert m[f"R@{k}"] == pytest.approx(ref_recall(scores, [g[0] for g in gts], k))


def test_evaluate_rejects_test_split_and_missing_target():
    gallery = ["a", "b"]
    with pytest.raises(DataError, match="no ground-truth"):
        M.evaluate_split(split_of("cirr", gallery, [Query("1", "a", ("c",), group=("a", "b"))]), torch.zeros(1, 2))
    with pytest.raises(DataError, match="'zz' is not in the gallery"):
        M.evaluate_split(split_of("fashioniq", gallery, [Query("d/0", "a", ("c",), targets=("zz",))]),
                         torch.zeros(1, 2))
    with pytest.raises(ValueError, match="shape"):
        M.evaluate_split(split_of("fashioniq", gallery, [Query("d/0", "a", ("c",), targets=("b",))]),
                         torch.zeros(2, 2))
