"""LinCIR: train Phi from text alone (METHODS.md §2).

For each caption: keywords masked to `$` (once per corpus, cached), e = text_embeds(caption) from the
frozen text tower (once, cached), then per step  v = Phi(e + u·n), u ~ U(0, 1) per sample,
n ~ N(0, I),  loss = MSE(encode(masked caption, v), e).  Only Phi trains.

API:
    captions, summary = read_captions("captions.txt")
    phi = train_lincir(backbone, captions, LinCIRConfig(output_dir="runs/lincir"), validate=validator)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path

import torch
import torch.nn.functional as F

from zscir.errors import DataError, ZscirError, require
from zscir.models.phi import Phi, backbone_identity, load_inversion_network, save_published_phi
from zscir.models.pseudo_tokens import encode_in_length_buckets
from zscir.models.tokenizer import pseudo_word_counts
from zscir.retrieval.features import FeatureCache
from zscir.training.config import LinCIRConfig
from zscir.training.keywords import load_spacy, mask_captions, spacy_model_id
from zscir.training.loop import SkipCounter, TrainTask, train
from zscir.utils.io import read_json, write_json_atomic

PUBLISHED_PHI_FILE = "phi.pt"


# ---------------------------------------------------------------------------------------------
# Corpus


def read_captions(path: str | Path, field: str = "caption", max_bad_fraction: float = 0.1) -> tuple[list[str], str]:
    """Read a caption corpus; empty or malformed records are counted and skipped.

    Args:
        path: a text file (one caption per line), a `.jsonl` file (one object per line, caption in
            `field`; a line may also be a bare JSON string), a `.json` list (of strings or objects), or a
            Hugging Face `datasets` folder written by `save_to_disk` (column `field`; a DatasetDict uses its
            "train" split).
        field: the caption field of JSONL / JSON / datasets records.
        max_bad_fraction: DataError when more records than this fraction are bad.
    Returns:
        (captions, one-line summary of what was used and skipped).
    """
    path = Path(path)
    counter = SkipCounter(str(path), max_bad_fraction)
    captions: list[str] = []

    def take(value, where: str) -> None:
        if isinstance(value, dict):
            if field not in value:
                counter.skip(where, f"no field {field!r}")
                return
            value = value[field]
        if not isinstance(value, str):
            counter.skip(where, f"expected a string, got {type(value).__name__}")
        elif not value.strip():
            counter.skip(where, "empty caption")
        else:
            counter.good()
            captions.append(value.strip())

    if path.is_dir():
        for i, value in enumerate(_dataset_column(path, field)):
            take(value, f"row {i}")
    elif not path.is_file():
        raise DataError(f"{path}: caption corpus not found")
    elif path.suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of captions, got {type(records).__name__}")
        for i, value in enumerate(records):
            take(value, f"item {i}")
    else:
        jsonl = path.suffix == ".jsonl"
        with path.open(encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not jsonl:
                    take(line, f"line {number}")
                    continue
                if not line.strip():
                    counter.skip(f"line {number}", "empty line")
                    continue
                try:
                    take(json.loads(line), f"line {number}")
                except json.JSONDecodeError as exc:
                    counter.skip(f"line {number}", f"malformed JSON ({exc.msg})")
    return captions, counter.finish()


def _dataset_column(folder: Path, field: str):
    datasets = require("datasets", "train")
    try:
        data = datasets.load_from_disk(str(folder))
    except Exception as exc:
        raise DataError(f"{folder}: not a dataset saved with save_to_disk ({type(exc).__name__}: {exc})") from exc
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            raise DataError(f"{folder}: DatasetDict without a 'train' split (has {list(data)})")
        data = data["train"]
    if field not in data.column_names:
        raise DataError(f"{folder}: no column {field!r} (columns: {data.column_names})")
    return data[field]


# ---------------------------------------------------------------------------------------------
# One-off preprocessing (cached)


def _corpus_key(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, ensure_ascii=False).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:20]


@dataclass
class MaskedCorpus:
    """A caption corpus masked for LinCIR, checked against the tokenizer.

    Attributes:
        prompts: the masked prompts of the kept captions (a fallback prompt where no `$` survived truncation).
        input_ids: [K, L] int32 token ids of `prompts`; every row holds the pseudo-token id.
        kept: index into the input captions of each kept row (targets must be taken at these rows).
        dropped: reason -> number of captions left out because a masked span is not the pseudo token.
        fallbacks: kept captions trained on the fallback prompt (no keyword, or none within the context).
        total: number of input captions.
    """

    prompts: list[str]
    input_ids: torch.Tensor
    kept: list[int]
    dropped: dict[str, int] = dataclass_field(default_factory=dict)
    fallbacks: int = 0
    total: int = 0
    fallback_prompt: str = "a photo of $"

    def summary(self) -> str:
        """One line: how many captions were dropped and why, and how many use the fallback prompt."""
        n = sum(self.dropped.values())
        why = "; ".join(f"{count:,} {reason}" for reason, count in self.dropped.items()) or "none"
        line = f"{n:,} of {self.total:,} captions dropped (not trained on): {why}" if n else \
            f"0 of {self.total:,} captions dropped: every masked word is the pseudo token"
        if self.fallbacks:
            line += f"; {self.fallbacks:,} without a keyword in the context use {self.fallback_prompt!r}"
        return line


MERGED = "pseudo word merged with punctuation"
ALREADY_THERE = "caption already holds a standalone '$'"


def masked_prompts(backbone, captions: Sequence[str], nlp=None, cache_dir: str | Path | None = None,
                   fallback_prompt: str = "a photo of $", progress: bool = True) -> MaskedCorpus:
    """Mask keywords once per corpus (cached as JSON), check each caption against the tokenizer, tokenize.

    A masked caption is kept only if its full tokenization holds the pseudo-token id exactly once per
    masked span (METHODS.md §1: the pseudo word must be its own token). Masking writes `$` as a word of
    its own, so with CLIP's BPE this fails only when the caption itself holds a standalone `$`; with
    any tokenizer the failures are counted by reason, never trained on silently.

    Args:
        backbone: gives the tokenizer and the pseudo-token id.
        captions: the corpus.
        nlp: a spaCy pipeline (default `load_spacy()`).
        cache_dir: cache folder (None = no cache).
        fallback_prompt: replaces a masked caption without `$` after truncation (no keyword, or only
            keywords past the context length).
        progress: tqdm bars.
    Returns:
        A `MaskedCorpus` (its `summary()` is the line to show the user).
    Raises:
        DataError: no caption is usable.
    """
    nlp = nlp or load_spacy()
    key = _corpus_key("lincir-mask-v2", spacy_model_id(nlp), list(captions))
    path = Path(cache_dir) / "lincir-masked" / f"{key}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        masked, spans = cached["masked"], cached["spans"]
    else:
        masked, spans = mask_captions(captions, nlp, progress=progress, total=len(captions))
        if path is not None:
            write_json_atomic(path, {"masked": masked, "spans": spans}, indent=None)
    dropped: dict[str, int] = {}
    kept = []
    for row, (found, expected) in enumerate(zip(pseudo_word_counts(backbone.tokenizer, masked), spans)):
        if found == expected:
            kept.append(row)
        else:
            reason = MERGED if found < expected else ALREADY_THERE
            dropped[reason] = dropped.get(reason, 0) + 1
    if not kept:
        reasons = "; ".join(f"{count:,} {reason}" for reason, count in dropped.items())
        raise DataError(f"none of the {len(captions):,} captions keeps its pseudo word after masking ({reasons})")
    prompts = [masked[row] for row in kept]
    ids = _tokenize_all(backbone, prompts)
    lacking = ~(ids == backbone.pseudo_token_id).any(dim=1)
    if lacking.any():
        fallback_ids = _tokenize_all(backbone, [fallback_prompt])
        if not (fallback_ids == backbone.pseudo_token_id).any():
            raise ZscirError(f"fallback prompt {fallback_prompt!r} has no pseudo word after tokenization")
        for row in lacking.nonzero().flatten().tolist():
            prompts[row] = fallback_prompt
        ids[lacking] = fallback_ids[0]
    return MaskedCorpus(prompts, ids, kept, dropped, int(lacking.sum()), len(captions), fallback_prompt)


def _tokenize_all(backbone, texts: Sequence[str], chunk: int = 4096) -> torch.Tensor:
    parts = [backbone.tokenize(texts[i : i + chunk]).to(torch.int32) for i in range(0, len(texts), chunk)]
    return torch.cat(parts) if parts else torch.empty(0, backbone.context_length, dtype=torch.int32)


def text_targets(backbone, captions: Sequence[str], cache_dir: str | Path | None = None, batch_size: int = 256,
                 progress: bool = True) -> torch.Tensor:
    """e = text_embeds(caption) of the frozen tower, [N, P] float32 unnormalised; computed once and cached.

    Args:
        backbone: the frozen backbone.
        captions: the corpus.
        cache_dir: cache folder (None = no cache); the key includes the text tower's fingerprint.
        batch_size: encoding batch size.
        progress: tqdm bar.
    """
    def compute() -> torch.Tensor:
        return backbone.encode_text(captions, batch_size=batch_size, progress=progress)

    if cache_dir is None:
        return compute()
    cache = FeatureCache(cache_dir, progress=progress)
    return cache.tensor("lincir-targets", [backbone.text_fingerprint(), list(captions)], compute)


# ---------------------------------------------------------------------------------------------
# The task


def move_backbone(backbone, device: torch.device) -> None:
    """Put the frozen towers on the training device (eval mode, no grad) and record it in the backbone."""
    for tower in (backbone.text, backbone.vision):
        if tower is not None:
            tower.to(device).eval().requires_grad_(False)
    backbone.device = torch.device(device)


class PhiTask(TrainTask):
    """Shared by the tasks that train a Phi (LinCIR, SEARLE distillation): optional validation callback
    in `self._validate`, and saving in zscir's format plus the published `{'Phi': ...}` file."""

    def can_validate(self) -> bool:
        return self._validate is not None

    def validate(self, model) -> dict:
        return self._validate(model)

    def save(self, model, folder: Path) -> None:
        """zscir's hub folder (weights, config with the backbone, a model card with the run's metrics) and the
        published `{'Phi': ...}` file."""
        metrics = read_json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
        model.card_info = {**getattr(model, "card_info", {}), "metrics": metrics}
        model.save_pretrained(folder)
        save_published_phi(model, folder / PUBLISHED_PHI_FILE)


