"""Training configs as dataclasses: defaults < YAML/JSON file < `key=value` overrides / CLI flags.

Every trainer's config subclasses `TrainConfig` (the loop's knobs) and adds its own recipe fields; the
recipes of all trainers built on the loop live here (LinCIR, RTD, SEARLE, the CIG generator, its VAE),
with the tiny CLIP's (`ClipTrainConfig`, its own loop), torch-free so that the commands' --help stays light.
The resolved config is written as JSON into the run folder by the loop.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from zscir.errors import ZscirError
from zscir.models.factory import ClipSize

C = TypeVar("C", bound="TrainConfig")

LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")  # names of transformers.get_scheduler
REPORT_TO = ("tensorboard", "wandb", "mlflow", "all", "none")  # accelerate trackers


@dataclass
class TrainConfig:
    """Knobs of the training loop (`zscir.training.loop.train`).

    Attributes:
        output_dir: run folder (config.json, checkpoints/, best/, final/, logs/).
        max_steps: optimiser steps to reach (a resumed run continues up to this count).
        batch_size: micro-batch size per process; the effective batch is batch_size × processes × grad_accum.
        grad_accum: micro-batches accumulated per optimiser step.
        lr / weight_decay / betas / eps: AdamW.
        warmup_steps: linear warm-up steps of the LR schedule (0 = none, the recipes' choice).
        lr_scheduler: transformers' `get_scheduler` name: constant, constant_with_warmup (default; = constant
            when warmup_steps is 0), cosine or linear (both decay to 0 at max_steps).
        max_grad_norm: clip the gradient norm (None/0 = no clipping).
        mixed_precision: "no", "fp16" (GPU), "bf16" (GPU, or autocast on CPU).
        cpu: force the CPU even if a GPU is visible.
        seed: seeds model init noise, data order and per-sample noise (per process: seed + rank for noise).
        checkpoint_every: optimiser steps between checkpoints (the last step is always checkpointed).
        keep_checkpoints: how many recent checkpoints to keep.
        validate_every: steps between validations (0 = only at the end, if the task can validate).
        select_metric / select_mode: the validation metric that picks the best model, "max" or "min".
        log_every: steps between logged scalars.
        resume: continue from the last checkpoint in output_dir/checkpoints.
        allow_config_change: let a resume change fields that shape the weights (lr, batch size, recipe
            fields, ...); the new values take effect and config.json records each change with its step.
        report_to: accelerate trackers for the logged scalars: tensorboard (output_dir/logs), wandb, mlflow,
            all (every one installed) or none.
        progress: show a tqdm bar (hidden when not a TTY anyway).
    """

    output_dir: str = "runs/train"
    max_steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    lr_scheduler: str = field(default="constant_with_warmup", metadata={"choices": LR_SCHEDULERS})
    max_grad_norm: float | None = None
    mixed_precision: str = field(default="no", metadata={"choices": ("no", "fp16", "bf16")})
    cpu: bool = False
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    validate_every: int = 0
    select_metric: str = "R@1"
    select_mode: str = field(default="max", metadata={"choices": ("max", "min")})
    log_every: int = 10
    resume: bool = False
    allow_config_change: bool = False
    report_to: str = field(default="tensorboard", metadata={"choices": REPORT_TO})
    progress: bool = True

    def check(self) -> None:
        """Raise ZscirError naming the first invalid field."""
        positive = ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ZscirError(f"config: {name} must be >= 1, got {getattr(self, name)}")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise ZscirError(f"config: mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ZscirError(f"config: lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}, "
                             f"got {self.lr_scheduler!r}")
        if self.lr_scheduler == "constant" and self.warmup_steps:
            raise ZscirError("config: lr_scheduler constant has no warm-up; use constant_with_warmup",
                             setting="lr_scheduler")
        if self.report_to not in REPORT_TO:
            raise ZscirError(f"config: report_to must be one of {', '.join(REPORT_TO)}, got {self.report_to!r}")
        if self.select_mode not in ("max", "min"):
            raise ZscirError(f"config: select_mode must be max or min, got {self.select_mode!r}")
        if self.validate_every < 0 or self.warmup_steps < 0:
            raise ZscirError("config: validate_every and warmup_steps must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class LinCIRConfig(TrainConfig):
    """LinCIR recipe (METHODS §2) on top of the loop's knobs.

    Attributes:
        dropout: Phi's dropout in training.
        hidden_dim: Phi's hidden width (None = 4P).
        noise_scale: u ~ U(0, noise_scale) scales the Gaussian noise added to e.
        fallback_prompt: used when no `$` survives masking + truncation.
        encode_batch_size: batch size of the one-off frozen-tower encoding.
        cache_dir: where masked captions and text embeddings are cached (None = output_dir/cache).
        max_bad_fraction: refuse a corpus with more bad lines than this.
    """

    output_dir: str = "runs/lincir"
    max_steps: int = 20000
    batch_size: int = 512
    lr: float = 1e-4
    weight_decay: float = 0.01
    checkpoint_every: int = 1000
    validate_every: int = 1000
    dropout: float = 0.5
    hidden_dim: int | None = None
    noise_scale: float = 1.0
    fallback_prompt: str = "a photo of $"
    encode_batch_size: int = 256
    cache_dir: str | None = None
    max_bad_fraction: float = 0.1


@dataclass
class RTDConfig(TrainConfig):
    """RTD recipe (METHODS §4) on top of the loop's knobs.

    Attributes:
        temperature: τ of the NT-Xent loss.
        noise_scale: v = Phi(ψ(T_r) + noise_scale·u·n).
        template: the query prompt (with `$` and `{caption}`), exactly as at inference.
        plain_template: the hard-negative prompt ("a photo of $").
        encode_batch_size: batch size of the one-off frozen encoding.
        cache_dir: cache of the frozen encodings (None = output_dir/cache).
        max_bad_fraction: refuse a triplet file with more bad records than this.
    """

    output_dir: str = "runs/rtd"
    max_steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-5
    weight_decay: float = 0.01
    checkpoint_every: int = 500
    validate_every: int = 100
    temperature: float = 0.07
    noise_scale: float = 0.5
    template: str = "a photo of $ that {caption}"
    plain_template: str = "a photo of $"
    encode_batch_size: int = 256
    cache_dir: str | None = None
    max_bad_fraction: float = 0.1


@dataclass
class SearleConfig(TrainConfig):
    """SEARLE distillation recipe on top of the loop's knobs (defaults: the official train_phi.py).

    The official values are the argparse defaults of miccunifi/SEARLE src/train_phi.py (latest version,
    also listed in its README): batch 256, AdamW lr 1e-4, weight decay 0.01, 100 epochs, λ_distil 1,
    λ_gpt 0.75, τ 0.25, top-k 150 concepts, Phi dropout 0.5, seed 42.

    Attributes:
        epochs: passes over the (image, OTI token) pairs (100, the official run); when set, `max_steps` is
            derived from it (epochs × ⌊N / effective batch⌋, the official loader drops the last partial batch).
            None: `max_steps` is used as given (`load_config` sets None when max_steps is given without epochs).
        distill_loss: "nt-xent" (official: PALAVRA's contrastive loss over the 2N vectors {OTI, Phi},
            negatives from both sets) or "cross-modal" (negatives only from the other set).
        temperature: τ of the distillation loss.
        distil_weight: λ_distil of the distillation loss.
        phrase_weight: λ_gpt of the concept-phrase loss (0 = distillation only, no phrases needed).
        top_k: concepts per image the phrase is drawn from.
        dropout / hidden_dim: Phi's dropout in training and hidden width (None = 4P).
    """

    output_dir: str = "runs/searle"
    max_steps: int = 2000
    epochs: int | None = 100  # SEARLE src/train_phi.py --num-epochs 100 (a max_steps given alone: see load_config)
    batch_size: int = 256  # SEARLE src/train_phi.py --batch-size 256
    lr: float = 1e-4  # SEARLE src/train_phi.py --learning-rate 1e-4
    weight_decay: float = 0.01  # SEARLE src/train_phi.py --weight-decay 0.01
    seed: int = 42  # SEARLE src/train_phi.py --seed 42
    checkpoint_every: int = 500
    validate_every: int = 500  # SEARLE validates every epoch (--validation-frequency 1)
    distill_loss: str = "nt-xent"  # SEARLE src/utils.py contrastive_loss (PALAVRA)
    temperature: float = 0.25  # SEARLE src/train_phi.py --temperature 0.25
    distil_weight: float = 1.0  # SEARLE src/train_phi.py --lambda-distil 1
    phrase_weight: float = 0.75  # SEARLE src/train_phi.py --lambda-gpt 0.75
    top_k: int = 150  # SEARLE src/train_phi.py --top-k-concepts 150
    dropout: float = 0.5  # SEARLE src/train_phi.py --phi-dropout 0.5
    hidden_dim: int | None = None  # SEARLE src/train_phi.py: hidden_dim = 4 × image embedding size

    def check(self) -> None:
        """Raise ZscirError naming the first invalid field."""
        from zscir.training.losses import DISTILL_LOSSES

        super().check()
        if self.temperature <= 0 or self.phrase_weight < 0 or self.distil_weight < 0 or self.top_k < 1:
            raise ZscirError("searle: temperature must be > 0, distil_weight and phrase_weight >= 0, top_k >= 1")
        if self.distill_loss not in DISTILL_LOSSES:
            raise ZscirError(f"searle: distill_loss must be one of {', '.join(DISTILL_LOSSES)}, "
                             f"got {self.distill_loss!r}")
        if self.epochs is not None and self.epochs < 1:
            raise ZscirError(f"searle: epochs must be >= 1 or None, got {self.epochs}")

    def steps_for(self, num_pairs: int, processes: int = 1) -> int:
        """Optimiser steps of the run: from `epochs` if set (drop-last batches), else `max_steps`."""
        if self.epochs is None:
            return self.max_steps
        per_epoch = max(1, num_pairs // (self.batch_size * self.grad_accum * max(1, processes)))
        return self.epochs * per_epoch


@dataclass
class GeneratorTrainConfig(TrainConfig):
    """Recipe of `zscir train-generator` (loop knobs inherited from TrainConfig).

    Attributes:
        generator: SDXL pipeline folder or hub id whose UNet, VAE and scheduler config are used.
        template: the training prompt; "plain" = "a photo of $".
        resolution: square training size in pixels (resize shorter side + centre crop).
        uncond_prob: probability of training a sample on the all-zero conditioning (for guidance).
        encode_batch_size: images per VAE / tower forward when building the cache.
    """

    output_dir: str = "runs/generator"
    max_steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-5
    weight_decay: float = 0.01
    checkpoint_every: int = 250
    select_metric: str = "loss"
    select_mode: str = "min"
    generator: str = "stabilityai/stable-diffusion-xl-base-1.0"
    template: str = "plain"
    resolution: int = 512
    uncond_prob: float = 0.1
    encode_batch_size: int = 16

    def check(self) -> None:
        """TrainConfig's checks plus the recipe's."""
        super().check()
        if not 0.0 <= self.uncond_prob < 1.0:
            raise ZscirError(f"config: uncond_prob must be in [0, 1), got {self.uncond_prob}")
        if self.resolution % 8:
            raise ZscirError(f"config: resolution must be a multiple of 8, got {self.resolution}")


@dataclass
class VAETrainConfig(TrainConfig):
    """VAE recipe on top of the loop's knobs.

    Attributes:
        vae: an `AutoencoderKL` folder, or a pipeline folder holding `vae/` (the starting weights).
        resolution: square training size (resize shorter side + centre crop).
        kl_weight: weight of the per-element KL term (small: the latent must stay informative).
        scale_images: training images used to estimate the latent std for `scaling_factor`.
    """

    output_dir: str = "runs/vae"
    max_steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.0
    checkpoint_every: int = 1000
    select_metric: str = "mse"
    select_mode: str = "min"
    vae: str = ""
    resolution: int = 48
    kl_weight: float = 1e-4
    scale_images: int = 512

    def check(self) -> None:
        """TrainConfig's checks plus the recipe's."""
        super().check()
        if not self.vae:
            raise ZscirError("config: vae (an AutoencoderKL or pipeline folder) is required")
        if self.kl_weight < 0:
            raise ZscirError(f"config: kl_weight must be >= 0, got {self.kl_weight}")
        if self.resolution % 8:
            raise ZscirError(f"config: resolution must be a multiple of 8, got {self.resolution}")


@dataclass
class ClipTrainConfig:
    """Recipe for the tiny CLIP (WORLD-NOTES: these settings train in minutes on 2 cores)."""

    size: ClipSize = field(default_factory=ClipSize)
    steps: int = 700
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.1
    warmup_fraction: float = 0.04
    # bf16 autocast only pays on CPUs with bf16 units (AMX / avx512_bf16); on an AVX2-only CPU it was
    # measured 13x slower than fp32 (18.5 vs 1.4 s per step), so fp32 is the default.
    bf16: bool = False
    seed: int = 0
    threads: int | None = None
    # Geometry of the initialisation (Liang et al. 2022: a deep net's embeddings start in a narrow cone,
    # one per tower, and contrastive training keeps the two cones apart). A tiny 4-layer tower has
    # almost no cone effect, so each tower's final LayerNorm bias starts as a random vector of this
    # norm: after the projection it is a constant offset, i.e. one cone per modality. 0 = HF default.
    modality_offset: float = 0.0
    # Initial temperature as CLIP's logit scale (HF default ln(1/0.07) = 2.659); learnt unless frozen.
    logit_scale_init: float | None = None
    learn_temperature: bool = True
    # Options of the pair sampler the recipe was trained with (recorded in the log: the world's
    # `clip_pair_sampler` mix, e.g. {"composed_fraction": 0.2}; {} = its defaults); the trainer does not read them.
    data: dict = field(default_factory=dict)
    # An optional second phase, continued pretraining: after `steps`, `continue_steps` more steps from the
    # first phase's weights with a fresh AdamW at `continue_lr` (cosine, no warmup) on the pair mix
    # `continue_data` (`clip_pair_sampler` options, e.g. composed texts); 0 = a single phase.
    continue_steps: int = 0
    continue_lr: float = 2e-4
    continue_data: dict = field(default_factory=dict)
    # The raw embedding scale, set once training is done: both projections are multiplied by one constant so
    # that image embeddings have this root-mean-square per coordinate (None = as trained). CLIP's loss sees
    # only cosines, so the scale is a free parameter of a trained CLIP (retrieval does not change), but LinCIR
    # and RTD add N(0, I) noise to raw embeddings, so it decides how large that noise is against them.
    embedding_rms: float | None = None

    def first_phase(self) -> "ClipTrainConfig":
        """This recipe without its second phase or final rescale (what a `phase_one` folder must have been
        trained with)."""
        return replace(self, continue_steps=0, continue_lr=ClipTrainConfig.continue_lr, continue_data={},
                       embedding_rms=None)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(cls, name: str, value: Any) -> Any:
    """Convert a parsed value to the field's type (tuples from lists, numbers from strings), or raise."""
    kind = _field_types(cls)[name]
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    optional = type(None) in args
    if optional and isinstance(value, str) and value.strip().lower() in ("none", "null", ""):
        value = None
    if value is None:
        if optional:
            return None
        raise ZscirError(f"config: {name} may not be null")
    if optional:
        kind = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    try:
        if origin is tuple:
            return tuple(args[i if i < len(args) else 0](v) for i, v in enumerate(value))
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind in (int, float, str):
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return kind(value)
    except (TypeError, ValueError) as exc:
        raise ZscirError(f"config: {name}={value!r} is not a valid {kind}") from exc
    return value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["lr=1e-5", "betas=[0.9,0.98]"]` → {"lr": 1e-05, "betas": [0.9, 0.98]} (values parsed as YAML)."""
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise ZscirError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        out[key.strip().replace("-", "_")] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> C:
    """Build a config: dataclass defaults, then `base` (a published recipe), then a YAML/JSON file, then overrides.

    A config that counts `epochs` (SEARLE's) counts steps instead when the file or the overrides give
    `max_steps` without `epochs`: asking for N steps means N steps, whatever the defaults or recipe say.

    Args:
        cls: a TrainConfig subclass.
        path: optional .yaml/.yml/.json file holding a mapping of field names.
        overrides: {field: value} applied last (e.g. from CLI flags or `parse_overrides`).
        base: {field: value} applied first (e.g. a recipe of `zscir.recipes`).
    Returns:
        The checked config.
    Raises:
        ZscirError: unknown field, wrong type, unreadable file.
    """
    given: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ZscirError(f"{path}: config file not found")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix == ".json":
                loaded = json.loads(text)
            else:
                import yaml

                loaded = yaml.safe_load(text)
        except Exception as exc:
            raise ZscirError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ZscirError(f"{path}: expected a mapping of config fields, got {type(loaded).__name__}")
        given.update(loaded)
    given.update(overrides or {})
    values = {**(base or {}), **given}
    if "max_steps" in given and "epochs" not in given and any(f.name == "epochs" for f in fields(cls)):
        values["epochs"] = None
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ZscirError(f"config: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    config = cls(**{k: _coerce(cls, k, v) for k, v in values.items()})
    config.check()
    return config
