"""The evaluation protocol: queries of a method (`zscir.compose.METHODS`) scored against one shared gallery.

    features (cached) ─► queries (method) ─► scores = queries @ normalize(gallery)ᵀ ─► metrics / submission

API (the CLI, the demo, RTD validation and CIG fusion all use it):
    ev = Evaluator(backbone, split, FeatureCache())
    result = ev.evaluate("phi", phi=phi)              # EvalResult: metrics, scores, active split
    q_ref = ev.query_vectors("phi", phi=phi)          # [Q, P] normalised queries of a method
    q_gen = ev.query_vectors("phi", pseudo_tokens=v_gen)
    ev.evaluate(queries=fuse_queries(q_ref, q_gen, cig_alpha("cirr", "val")))

Missing or undecodable images: by default the first use raises DataError listing them; with
`skip_missing=True` the failed gallery images are dropped, queries whose reference or a target
failed are dropped, and the result says how many (`EvalResult.dropped_queries`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from zscir.compose import METHODS, Method, PromptTemplate, QueryInputs
from zscir.data.images import check_images
from zscir.data.records import CIRSplit
from zscir.errors import DataError, ZscirError
from zscir.evaluation.metrics import evaluate_split, mean_metrics, per_query_metrics
from zscir.models.backbone import fingerprint_module
from zscir.models.phi import check_fits
from zscir.oti.store import TokenStore
from zscir.retrieval.features import FeatureCache, ImageFeatures

# How a CIRCO query's text is built from its caption (and shared concept): data, not code paths.
CIRCO_TEXTS: dict[str, str] = {"caption": "{caption}", "concept": "find {concept} but {caption}"}


@dataclass
class EvalResult:
    """Outcome of one evaluation.

    Attributes:
        split: the split actually evaluated (failed images / dropped queries removed).
        metrics: {name: value in percent}; empty for a split without targets (test).
        scores: [Q, G] cosine scores (rows = split.queries, columns = split.gallery).
        queries: [Q, P] the normalised query matrix.
        dropped_queries: queries left out because an image they need is missing/corrupt.
        dropped_images: gallery images left out for the same reason.
    """

    split: CIRSplit
    metrics: dict[str, float]
    scores: torch.Tensor
    queries: torch.Tensor
    dropped_queries: int = 0
    dropped_images: int = 0

    def per_query(self) -> dict[str, torch.Tensor]:
        """Each metric per query (`per_query_metrics`: a hit or AP@K in [0, 1]); the split must have targets."""
        return per_query_metrics(self.split, self.scores)


def failure_summary(failed: dict[str, str], examples: int = 5) -> str:
    """One line: how many images failed and a few of the reasons (which name the paths)."""
    shown = "; ".join(list(failed.values())[:examples])
    more = f" (+{len(failed) - examples} more)" if len(failed) > examples else ""
    return f"{len(failed)} images are missing or undecodable: {shown}{more}"


class Evaluator:
    """Evaluate any method on one split with shared, cached image features.

    Args:
        backbone: a `Backbone` (vision tower for features, text tower for queries).
        split: a `CIRSplit` (val/test; FashionIQ: one category).
        cache: a `FeatureCache` (None = a cache in the default folder).
        pad_to_ratio: SEARLE target pad ratio (e.g. 1.25) or None for plain CLIP preprocessing.
        circo_text: "caption" or "concept" (CIRCO query text, see CIRCO_TEXTS).
        skip_missing: drop failed images and the queries needing them instead of raising.
        batch_size: image batch size; text uses 4x.
    """

    def __init__(self, backbone, split: CIRSplit, cache: FeatureCache | None = None, *,
                 pad_to_ratio: float | None = None, circo_text: str = "caption", skip_missing: bool = False,
                 batch_size: int = 64):
        if circo_text not in CIRCO_TEXTS:
            raise ZscirError(f"circo_text must be one of {', '.join(CIRCO_TEXTS)}, got {circo_text!r}")
        self.backbone = backbone
        self.full_split = split
        self.cache = cache if cache is not None else FeatureCache()
        self.pad_to_ratio = pad_to_ratio
        self.circo_text = circo_text
        self.skip_missing = skip_missing
        self.batch_size = batch_size
        self._features: ImageFeatures | None = None
        self._split: CIRSplit | None = None
        self._gallery: torch.Tensor | None = None

    # ---- shared pieces (computed once) -----------------------------------------------------------
    def features(self) -> ImageFeatures:
        """Raw embeddings of the union of gallery and reference images (one encoding each)."""
        if self._features is None:
            split = self.full_split
            names = dict.fromkeys([*split.gallery, *(q.reference for q in split.queries)])
            missing = [n for n in names if n not in split.images]
            if missing:
                raise DataError(f"{split.name}: {len(missing)} images have no path (e.g. {missing[:3]})")
            if not self.skip_missing:
                self._fail_fast([split.images[n] for n in names])
            images = {n: split.images[n] for n in names}
            features = self.cache.image_features(self.backbone, images, self.pad_to_ratio, self.batch_size,
                                                 desc=f"{split.name} images")
            if features.failed and not self.skip_missing:
                raise DataError(f"{split.name}: {failure_summary(features.failed)}; "
                                "fix them or skip the queries that need them", setting="skip_missing")
            self._features = features
        return self._features

    def _fail_fast(self, paths) -> None:
        """Stop before encoding anything when files are missing (cheap directory listings)."""
        report = check_images(paths, decode="none", progress=False)
        if report.missing:
            failed = {str(p): f"{p}: image file not found" for p in report.missing}
            raise DataError(f"{self.full_split.name}: {failure_summary(failed)}; "
                            "fix them or skip the queries that need them", setting="skip_missing")

    @property
    def split(self) -> CIRSplit:
        """The split actually evaluated: without failed gallery images and the queries that need them."""
        if self._split is None:
            failed = self.features().failed
            full = self.full_split
            if not failed:
                self._split = full
            else:
                queries = [q for q in full.queries
                           if q.reference not in failed and not any(t in failed for t in q.targets)]
                queries = [replace(q, group=tuple(m for m in q.group if m not in failed)) for q in queries]
                gallery = [g for g in full.gallery if g not in failed]
                self._split = replace(full, gallery=gallery, queries=queries)
        return self._split

    @property
    def dropped_queries(self) -> int:
        """Queries left out because of failed images."""
        return len(self.full_split.queries) - len(self.split.queries)

    @property
    def dropped_images(self) -> int:
        """Gallery images left out because they are missing or undecodable."""
        return len(self.full_split.gallery) - len(self.split.gallery)

    def gallery_features(self) -> torch.Tensor:
        """[G, P] L2-normalised gallery embeddings (columns of the score matrix)."""
        if self._gallery is None:
            self._gallery = F.normalize(self.features().lookup(self.split.gallery), dim=-1)
        return self._gallery

    def reference_features(self) -> torch.Tensor:
        """[Q, P] raw reference embeddings of the active queries (O(1) lookups by name)."""
        return self.features().lookup([q.reference for q in self.split.queries])

    def captions(self) -> list[tuple[str, ...]]:
        """The caption tuples of the active queries (CIRCO: with the concept text if asked)."""
        fmt = CIRCO_TEXTS[self.circo_text] if self.split.dataset == "circo" else CIRCO_TEXTS["caption"]
        if "{concept}" in fmt:
            lacking = [q.query_id for q in self.split.queries if not q.shared_concept]
            if lacking:
                raise DataError(f"{self.split.name}: query {lacking[0]} has no shared_concept "
                                "(needed by the 'concept' CIRCO text)", setting="circo_text")
        return [tuple(fmt.format(caption=c, concept=q.shared_concept) for c in q.captions)
                for q in self.split.queries]

    # ---- methods ----------------------------------------------------------------------------------
    def query_vectors(self, method: str, phi: torch.nn.Module | None = None, text_tower: torch.nn.Module | None = None,
                      template: PromptTemplate | str | None = None,
                      pseudo_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The normalised [Q, P] query matrix of a method (rows = `self.split.queries`).

        Args:
            method: a key of METHODS ("image", "text", "sum", "phi").
            phi: inversion network for "phi" (checked against the backbone's dims).
            text_tower: a fine-tuned text tower (RTD) replacing the backbone's.
            template: prompt template (name, text or PromptTemplate) of Phi-based methods; None = the one of
                the network's method (Pic2Word: "a photo of $ , {caption}"; else "a photo of $ that {caption}").
            pseudo_tokens: [Q, H] to compose with instead of Phi(reference) (e.g. CIG's v_gen).
        Returns:
            [Q, P] float32 L2-normalised query vectors.
        """
        if method not in METHODS:
            raise ZscirError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        spec = METHODS[method]
        backbone = self.backbone if text_tower is None else self.backbone.with_text_tower(text_tower)
        if spec.needs_phi and phi is not None:
            check_fits(phi, backbone)
        if pseudo_tokens is not None and pseudo_tokens.shape[0] != len(self.split.queries):
            raise ZscirError(f"{pseudo_tokens.shape[0]} pseudo tokens for {len(self.split.queries)} queries")
        if template is None or isinstance(template, str):  # None: the network's own method's prompt
            template = PromptTemplate.for_network(template, phi)
        inputs = QueryInputs(backbone, self.reference_features(), self.captions(), phi, pseudo_tokens,
                             template, 4 * self.batch_size)
        if not spec.uses_text or pseudo_tokens is not None:
            return spec.build(inputs)
        return self.cache.tensor("queries", self._query_key(spec, backbone, inputs), lambda: spec.build(inputs))

    def _query_key(self, spec: Method, backbone, inputs: QueryInputs) -> list:
        """Everything a text-using query matrix depends on (for the derived-tensor cache)."""
        return [spec.name, backbone.text_fingerprint(), inputs.template.text, inputs.captions,
                fingerprint_module(inputs.phi) if spec.needs_phi and inputs.phi is not None else None,
                self.features().key, [q.reference for q in self.split.queries]]

    def scores(self, queries: torch.Tensor) -> torch.Tensor:
        """[Q, G] cosine scores of normalised queries against the normalised gallery."""
        gallery = self.gallery_features()
        if queries.shape != (len(self.split.queries), gallery.shape[1]):
            raise ZscirError(f"query matrix has shape {tuple(queries.shape)}, expected "
                             f"({len(self.split.queries)}, {gallery.shape[1]})")
        return queries.float() @ gallery.T

    def evaluate(self, method: str | None = None, *, queries: torch.Tensor | None = None, **options) -> EvalResult:
        """Build the method's queries (or take `queries`), score the gallery and compute the metrics.

        Args:
            method: a key of METHODS; ignored when `queries` is given.
            queries: a ready [Q, P] normalised query matrix (e.g. CIG-fused).
            **options: passed to `query_vectors` (phi, text_tower, template, pseudo_tokens).
        Returns:
            EvalResult (metrics empty on a split without targets).
        """
        if queries is None:
            if method is None:
                raise ZscirError("evaluate needs a method or a query matrix")
            queries = self.query_vectors(method, **options)
        if not self.split.queries:
            raise DataError(f"{self.full_split.name}: no query left to evaluate "
                            f"({self.dropped_queries} dropped because of missing images)")
        scores = self.scores(queries)
        metrics = evaluate_split(self.split, scores) if self.split.has_targets else {}
        return EvalResult(self.split, metrics, scores, queries, self.dropped_queries, self.dropped_images)


