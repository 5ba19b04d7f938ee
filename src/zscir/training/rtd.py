"""RTD: post-hoc fine-tuning of the text encoder with a frozen-target contrastive loss (METHODS.md §4).

Per batch of B triplets (T_r, T_c, T_t):
    v_i  = Phi(ψ(T_r^i) + noise_scale·u_i·n_i)            frozen ψ and Phi, u ~ U(0,1), n ~ N(0, I)
    q_i  = ψ'("a photo of $ that {T_c^i}", v_i)            rows 0..B-1,  target ψ(T_t^i)
    q'_i = ψ'("a photo of $", v_i)                         rows B..2B-1, target ψ(T_r^i)
    loss = symmetric NT-Xent over the 4B L2-normalised vectors {q, t}, τ = 0.07
Gradients reach only ψ' (a trainable copy of the text tower). ψ is frozen, so ψ(T_r) and ψ(T_t) are
encoded ONCE for the whole triplet set before training (each text once; ψ(T_r) serves both as Phi's
input and as the hard-negative target). ψ' runs once per step on the 2B query rows together (one
forward through the DDP wrapper).

API:
    triplets, summary = read_triplets("triplets.jsonl")
    tower = train_rtd(backbone, phi, triplets, RTDConfig(output_dir="runs/rtd"), validate=validator)
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from zscir.compose import PromptTemplate
from zscir.data.records import strip_caption
from zscir.errors import DataError
from zscir.models.phi import check_fits
from zscir.models.pseudo_tokens import encode_in_length_buckets
from zscir.models.text_tower import load_text_tower, save_text_tower
from zscir.retrieval.features import FeatureCache
from zscir.training.config import RTDConfig
from zscir.training.loop import SkipCounter, TrainTask, train
from zscir.training.losses import nt_xent
from zscir.training.phi import move_backbone

RTD_FILE = "rtd_text_encoder.pt"
FIELDS = ("reference_caption", "conditioning_caption", "target_caption")


@dataclass(frozen=True)
class Triplet:
    """One text triplet: reference caption T_r, conditioning (relative) caption T_c, target caption T_t."""

    reference: str
    conditioning: str
    target: str


# ---------------------------------------------------------------------------------------------
# Data


def read_triplets(path: str | Path, max_bad_fraction: float = 0.1) -> tuple[list[Triplet], str]:
    """Read text triplets from JSONL (one object per line) or a JSON list of objects.

    Each record needs non-empty strings `reference_caption`, `conditioning_caption`, `target_caption`;
    empty lines, malformed JSON and incomplete records are counted and skipped.

    Args:
        path: the file.
        max_bad_fraction: DataError when more records than this fraction are bad.
    Returns:
        (triplets, one-line summary).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: triplet file not found")
    counter = SkipCounter(str(path), max_bad_fraction)
    out: list[Triplet] = []

    def take(record, where: str) -> None:
        if not isinstance(record, dict):
            counter.skip(where, f"expected an object, got {type(record).__name__}")
            return
        values = []
        for name in FIELDS:
            value = record.get(name)
            # T_c goes into the inference template: stripped of trailing ".?, " like a typed caption
            value = (strip_caption if name == FIELDS[1] else str.strip)(value) if isinstance(value, str) else None
            if not value:
                counter.skip(where, f"missing or empty {name!r}")
                return
            values.append(value)
        out.append(Triplet(*values))
        counter.good()

    text = path.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: malformed JSON at line {exc.lineno}: {exc.msg}") from exc
        for i, record in enumerate(records):
            take(record, f"item {i}")
    else:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                counter.skip(f"line {number}", "empty line")
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                counter.skip(f"line {number}", f"malformed JSON ({exc.msg})")
                continue
            take(record, f"line {number}")
    return out, counter.finish()


