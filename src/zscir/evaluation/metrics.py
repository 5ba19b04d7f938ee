"""Retrieval metrics as pure vectorised functions, and `evaluate_split`, the one place that picks them per dataset.

Shapes: a score matrix is [Q, G] (queries x gallery, higher = more similar, rows = `split.queries`,
columns = `split.gallery`). Rankings sort by descending score; ties go to the lower gallery index
(a stable sort), and `target_ranks` and `rank_gallery` agree on that rule.

Definitions (METHODS §6):
- recall@K: 100 * fraction of queries whose target is among the first K of its ranking.
  CIRR removes the reference image from its own ranking; FashionIQ and CIRCO do not.
- CIRR Recall_subset@K: the same with the ranking restricted to the query's img_set members minus the reference.
- CIRCO AP@K = sum_{i<=K} P@i * rel_i / min(#GT, K); mAP@K = 100 * mean over queries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from zscir.data.records import CIRSplit
from zscir.errors import DataError

_NOT_RANKED = torch.iinfo(torch.long).max  # rank of a target that is not among the allowed candidates
CHUNK_ELEMENTS = 1 << 24  # rows are processed in chunks of about this many [rows, G] elements (memory bound)


@dataclass(frozen=True)
class Protocol:
    """Which metrics a dataset reports (data, not code paths).

    Attributes:
        remove_reference: drop each query's reference image from its ranking (CIRR).
        recall_ks: K values of recall@K, reported as "R@K" (on the primary target).
        subset_ks: K values of Recall_subset@K over `Query.group`, reported as "Rs@K".
        map_ks: K values of mAP@K over all targets, reported as "mAP@K".
        average_of: metric names whose mean is reported as "Avg" (CIRR: (R@5 + Rs@1) / 2).
    """

    remove_reference: bool
    recall_ks: tuple[int, ...]
    subset_ks: tuple[int, ...] = ()
    map_ks: tuple[int, ...] = ()
    average_of: tuple[str, ...] = ()


PROTOCOLS: dict[str, Protocol] = {
    "cirr": Protocol(remove_reference=True, recall_ks=(1, 5, 10, 50), subset_ks=(1, 2, 3),
                     average_of=("R@5", "Rs@1")),
    "fashioniq": Protocol(remove_reference=False, recall_ks=(10, 50), average_of=("R@10", "R@50")),
    "circo": Protocol(remove_reference=False, recall_ks=(5, 10, 25, 50), map_ks=(5, 10, 25, 50)),
}


def as_scores(scores, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Check a score matrix and return it as a floating torch tensor (no copy when already one).

    Args:
        scores: [Q, G] torch tensor or numpy array.
        shape: the expected (Q, G), if known.
    Returns:
        The scores as a floating-point tensor on the CPU.
    Raises:
        ValueError: wrong rank/shape, or NaN/inf entries.
    """
    s = torch.as_tensor(scores).detach().cpu()
    if not s.is_floating_point():
        s = s.float()
    if s.dim() != 2:
        raise ValueError(f"scores must be a 2-D [queries, gallery] matrix, got shape {tuple(s.shape)}")
    if shape is not None and tuple(s.shape) != tuple(shape):
        raise ValueError(f"scores have shape {tuple(s.shape)}, expected {tuple(shape)} (queries, gallery)")
    if not torch.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    return s


