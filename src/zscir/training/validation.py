"""Validation of a trained Phi or text tower on CIR val splits, with image features encoded ONCE.

The evaluation runner's `Evaluator` encodes (and caches on disk) the gallery and reference images
when the validator is built; every validation during training then only composes the queries
(the part that changed) and scores them against the cached gallery. With a fixed Phi (RTD) the
pseudo tokens are computed once as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from zscir.compose import PromptTemplate, compose_queries, pseudo_tokens_of
from zscir.evaluation.metrics import mean_metrics
from zscir.evaluation.runner import Evaluator


class CIRValidator:
    """Callable validator: `validator(phi=..., text_tower=...) -> metrics` averaged over its splits.

    Args:
        backbone: the frozen `Backbone` (vision tower for the features, text tower for queries).
        splits: `CIRSplit`s with targets (e.g. `load_benchmark("cirr", root, "val")`).
        phi: a fixed inversion network (RTD); its pseudo tokens are computed once here.
        cache: a `FeatureCache` (None = the default cache folder).
        template: prompt template (name or text).
        evaluator_options: keyword arguments of `Evaluator` (pad_to_ratio, skip_missing, ...).
    """

    def __init__(self, backbone, splits: Sequence, phi: torch.nn.Module | None = None, cache=None,
                 template: PromptTemplate | str | None = None, evaluator_options: dict | None = None):
        if not splits:
            raise ValueError("CIRValidator needs at least one split")
        self.backbone = backbone
        self.template = PromptTemplate.named(template) if isinstance(template, str) else (template or PromptTemplate())
        self.evaluators = [Evaluator(backbone, s, cache, **(evaluator_options or {})) for s in splits]
        for ev in self.evaluators:
            ev.gallery_features()  # encode (or read) every image now, once
        self.fixed_tokens = None
        if phi is not None:
            self.fixed_tokens = [pseudo_tokens_of(phi, ev.reference_features(), backbone.device)
                                 for ev in self.evaluators]

    def __call__(self, phi: torch.nn.Module | None = None, text_tower: torch.nn.Module | None = None) -> dict:
        """Metrics of the current model, averaged over the splits (e.g. CIRR R@1, FashionIQ R@10 mean).

        Args:
            phi: the Phi being trained (LinCIR); None to use the fixed one given at construction.
            text_tower: the text tower being trained (RTD); None = the backbone's. It is only read.
        Returns:
            {metric: value} (percent).
        """
        if phi is None and self.fixed_tokens is None:
            raise ValueError("no Phi: pass phi= here or to the constructor")
        results = []
        for i, ev in enumerate(self.evaluators):
            tokens = (pseudo_tokens_of(phi, ev.reference_features(), self.backbone.device) if phi is not None
                      else self.fixed_tokens[i])
            queries = compose_queries(self.backbone, tokens, ev.captions(), self.template, text_tower=text_tower)
            results.append(ev.evaluate(queries=queries).metrics)
        return mean_metrics(results)