class LinCIRTask(PhiTask):
    """Phi trains; the text tower is frozen; batches are (token ids of masked captions, targets e).

    Args:
        backbone: frozen backbone (only its text tower and tokenizer are used).
        phi: the Phi to train.
        input_ids: [N, L] ids of the masked prompts (each with the pseudo token).
        targets: [N, P] e of the unmasked captions.
        noise_scale: u ~ U(0, noise_scale).
        validate: optional callback Phi (eval mode) -> metrics.
    """

    def __init__(self, backbone, phi: Phi, input_ids: torch.Tensor, targets: torch.Tensor, noise_scale: float = 1.0,
                 validate: Callable[[Phi], dict] | None = None):
        if input_ids.shape[0] != targets.shape[0]:
            raise ValueError(f"{input_ids.shape[0]} prompts for {targets.shape[0]} targets")
        self.backbone, self.phi, self.input_ids, self.targets = backbone, phi, input_ids, targets
        self.noise_scale, self._validate = noise_scale, validate

    def setup(self, accelerator) -> None:
        move_backbone(self.backbone, accelerator.device)

    def model(self) -> torch.nn.Module:
        return self.phi

    def num_examples(self) -> int:
        return self.targets.shape[0]

    def batch(self, indices, device):
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.input_ids[index].to(device, torch.long), self.targets[index].to(device)

    def loss(self, model, batch) -> torch.Tensor:
        ids, e = batch
        u = torch.rand(e.shape[0], 1, device=e.device) * self.noise_scale  # one scale per sample
        v = model(e + u * torch.randn_like(e))  # the prepared (DDP) Phi
        out = encode_in_length_buckets(self.backbone.text, ids, v, self.backbone.pseudo_token_id).text_embeds
        return F.mse_loss(out.float(), e.float())