def _row_chunks(num_rows: int, num_cols: int) -> list[slice]:
    """Row slices so that each [rows, G] temporary stays around CHUNK_ELEMENTS elements."""
    step = max(1, CHUNK_ELEMENTS // max(1, num_cols))
    return [slice(i, min(i + step, num_rows)) for i in range(0, num_rows, step)]


def target_ranks(scores, targets, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each query's target in its ranking over the allowed gallery items.

    Args:
        scores: [Q, G] score matrix.
        targets: [Q] gallery index of each query's target.
        allowed: optional [Q, G] bool; False removes an item from that query's ranking.
    Returns:
        [Q] long tensor; a target that is itself not allowed gets a huge rank (never a hit).
    """
    s = as_scores(scores)
    t = torch.as_tensor(targets, dtype=torch.long)
    num_q, num_g = s.shape
    if t.shape != (num_q,):
        raise ValueError(f"targets must have shape ({num_q},), got {tuple(t.shape)}")
    if num_q and (t.min() < 0 or t.max() >= num_g):
        raise ValueError(f"target indices must be in [0, {num_g})")
    if allowed is not None and tuple(allowed.shape) != (num_q, num_g):
        raise ValueError(f"allowed must have shape {(num_q, num_g)}, got {tuple(allowed.shape)}")
    columns = torch.arange(num_g)
    out = torch.empty(num_q, dtype=torch.long)
    for rows in _row_chunks(num_q, num_g):
        sc, tc = s[rows], t[rows, None]  # [q, G], [q, 1]
        st = sc.gather(1, tc)
        # items ranked before the target: higher score, or equal score and lower index (stable sort).
        ahead = (sc > st) | ((sc == st) & (columns[None, :] < tc))
        if allowed is not None:
            ahead &= allowed[rows]
        ranks = ahead.sum(1)
        if allowed is not None:
            ranks[~allowed[rows].gather(1, tc).squeeze(1)] = _NOT_RANKED
        out[rows] = ranks
    return out


def rank_gallery(scores, k: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the top-k gallery items per query, best first (ties: lower index first).

    Args:
        scores: [Q, G] score matrix.
        k: how many items to return per query.
        allowed: optional [Q, G] bool; False items never appear. Every row needs >= k allowed items.
    Returns:
        [Q, k] long tensor of gallery indices.
    """
    s = as_scores(scores)
    num_q, num_g = s.shape
    if not 1 <= k <= num_g:
        raise ValueError(f"k must be in [1, {num_g}], got {k}")
    if allowed is not None:
        if tuple(allowed.shape) != (num_q, num_g):
            raise ValueError(f"allowed must have shape {(num_q, num_g)}, got {tuple(allowed.shape)}")
        short = (allowed.sum(1) < k).nonzero().flatten()
        if len(short):
            raise ValueError(f"query row {int(short[0])} has fewer than {k} allowed gallery items")
    out = torch.empty(num_q, k, dtype=torch.long)
    for rows in _row_chunks(num_q, num_g):
        sc = s[rows]
        if allowed is not None:
            sc = sc.masked_fill(~allowed[rows], float("-inf"))  # scores are finite, so masked items sort last
        out[rows] = _top_k_stable(sc, k)
    return out


def _top_k_stable(sc: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k indices of each row of [q, G], by descending value, ties by ascending index.

    `topk` is ~10x faster than a full sort on 100k-image galleries but orders ties arbitrarily: the k
    winners are re-sorted (index, then stable by value), and rows with a tie across the k-th place
    (where `topk` may pick the wrong member) fall back to a full stable sort.
    """
    num_g = sc.shape[1]
    vals, idx = torch.topk(sc, min(k + 1, num_g), dim=1)  # [q, k+1] descending
    by_index = idx[:, :k].sort(dim=1).values
    order = torch.sort(sc.gather(1, by_index), dim=1, descending=True, stable=True).indices
    top = by_index.gather(1, order)
    if k < num_g:
        tied = (vals[:, k - 1] == vals[:, k]).nonzero().flatten()
        if len(tied):
            top[tied] = torch.sort(sc[tied], dim=1, descending=True, stable=True).indices[:, :k]
    return top


def recall_at_k(ranks: torch.Tensor, k: int) -> float:
    """Recall@K in percent from 0-based target ranks.

    Args:
        ranks: [Q] ranks from `target_ranks`.
        k: cut-off.
    Returns:
        100 * mean(rank < k).
    """
    if ranks.numel() == 0:
        raise ValueError("recall of an empty set of queries")
    return float((ranks < k).double().mean() * 100)


def check_unique_rows(ranked: torch.Tensor, what: str = "ranking") -> None:
    """Raise ValueError if any row of `ranked` repeats an entry (-1 = padding, ignored).

    Args:
        ranked: [Q, K] integer tensor.
        what: name used in the message.
    """
    srt = torch.sort(ranked, dim=1).values
    dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    bad = dup.any(1).nonzero().flatten()
    if len(bad):
        row = int(bad[0])
        value = int(srt[row, 1:][dup[row]][0])
        raise ValueError(f"{what} row {row} lists item {value} more than once")


def average_precision_at_k(ranked, relevant, k: int) -> torch.Tensor:
    """AP@K per query: sum_{i<=K} P@i * rel_i / min(#GT, K).

    Args:
        ranked: [Q, L] gallery indices, best first, unique per row. If L < k the missing positions
            count as non-relevant.
        relevant: [Q, M] gallery indices of the ground truths, padded with -1; >= 1 per row, unique.
        k: cut-off.
    Returns:
        [Q] float64 tensor in [0, 1].
    Raises:
        ValueError: duplicate predictions or ground truths in a row, or a query without ground truth.
    """
    ranked = torch.as_tensor(ranked, dtype=torch.long)
    relevant = torch.as_tensor(relevant, dtype=torch.long)
    if ranked.dim() != 2 or relevant.dim() != 2 or ranked.shape[0] != relevant.shape[0]:
        raise ValueError(f"ranked [Q, L] and relevant [Q, M] must share Q; got {tuple(ranked.shape)}, "
                         f"{tuple(relevant.shape)}")
    check_unique_rows(ranked, "ranking")
    check_unique_rows(relevant, "ground truth")
    num_gt = (relevant >= 0).sum(1)
    if (num_gt == 0).any():
        raise ValueError(f"query row {int((num_gt == 0).nonzero()[0])} has no ground truth")
    top = ranked[:, :k]  # [Q, L'] with L' = min(L, k)
    rel = ((top[:, :, None] == relevant[:, None, :]) & (relevant[:, None, :] >= 0)).any(-1).double()
    precision = rel.cumsum(1) / torch.arange(1, top.shape[1] + 1, dtype=torch.float64)  # P@i
    return (precision * rel).sum(1) / num_gt.clamp(max=k).double()


def mean_average_precision_at_k(ranked, relevant, k: int) -> float:
    """mAP@K in percent (see `average_precision_at_k` for the arguments).

    Returns:
        100 * mean over queries of AP@K.
    """
    return float(average_precision_at_k(ranked, relevant, k).mean() * 100)


def allowed_mask(split: CIRSplit, remove_reference: bool = True, restrict_to_group: bool = False) -> torch.Tensor:
    """[Q, G] bool mask of the gallery items each query may retrieve.

    Args:
        split: the split (rows = queries, columns = gallery).
        remove_reference: exclude the query's own reference image (when it is in the gallery).
        restrict_to_group: allow only the query's `group` (CIRR img_set members).
    Returns:
        A bool tensor [len(queries), len(gallery)].
    Raises:
        DataError: restrict_to_group with a query whose group is empty or names an image outside the gallery.
    """
    pos = split.gallery_positions()
    num_q, num_g = len(split.queries), len(split.gallery)
    mask = torch.full((num_q, num_g), not restrict_to_group, dtype=torch.bool)
    if restrict_to_group:
        rows, cols = [], []
        for i, q in enumerate(split.queries):
            if not q.group:
                raise DataError(f"{split.name}: query {q.query_id} has no img_set (needed for Recall_subset)")
            for m in q.group:
                if m not in pos:
                    raise DataError(f"{split.name}: query {q.query_id}: img_set member {m!r} is not in the gallery")
                rows.append(i)
                cols.append(pos[m])
        mask[rows, cols] = True
    if remove_reference:
        refs = [(i, pos[q.reference]) for i, q in enumerate(split.queries) if q.reference in pos]
        if refs:
            rows_t, cols_t = zip(*refs)
            mask[list(rows_t), list(cols_t)] = False
    return mask


def target_indices(split: CIRSplit) -> list[list[int]]:
    """Gallery indices of every query's targets (primary first).

    Args:
        split: a split with targets.
    Returns:
        One list per query.
    Raises:
        DataError: a test split (no targets) or a target outside the gallery.
    """
    if not split.has_targets:
        raise DataError(f"{split.name} has no ground-truth targets (a test split?): write a submission instead")
    pos = split.gallery_positions()
    out = []
    for q in split.queries:
        missing = [t for t in q.targets if t not in pos]
        if missing:
            raise DataError(f"{split.name}: query {q.query_id}: target {missing[0]!r} is not in the gallery")
        out.append([pos[t] for t in q.targets])
    return out


def per_query_metrics(split: CIRSplit, scores) -> dict[str, torch.Tensor]:
    """Every metric of the split's protocol per query: a hit (R@K, Rs@K: 0 or 1) or AP@K, as [Q] float64.

    The mean of each, times 100, is `evaluate_split`'s value; per query they pair two methods on the same
    queries (`zscir.demo.acceptance` draws a confidence interval of their difference from them).

    Args:
        split: a split with targets (val/train).
        scores: [len(split.queries), len(split.gallery)] score matrix (torch or numpy).
    Returns:
        {metric name: [Q] tensor in [0, 1]}, "Avg" excluded.
    """
    if split.dataset not in PROTOCOLS:
        raise ValueError(f"no metric protocol for dataset {split.dataset!r}; known: {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[split.dataset]
    s = as_scores(scores, (len(split.queries), len(split.gallery)))
    targets = target_indices(split)
    primary = torch.tensor([t[0] for t in targets], dtype=torch.long)
    allowed = allowed_mask(split) if protocol.remove_reference else None

    values: dict[str, torch.Tensor] = {}
    if protocol.recall_ks:
        ranks = target_ranks(s, primary, allowed)
        values.update({f"R@{k}": (ranks < k).double() for k in protocol.recall_ks})
    if protocol.subset_ks:
        ranks = target_ranks(s, primary, allowed_mask(split, remove_reference=True, restrict_to_group=True))
        values.update({f"Rs@{k}": (ranks < k).double() for k in protocol.subset_ks})
    if protocol.map_ks:
        available = len(split.gallery) - (1 if protocol.remove_reference else 0)
        ranked = rank_gallery(s, min(max(protocol.map_ks), available), allowed)
        width = max(len(t) for t in targets)
        relevant = torch.tensor([t + [-1] * (width - len(t)) for t in targets], dtype=torch.long)
        values.update({f"mAP@{k}": average_precision_at_k(ranked, relevant, k) for k in protocol.map_ks})
    return values


def evaluate_split(split: CIRSplit, scores) -> dict[str, float]:
    """All metrics of the split's dataset (PROTOCOLS[split.dataset]), in percent: the per-query values'
    means (`per_query_metrics`) and the protocol's "Avg".

    Args:
        split: a split with targets (val/train).
        scores: [len(split.queries), len(split.gallery)] score matrix (torch or numpy).
    Returns:
        e.g. CIRR {"R@1", "R@5", "R@10", "R@50", "Rs@1", "Rs@2", "Rs@3", "Avg"};
        FashionIQ {"R@10", "R@50", "Avg"}; CIRCO {"R@5".."R@50", "mAP@5", "mAP@10", "mAP@25", "mAP@50"}.
    """
    values = per_query_metrics(split, scores)
    if any(v.numel() == 0 for v in values.values()):
        raise ValueError("metrics of an empty set of queries")
    metrics = {name: float(v.mean() * 100) for name, v in values.items()}
    protocol = PROTOCOLS[split.dataset]
    if protocol.average_of:
        metrics["Avg"] = sum(metrics[name] for name in protocol.average_of) / len(protocol.average_of)
    return metrics


def mean_metrics(results: Mapping[str, Mapping[str, float]] | Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average each metric over several splits (FashionIQ: the mean over its three categories).

    Args:
        results: {split name: metrics} or a list of metric dicts.
    Returns:
        {metric: mean} for the metrics present in every split.
    """
    rows = list(results.values()) if isinstance(results, Mapping) else list(results)
    if not rows:
        raise ValueError("no results to average")
    names = [n for n in rows[0] if all(n in r for r in rows)]
    return {n: sum(r[n] for r in rows) / len(rows) for n in names}
