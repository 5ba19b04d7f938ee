"""CIG retrieval: fuse the reference query with the pseudo-target query (METHODS.md §5).

The pseudo target goes through the SAME backbone and Phi as the reference:

    v_ref = Phi(image_embeds(reference)),   f_ref = normalize(encode(prompt, v_ref))
    v_gen = Phi(image_embeds(generated)),   f_gen = normalize(encode(prompt, v_gen))
    q     = normalize(α·f_ref + (1 − α)·f_gen)                        (`compose.fuse_queries`)

A query without a usable pseudo target (not generated, rejected as dark, undecodable) falls back
to α = 1 (q = f_ref) and is counted. α = 1 is exactly plain Phi retrieval.

α: the published value per benchmark and split is data in `zscir.recipes.CIG_ALPHA` (0.5 CIRR test,
0.7 CIRCO test, 0.85 CIRR val, 0.9 FashionIQ; `cig_alpha(dataset, split)`), DEFAULT_ALPHA (0.85, the
CIRR val one) elsewhere, the sweep `zscir.recipes.ALPHA_SWEEP`; choose yours with `alpha_sweep` on a val
split, never on test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from zscir.compose import fuse_queries, pseudo_tokens_of
from zscir.errors import ZscirError
from zscir.evaluation.runner import Evaluator, summary_metrics
from zscir.generation.cig import image_path
from zscir.recipes import ALPHA_SWEEP, DEFAULT_ALPHA


@dataclass
class PseudoTargetQueries:
    """The two query matrices of one split, fused on demand.

    Attributes:
        reference: [Q, P] f_ref (normalised), rows = the evaluator's active queries.
        generated: [Q, P] f_gen (rows without a pseudo target hold f_ref).
        has_target: [Q] bool, True where a pseudo target was used.
        missing: query ids without a usable pseudo target (with the reason).
    """

    reference: torch.Tensor
    generated: torch.Tensor
    has_target: torch.Tensor
    missing: dict[str, str]

    def fuse(self, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
        """[Q, P] fused queries; rows without a pseudo target are f_ref (α = 1)."""
        fused = fuse_queries(self.reference, self.generated, alpha)
        return torch.where(self.has_target.unsqueeze(1), fused, self.reference)


def pseudo_target_features(evaluator, pseudo_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """Raw image embeddings of the pseudo targets of the evaluator's active queries.

    The feature cache is keyed by image names that include each file's size and mtime, so a
    regenerated image at the same path is encoded again, never served stale.

    Returns:
        ([Q, P] embeddings (zero rows where missing), [Q] bool present, {query id: reason} missing).
    """
    queries = evaluator.split.queries
    present, missing, images = [], {}, {}
    for q in queries:
        path = image_path(pseudo_dir, q.query_id)
        if path.is_file():
            stat = path.stat()
            images[f"{q.query_id}@{stat.st_size}:{stat.st_mtime_ns}"] = path
            present.append(True)
        else:
            missing[q.query_id] = f"{path}: not generated"
            present.append(False)
    feats = torch.zeros(len(queries), evaluator.backbone.projection_dim)
    mask = torch.tensor(present, dtype=torch.bool)
    if images:
        found = evaluator.cache.image_features(evaluator.backbone, images, evaluator.pad_to_ratio,
                                               evaluator.batch_size, desc=f"{evaluator.split.name} pseudo targets")
        names = list(images)
        rows = mask.nonzero().flatten().tolist()
        feats[rows] = found.lookup(names)
        for row, name in zip(rows, names):
            if name in found.failed:
                mask[row] = False
                missing[queries[row].query_id] = found.failed[name]
    return feats, mask, missing


def pseudo_target_queries(evaluator, phi: torch.nn.Module, pseudo_dir: str | Path, template=None,
                          text_tower: torch.nn.Module | None = None) -> PseudoTargetQueries:
    """f_ref and f_gen of every active query of `evaluator` (see the module docstring).

    Args:
        evaluator: a `zscir.evaluation.runner.Evaluator` on the split (FashionIQ: one category).
        phi: the inversion network used for BOTH the reference and the pseudo target.
        pseudo_dir: folder written by `zscir generate` (`{query_stem}.png`).
        template: prompt template (name, text or PromptTemplate); the default "a photo of $ that {caption}".
        text_tower: optional fine-tuned text tower (RTD), used for both.
    Returns:
        PseudoTargetQueries.
    """
    if phi is None:
        raise ZscirError("CIG fusion needs the inversion network of the backbone", setting="phi")
    reference = evaluator.query_vectors("phi", phi=phi, template=template, text_tower=text_tower)
    feats, mask, missing = pseudo_target_features(evaluator, pseudo_dir)
    v_gen = pseudo_tokens_of(phi, feats, evaluator.backbone.device)
    if not bool(mask.all()):  # rows without a pseudo target: compose with v_ref; they use f_ref anyway
        v_ref = pseudo_tokens_of(phi, evaluator.reference_features(), evaluator.backbone.device)
        v_gen = torch.where(mask.unsqueeze(1), v_gen, v_ref)
    if bool(mask.any()):
        generated = evaluator.query_vectors("phi", phi=phi, template=template, text_tower=text_tower,
                                            pseudo_tokens=v_gen)
    else:
        generated = reference.clone()
    generated = torch.where(mask.unsqueeze(1), generated, reference)
    return PseudoTargetQueries(reference, generated, mask, missing)


def evaluate_fused(evaluator, queries: PseudoTargetQueries, alpha: float = DEFAULT_ALPHA):
    """`Evaluator.evaluate` on the fused queries at one α; returns its EvalResult."""
    return evaluator.evaluate(queries=queries.fuse(alpha))


def alpha_sweep(evaluators: Sequence, queries: Sequence[PseudoTargetQueries],
                alphas: Sequence[float] = ALPHA_SWEEP) -> dict[float, dict[str, dict[str, float]]]:
    """Metrics of every α on val splits (f_ref and f_gen are encoded once, only the fusion varies).

    Args:
        evaluators: one Evaluator per split (FashionIQ: per category).
        queries: their PseudoTargetQueries, in the same order.
        alphas: values in [0, 1].
    Returns:
        {α: {split name (+ "mean" over several): metrics}} as `summary_metrics` gives them.
    """
    if not all(ev.split.has_targets for ev in evaluators):
        raise ZscirError("an α sweep needs a split with targets (val), not test")
    return {float(a): summary_metrics({ev.split.name: evaluate_fused(ev, q, a) for ev, q in zip(evaluators, queries)})
            for a in alphas}


def format_sweep(sweep: dict[float, dict[str, dict[str, float]]], row: str | None = None) -> str:
    """One line per α with the metrics of `row` ("mean" when there are several splits, else the split)."""
    lines = []
    for alpha, table in sweep.items():
        name = row or ("mean" if "mean" in table else next(iter(table)))
        metrics = "  ".join(f"{k} {v:6.2f}" for k, v in table[name].items())
        lines.append(f"alpha {alpha:4.2f}  {metrics}")
    return "\n".join(lines)


def evaluate_cig(splits: Sequence, backbone, phi: torch.nn.Module, cache, evaluator_options: dict | None,
                 pseudo_dir: str | Path, alpha: float = DEFAULT_ALPHA, sweep: Sequence[float] | None = None,
                 template=None, text_tower: torch.nn.Module | None = None, report=print) -> dict:
    """Phi retrieval fused with pseudo targets on several splits (what `zscir evaluate --pseudo-targets` runs).

    Args:
        splits: from `load_benchmark` (FashionIQ: one per category).
        backbone, phi: the retrieval backbone and its inversion network (also used for the pseudo targets).
        cache: a `FeatureCache`.
        evaluator_options: keyword arguments of `Evaluator` (pad_to_ratio, circo_text, skip_missing, batch_size).
        pseudo_dir: folder written by `zscir generate`.
        alpha: the fusion weight of the returned results.
        sweep: if given, also evaluate these α values and report one line per α (val splits only).
        template: prompt template; text_tower: optional fine-tuned text tower.
        report: where the lines (missing counts, sweep) go.
    Returns:
        {split name: EvalResult} at `alpha`.
    """
    evaluators = [Evaluator(backbone, s, cache, **(evaluator_options or {})) for s in splits]
    queries = [pseudo_target_queries(ev, phi, pseudo_dir, template, text_tower) for ev in evaluators]
    for ev, q in zip(evaluators, queries):
        if q.missing:
            example = next(iter(q.missing.values()))
            report(f"{ev.split.name}: {len(q.missing)} of {len(q.has_target)} queries have no pseudo target "
                   f"and use alpha = 1 (e.g. {example})")
    if sweep:
        table = alpha_sweep(evaluators, queries, sweep)
        report(f"alpha sweep on {', '.join(ev.split.name for ev in evaluators)}:\n{format_sweep(table)}")
        first = next(iter(next(iter(table.values())).values()))
        metric = next(iter(first))
        # ties go to the larger α (closer to plain Phi retrieval)
        best = max(table, key=lambda a: (table[a].get("mean", next(iter(table[a].values())))[metric], a))
        report(f"best alpha by {metric}: {best:.2f} (choose on val, apply to test)")
    return {ev.split.name: evaluate_fused(ev, q, alpha) for ev, q in zip(evaluators, queries)}