def evaluate_splits(backbone, splits: Sequence[CIRSplit], method: str, cache: FeatureCache | None = None,
                    evaluator_options: dict | None = None, **options) -> dict[str, EvalResult]:
    """Evaluate one method on several splits (FashionIQ: its categories).

    Args:
        backbone: a `Backbone`.
        splits: from `load_benchmark`.
        method: a key of METHODS.
        cache: shared feature cache.
        evaluator_options: keyword arguments of `Evaluator` (pad_to_ratio, circo_text, skip_missing, batch_size).
        **options: passed to `Evaluator.evaluate` (phi, text_tower, template).
    Returns:
        {split name: EvalResult} in the splits' order.
    """
    cache = cache if cache is not None else FeatureCache()
    return {s.name: Evaluator(backbone, s, cache, **(evaluator_options or {})).evaluate(method, **options)
            for s in splits}


def encode_split_images(backbone, splits: Sequence[CIRSplit], cache: FeatureCache,
                        evaluator_options: dict | None = None) -> None:
    """Encode (and cache) the gallery and reference images of every split, e.g. across processes.

    With a sharded `cache` (`FeatureCache(group=...)`) every process of the group must call this with the
    same arguments; afterwards the main process evaluates from the cache alone.

    Args:
        backbone: a `Backbone`.
        splits: from `load_benchmark`.
        cache: the feature cache (its `group` decides the sharding).
        evaluator_options: keyword arguments of `Evaluator` (pad_to_ratio, skip_missing, batch_size, ...).
    Raises:
        DataError: failed images without `skip_missing` (on every process alike).
    """
    for split in splits:
        Evaluator(backbone, split, cache, **(evaluator_options or {})).features()


