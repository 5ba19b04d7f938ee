"""Which of the literature's orderings hold on this run, computed from the metric rows (issue 14).

Every published zero-shot CIR table orders the rows the same way: the relative caption alone beats
the reference image alone; every inversion method beats image, text and their sum; RTD lifts its base
method; CIG lifts it a little; and an oracle query stays far above all of them. The demo states, from
its own numbers, which of these hold, so a reader sees at once where the world departs from real data.
Each two-row ordering also gets the 95% interval of the difference, paired query by query: a 500-query
val moves R@1 by 0.2 per query, so a reader can tell a difference these queries resolve from noise.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

IMAGE, TEXT, SUM = "image only", "text only", "image + text (sum)"
UPPER = "upper bound: target's own caption"
LINCIR, RTD, CIG = "LinCIR (Phi trained here)", "LinCIR + RTD", "LinCIR + CIG"
SEARLE, OTI = "SEARLE (Phi distilled here)", "SEARLE-OTI"
# "Far above": the upper bound beats the best method by at least this many points of CIRR R@1.
UPPER_MARGIN = 10.0


# The metrics the orderings compare, whose per-query values the demo keeps ({benchmark: metrics}).
COMPARED = {"cirr": ("R@1", "R@10"), "fashioniq": ("R@10",), "circo": ("mAP@10",)}
Z95 = 1.959964  # two-sided 95% quantile of the normal distribution


@dataclass(frozen=True)
class Check:
    """One ordering: `holds` on the mean rows, and in how many of the seeds.

    `difference` is left minus right in points (mean over seeds), `low` / `high` its 95% interval from the
    per-query differences (`paired_difference`); None when the per-query values are not there.
    """

    name: str
    holds: bool
    seeds_holding: int
    seeds: int
    detail: str
    difference: float | None = None
    low: float | None = None
    high: float | None = None

    @property
    def within_noise(self) -> bool:
        """True when the 95% interval of the difference contains 0: these queries cannot tell the two rows apart."""
        return within_noise(self.low, self.high)


def within_noise(low: float | None, high: float | None) -> bool:
    """True when a 95% interval [low, high] contains 0 (False when there is no interval)."""
    return low is not None and low <= 0.0 <= high


@dataclass(frozen=True)
class _Ordering:
    name: str
    holds: bool | None  # None: a row is missing
    detail: str
    left: str | None = None  # the two rows compared query by query (None: not a two-row comparison)
    right: str | None = None
    bench: str = "cirr"
    metric: str = "R@1"


def paired_difference(left: list, right: list) -> tuple[float, float]:
    """Difference of two methods' values of one metric on the same queries, and its standard error (points).

    Args:
        left, right: per split, the per-query values in [0, 1] (a hit, or AP); the benchmark's value is the
            mean over splits of each split's mean (FashionIQ: its three categories), as the rows report it.
    Returns:
        (mean over splits of the mean per-query difference d, sqrt(sum_s var(d_s) / n_s) / S) × 100, with
        var the sample variance: the paired test's estimate, queries independent within a split.
    """
    if len(left) != len(right) or any(len(a) != len(b) for a, b in zip(left, right)):
        raise ValueError("paired values must cover the same splits and queries")
    means, variances = [], []
    for a, b in zip(left, right):
        d = [x - y for x, y in zip(a, b)]
        means.append(statistics.fmean(d))
        variances.append(statistics.variance(d) / len(d) if len(d) > 1 else 0.0)
    return 100 * statistics.fmean(means), 100 * sum(variances) ** 0.5 / len(means)


def pooled_difference(per_seed: list[tuple[float, float]]) -> tuple[float, float]:
    """Mean over independent seeds of (difference, standard error) pairs: (mean, sqrt(sum se^2) / N)."""
    return (statistics.fmean(d for d, _ in per_seed),
            sum(se * se for _, se in per_seed) ** 0.5 / len(per_seed))


def _value(rows: dict, label: str, bench: str, metric: str) -> float | None:
    return rows.get(label, {}).get(bench, {}).get(metric)


def _orderings(rows: dict) -> list[_Ordering]:
    """Every ordering (a row missing: holds None) for one set of rows."""
    out: list[_Ordering] = []

    def compare(name, left, right, bench, metric, at_least=False, right_name=None):
        a, b = _value(rows, left, bench, metric), _value(rows, right, bench, metric)
        if a is None or b is None:
            out.append(_Ordering(name, None, "row missing"))
            return
        out.append(_Ordering(name, a >= b if at_least else a > b, f"{a:.1f} vs {b:.1f} ({right_name or right})",
                             left, right, bench, metric))

    compare("text only > image only (CIRR R@1)", TEXT, IMAGE, "cirr", "R@1")
    for method in (LINCIR, SEARLE, OTI):
        for metric in ("R@1", "R@10"):
            baselines = [b for b in (IMAGE, TEXT, SUM) if _value(rows, b, "cirr", metric) is not None]
            best = max(baselines, key=lambda b: _value(rows, b, "cirr", metric)) if len(baselines) == 3 else None
            compare(f"{method} > best of image / text / sum (CIRR {metric})", method, best, "cirr", metric,
                    right_name="best baseline")
    for bench, metric in (("cirr", "R@1"), ("fashioniq", "R@10"), ("circo", "mAP@10")):
        compare(f"LinCIR + RTD > LinCIR ({bench} {metric})", RTD, LINCIR, bench, metric)
    for metric in ("R@1", "R@10"):
        compare(f"LinCIR + CIG >= LinCIR (CIRR {metric})", CIG, LINCIR, "cirr", metric, at_least=True)
    methods = [v for v in (_value(rows, m, "cirr", "R@1") for m in (LINCIR, RTD, SEARLE, OTI, CIG)) if v is not None]
    upper = _value(rows, UPPER, "cirr", "R@1")
    name = f"upper bound >= best method + {UPPER_MARGIN:.0f} (CIRR R@1)"
    if upper is None or not methods:
        out.append(_Ordering(name, None, "row missing"))
    else:
        out.append(_Ordering(name, upper >= max(methods) + UPPER_MARGIN, f"{upper:.1f} vs {max(methods):.1f}"))
    return out


def acceptance(mean_rows: dict, rows_per_seed: list[dict] | None = None,
               queries_per_seed: list[dict] | None = None) -> list[Check]:
    """The orderings on the mean rows, with how many single seeds agree (rows missing are left out).

    Args:
        mean_rows: {label: {benchmark: metrics}} (the mean over seeds, or a single run).
        rows_per_seed: the same per seed; None = the single run only.
        queries_per_seed: per seed, {label: {benchmark: {metric: [per split, the per-query values]}}} for the
            `COMPARED` metrics; each two-row ordering then gets the 95% interval of its paired difference
            (pooled over seeds; the right-hand row is the one the mean rows name, e.g. the best baseline).
    """
    per_seed = [{o.name: o.holds for o in _orderings(r)} for r in (rows_per_seed or [mean_rows])]
    checks = []
    for o in _orderings(mean_rows):
        if o.holds is None:
            continue
        agreeing = sum(bool(seed.get(o.name)) for seed in per_seed)
        interval = {}
        pairs = [(q.get(o.left, {}).get(o.bench, {}).get(o.metric), q.get(o.right, {}).get(o.bench, {}).get(o.metric))
                 for q in (queries_per_seed or [])] if o.left else []
        if pairs and all(a is not None and b is not None for a, b in pairs):
            difference, error = pooled_difference([paired_difference(a, b) for a, b in pairs])
            interval = {"difference": round(difference, 2), "low": round(difference - Z95 * error, 2),
                        "high": round(difference + Z95 * error, 2)}
        checks.append(Check(o.name, o.holds, agreeing, len(per_seed), o.detail, **interval))
    return checks


def mean_std_rows(rows_per_seed: list[dict]) -> tuple[dict, dict]:
    """Mean and sample standard deviation (0 for one seed) of every metric present in every seed."""
    mean: dict = {}
    std: dict = {}
    for label in rows_per_seed[0]:
        for bench in rows_per_seed[0][label]:
            for metric in rows_per_seed[0][label][bench]:
                values = [r[label][bench][metric] for r in rows_per_seed
                          if metric in r.get(label, {}).get(bench, {})]
                if len(values) != len(rows_per_seed):
                    continue
                mean.setdefault(label, {}).setdefault(bench, {})[metric] = round(statistics.fmean(values), 2)
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                std.setdefault(label, {}).setdefault(bench, {})[metric] = round(spread, 2)
    return mean, std