def frozen_text_embeddings(backbone, texts: Sequence[str], cache_dir: str | Path | None = None,
                           batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """ψ(text) for every text, each distinct text encoded once; [N, P] float32, cached by tower fingerprint.

    Args:
        backbone: the frozen backbone.
        texts: texts (duplicates allowed; encoded once).
        cache_dir: cache folder (None = no cache).
        batch_size: encoding batch size.
        progress: tqdm bar.
    """
    unique = list(dict.fromkeys(texts))
    position = {t: i for i, t in enumerate(unique)}

    def compute() -> torch.Tensor:
        return backbone.encode_text(unique, batch_size=batch_size, progress=progress)

    if cache_dir is None:
        encoded = compute()
    else:
        encoded = FeatureCache(cache_dir, progress=progress).tensor(
            "rtd-frozen-text", [backbone.text_fingerprint(), unique], compute)
    return encoded[torch.tensor([position[t] for t in texts], dtype=torch.long)]


# ---------------------------------------------------------------------------------------------
# The task (the loss is `zscir.training.losses.nt_xent`)


class ComposedTextEncoder(torch.nn.Module):
    """ψ' as one module whose `forward(input_ids, pseudo_tokens)` is the pseudo-token pass.

    The loop's DDP wrapper wraps this module, so calling it synchronises ψ' gradients across
    processes (calling `encode_in_length_buckets(wrapper.module.tower, ...)` would not). Rows go through in
    length buckets: the batch holds long composed prompts and the short "a photo of $" rows.
    """

    def __init__(self, tower: torch.nn.Module, pseudo_token_id: int):
        super().__init__()
        self.tower = tower
        self.pseudo_token_id = pseudo_token_id

    def forward(self, input_ids: torch.Tensor, pseudo_tokens: torch.Tensor) -> torch.Tensor:
        """[N, L] ids and [N, H] pseudo tokens → [N, P] text embeddings (differentiable in the tower)."""
        return encode_in_length_buckets(self.tower, input_ids, pseudo_tokens, self.pseudo_token_id).text_embeds


@dataclass
class RTDData:
    """Everything per triplet that does not change during training (built once).

    Attributes:
        query_ids: [N, L] int32 ids of template.format(T_c).
        plain_ids: [L] int32 ids of the plain prompt.
        reference_embeds: [N, P] ψ(T_r).
        target_embeds: [N, P] ψ(T_t).
    """

    query_ids: torch.Tensor
    plain_ids: torch.Tensor
    reference_embeds: torch.Tensor
    target_embeds: torch.Tensor


def prepare_rtd_data(backbone, triplets: Sequence[Triplet], template: str = "a photo of $ that {caption}",
                     plain_template: str = "a photo of $", cache_dir: str | Path | None = None,
                     batch_size: int = 256, progress: bool = True) -> RTDData:
    """Tokenize the query prompts and encode T_r and T_t with the frozen ψ, once (see RTDData)."""
    if not triplets:
        raise DataError("no triplets to train on")
    query_template = PromptTemplate(template)
    PromptTemplate(plain_template)  # validates the `$`
    prompts = [query_template.format(t.conditioning) for t in triplets]
    query_ids = torch.cat([backbone.tokenize(prompts[i : i + 4096]).to(torch.int32)
                           for i in range(0, len(prompts), 4096)])
    lacking = ~(query_ids == backbone.pseudo_token_id).any(dim=1)
    if lacking.any():
        row = int(lacking.nonzero()[0])
        raise DataError(f"triplet {row}: prompt {prompts[row]!r} loses its pseudo word to truncation")
    plain_ids = backbone.tokenize([plain_template])[0].to(torch.int32)
    texts = [t.reference for t in triplets] + [t.target for t in triplets]
    embeds = frozen_text_embeddings(backbone, texts, cache_dir, batch_size, progress)
    n = len(triplets)
    return RTDData(query_ids, plain_ids, embeds[:n], embeds[n:])


class RTDTask(TrainTask):
    """ψ' (a ComposedTextEncoder) trains; ψ, Phi and the image tower are frozen.

    Args:
        backbone: frozen backbone (ψ = backbone.text).
        phi: frozen inversion network (eval mode).
        data: from `prepare_rtd_data`.
        config: the RTDConfig (temperature, noise_scale).
        tower: the trainable text tower (default: a deep copy of ψ, float32).
        validate: optional callback text tower (eval mode) -> metrics.
    """

    def __init__(self, backbone, phi: torch.nn.Module, data: RTDData, config: RTDConfig,
                 tower: torch.nn.Module | None = None, validate: Callable[[torch.nn.Module], dict] | None = None):
        self.backbone, self.phi, self.data, self.config, self._validate = backbone, phi, data, config, validate
        tower = tower if tower is not None else copy.deepcopy(backbone.text).float()
        self.encoder = ComposedTextEncoder(tower.requires_grad_(True).train(), backbone.pseudo_token_id)

    def setup(self, accelerator) -> None:
        move_backbone(self.backbone, accelerator.device)
        self.phi.to(accelerator.device).eval().requires_grad_(False)

    def model(self) -> torch.nn.Module:
        return self.encoder

    def num_examples(self) -> int:
        return self.data.query_ids.shape[0]

    def batch(self, indices, device):
        index = torch.as_tensor(indices, dtype=torch.long)
        d = self.data
        return (d.query_ids[index].to(device, torch.long), d.reference_embeds[index].to(device),
                d.target_embeds[index].to(device))

    def loss(self, model, batch) -> torch.Tensor:
        query_ids, e_ref, e_tgt = batch
        b = query_ids.shape[0]
        with torch.no_grad():
            u = torch.rand(b, 1, device=e_ref.device)
            v = self.phi(e_ref + self.config.noise_scale * u * torch.randn_like(e_ref))  # [B, H]
        ids = torch.cat([query_ids, self.data.plain_ids.to(query_ids.device, torch.long).expand(b, -1)])
        q = model(ids, torch.cat([v, v]))  # [2B, P]: composed rows, then the "a photo of $" rows
        return nt_xent(q, torch.cat([e_tgt, e_ref]), self.config.temperature)

    def can_validate(self) -> bool:
        return self._validate is not None

    def validate(self, model) -> dict:
        return self._validate(model.tower)

    def save(self, model, folder: Path) -> None:
        save_text_tower(model.tower, folder, rtd_file=folder / RTD_FILE)


def train_rtd(backbone, phi: torch.nn.Module, triplets: Sequence[Triplet], config: RTDConfig | None = None,
              out_dir: str | Path | None = None, validate: Callable[[torch.nn.Module], dict] | None = None
              ) -> torch.nn.Module:
    """Fine-tune the text tower with RTD.

    Args:
        backbone: frozen `Backbone` (ψ = its text tower).
        phi: the frozen Phi (LinCIR / SEARLE) whose pseudo tokens the tower learns to read.
        triplets: from `read_triplets`.
        config: the recipe (default RTDConfig()).
        out_dir: overrides `config.output_dir`.
        validate: optional callback text tower -> metrics with `config.select_metric` (e.g.
            `rtd_validator(CIRValidator(backbone, splits, phi=phi))`: image features cached once).
    Returns:
        The best text tower by validation (else the final one), eval mode, CPU. Folders `out_dir/best` and
        `out_dir/final` hold it as an HF folder plus `rtd_text_encoder.pt`; `zscir evaluate --text-encoder`
        takes either.
    """
    config = config or RTDConfig()
    if out_dir is not None:
        config.output_dir = str(out_dir)
    config.check()
    if hasattr(phi, "config"):
        check_fits(phi, backbone)
    cache_dir = config.cache_dir or str(Path(config.output_dir) / "cache")
    data = prepare_rtd_data(backbone, triplets, config.template, config.plain_template, cache_dir,
                            config.encode_batch_size, config.progress)
    result = train(RTDTask(backbone, phi, data, config, validate=validate), config)
    return load_text_tower(result.best_dir or result.final_dir, like=backbone.text).eval()


def rtd_validator(validator) -> Callable[[torch.nn.Module], dict]:
    """Adapt a `CIRValidator` built with the fixed Phi to RTD's callback (the text tower changes)."""
    return lambda tower: validator(text_tower=tower)