def evaluate_saved_tokens(backbone, splits: Sequence[CIRSplit], cache: FeatureCache, evaluator_options: dict,
                          token_folder, template: PromptTemplate | str | None = None) -> dict[str, EvalResult]:
    """Each query composed with the saved OTI token of its reference image (SEARLE's `--eval-type oti`).

    Args:
        backbone: the `Backbone` the tokens were optimised with (same text tower weights).
        splits: from `load_benchmark`.
        cache: the feature cache.
        evaluator_options: keyword arguments of `Evaluator` (pad_to_ratio, skip_missing, batch_size, ...).
        token_folder: a `TokenStore` folder written by `zscir invert` holding every reference image.
        template: prompt template (default "a photo of $ that {caption}").
    Returns:
        {split name: EvalResult}.
    Raises:
        ZscirError: tokens of another text tower (setting "tokens"); DataError: a reference without a token.
    """
    store = TokenStore(token_folder)
    if store.meta.get("text_fingerprint") != backbone.text_fingerprint():
        raise ZscirError(f"{token_folder}: the OTI tokens were optimised with another text tower than "
                         f"{backbone.name!r} (other weights or weight rounding); invert with this one",
                         setting="tokens")
    results = {}
    for split in splits:
        evaluator = Evaluator(backbone, split, cache, **evaluator_options)
        tokens = store.lookup([q.reference for q in evaluator.split.queries])
        results[split.name] = evaluator.evaluate("phi", pseudo_tokens=tokens, template=template)
    return results


def summary_metrics(results: dict[str, EvalResult]) -> dict[str, dict[str, float]]:
    """{split name: metrics}, plus "mean" over the splits when there are several (FashionIQ average)."""
    table = {name: r.metrics for name, r in results.items() if r.metrics}
    if len(table) > 1:
        table["mean"] = mean_metrics(table)
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    """A plain-text table: one row per split, one column per metric (percent, 2 decimals)."""
    if not table:
        return "(no metrics: the split has no targets)"
    columns = list(dict.fromkeys(name for row in table.values() for name in row))
    width = max(len(n) for n in table) + 2
    lines = ["".ljust(width) + "".join(c.rjust(9) for c in columns)]
    for name, row in table.items():
        lines.append(name.ljust(width) + "".join((f"{row[c]:.2f}" if c in row else "-").rjust(9) for c in columns))
    return "\n".join(lines)