def train_lincir(backbone, captions: Sequence[str], config: LinCIRConfig | None = None,
                 out_dir: str | Path | None = None, validate: Callable[[Phi], dict] | None = None, nlp=None,
                 phi: Phi | None = None) -> Phi:
    """Train a LinCIR Phi on a caption corpus.

    Args:
        backbone: frozen `Backbone` (its text tower and tokenizer).
        captions: the corpus (e.g. from `read_captions`).
        config: the recipe (default LinCIRConfig()).
        out_dir: overrides `config.output_dir`.
        validate: optional callback Phi -> metrics holding `config.select_metric` (e.g. a `CIRValidator`
            wrapped as `lambda phi: validator(phi=phi)`); the best Phi is kept.
        nlp: a spaCy pipeline (default `load_spacy()`).
        phi: a Phi to start from (default: new, seeded by `config.seed`).
    Returns:
        The best Phi by validation (or the final one without validation), in eval mode on the CPU.
        Folders: `out_dir/best` and `out_dir/final` (zscir format + published `phi.pt`).
    """
    config = config or LinCIRConfig()
    if out_dir is not None:
        config.output_dir = str(out_dir)
    config.check()
    if not captions:
        raise DataError("empty caption corpus")
    cache_dir = config.cache_dir or str(Path(config.output_dir) / "cache")
    masked = masked_prompts(backbone, captions, nlp, cache_dir, config.fallback_prompt, config.progress)
    print(f"LinCIR masking: {masked.summary()}")
    targets = text_targets(backbone, captions, cache_dir, config.encode_batch_size, config.progress)
    targets, ids = targets[torch.tensor(masked.kept)], masked.input_ids
    if phi is None:
        torch.manual_seed(config.seed)
        phi = Phi(backbone.projection_dim, backbone.hidden_size, config.hidden_dim, config.dropout,
                  backbone=backbone_identity(backbone.name))
    phi.card_info = card_info("LinCIR", config, f"{len(captions)} captions (text only)")
    result = train(LinCIRTask(backbone, phi, ids, targets, config.noise_scale, validate), config)
    return load_inversion_network(result.best_dir or result.final_dir)


def card_info(method: str, config, data: str) -> dict:
    """What a trained Phi's model card says about its run (the metrics are added when it is saved)."""
    recipe = {k: v for k, v in config.to_dict().items() if k not in ("output_dir", "cache_dir", "progress", "resume")}
    return {"method": method, "recipe": recipe, "data": data}


def lincir_validator(validator) -> Callable[[Phi], dict]:
    """Adapt a `CIRValidator` to LinCIR's callback (Phi changes at every validation)."""
    return lambda phi: validator(phi=phi)
