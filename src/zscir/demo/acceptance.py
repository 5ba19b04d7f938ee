"""Which of the literature's orderings hold on this run, computed from the metric rows (issue 14).

Every published zero-shot CIR table orders the rows the same way: the relative caption alone beats
the reference image alone; every inversion method beats image, text and their sum; RTD lifts its base
method; CIG lifts it a little; and an oracle query stays far above all of them. The demo states, from
its own numbers, which of these hold, so a reader sees at once where the world departs from real data.
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


@dataclass(frozen=True)
class Check:
    """One ordering: `holds` on the mean rows, and in how many of the seeds."""

    name: str
    holds: bool
    seeds_holding: int
    seeds: int
    detail: str


def _value(rows: dict, label: str, bench: str, metric: str) -> float | None:
    return rows.get(label, {}).get(bench, {}).get(metric)


def _orderings(rows: dict) -> list[tuple[str, bool | None, str]]:
    """(name, holds or None when a row is missing, numbers) for one set of rows."""
    out: list[tuple[str, bool | None, str]] = []

    def compare(name, left, right, bench, metric, at_least=False, right_value=None, right_name=None):
        a = _value(rows, left, bench, metric)
        b = right_value if right_value is not None else _value(rows, right, bench, metric)
        if a is None or b is None:
            out.append((name, None, "row missing"))
            return
        out.append((name, a >= b if at_least else a > b, f"{a:.1f} vs {b:.1f} ({right_name or right})"))

    compare("text only > image only (CIRR R@1)", TEXT, IMAGE, "cirr", "R@1")
    for method in (LINCIR, SEARLE, OTI):
        for metric in ("R@1", "R@10"):
            baselines = [v for v in (_value(rows, b, "cirr", metric) for b in (IMAGE, TEXT, SUM)) if v is not None]
            best = max(baselines) if len(baselines) == 3 else None
            compare(f"{method} > best of image / text / sum (CIRR {metric})", method, None, "cirr", metric,
                    right_value=best, right_name="best baseline")
    for bench, metric in (("cirr", "R@1"), ("fashioniq", "R@10"), ("circo", "mAP@10")):
        compare(f"LinCIR + RTD > LinCIR ({bench} {metric})", RTD, LINCIR, bench, metric)
    for metric in ("R@1", "R@10"):
        compare(f"LinCIR + CIG >= LinCIR (CIRR {metric})", CIG, LINCIR, "cirr", metric, at_least=True)
    methods = [v for v in (_value(rows, m, "cirr", "R@1") for m in (LINCIR, RTD, SEARLE, OTI, CIG)) if v is not None]
    upper = _value(rows, UPPER, "cirr", "R@1")
    name = f"upper bound >= best method + {UPPER_MARGIN:.0f} (CIRR R@1)"
    if upper is None or not methods:
        out.append((name, None, "row missing"))
    else:
        out.append((name, upper >= max(methods) + UPPER_MARGIN, f"{upper:.1f} vs {max(methods):.1f}"))
    return out


def acceptance(mean_rows: dict, rows_per_seed: list[dict] | None = None) -> list[Check]:
    """The orderings on the mean rows, with how many single seeds agree (rows missing are left out).

    Args:
        mean_rows: {label: {benchmark: metrics}} (the mean over seeds, or a single run).
        rows_per_seed: the same per seed; None = the single run only.
    """
    per_seed = [dict((n, h) for n, h, _ in _orderings(r)) for r in (rows_per_seed or [mean_rows])]
    checks = []
    for name, holds, detail in _orderings(mean_rows):
        if holds is None:
            continue
        agreeing = sum(bool(seed.get(name)) for seed in per_seed)
        checks.append(Check(name, holds, agreeing, len(per_seed), detail))
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
