"""Published recipes as data: every hyperparameter with the official file it comes from.

Two tables live here (pure data, importable from any layer):

- `CIG_ALPHA`: the CIG fusion weight α per benchmark and split, as the official CIG code hard-codes it.
  `cig_alpha(dataset, split)` is what `evaluate`, `submit` and `serve` use when no α is given.
- `RECIPES`: named training recipes per command (`train-phi`, `train-rtd`, `invert`, `train-generator`):
  `--recipe NAME` sets every value of the recipe, flags given on the command line override it.

Where an official value could not be pinned down (the file is not public, or the paper does not say),
the recipe leaves the field at zscir's default and says so in `notes`.

Official sources (read, never copied):
  SEARLE   miccunifi/SEARLE            src/train_phi.py, src/oti_inversion.py, src/gpt_phrases_generation.py
  LinCIR   navervision/lincir          README.md (training command), train_phi.py (argparse defaults)
  RTD      the RTD README (ICCV 2025)  training command and train_text_encoder.py argparse defaults, read in a public
                                       copy of the official repository (LeeHoang2710/RTD, README "This is the
                                       official PyTorch implementation"); the authors' own repository was not found
  CIG      lan-lw/ComposedImageGen     SEARLE_CIG/src/validate.py, SEARLE_CIG/src/generate_test_submission.py,
                                       test_CIG.py / README.md (generation), extract_lincir_feat.py
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zscir.errors import ZscirError

# ---------------------------------------------------------------------------------------------
# CIG: α per benchmark and split (q = normalize(α·f_ref + (1−α)·f_gen), METHODS §5)

CIG_ALPHA: dict[tuple[str, str], float] = {
    ("cirr", "test"): 0.5,  # lan-lw/ComposedImageGen SEARLE_CIG/src/generate_test_submission.py (CIRR test: 0.5/0.5)
    ("circo", "test"): 0.7,  # lan-lw/ComposedImageGen SEARLE_CIG/src/generate_test_submission.py (CIRCO: 0.7/0.3)
    ("cirr", "val"): 0.85,  # lan-lw/ComposedImageGen SEARLE_CIG/src/validate.py (CIRR val: 0.85/0.15)
    ("fashioniq", "val"): 0.9,  # lan-lw/ComposedImageGen SEARLE_CIG/src/validate.py (FashionIQ val: 0.9/0.1)
    ("fashioniq", "test"): 0.9,  # the FashionIQ value; the official code evaluates FashionIQ on val only
}
# α where the table has no entry (CIRCO val, CIRR train, a folder index): the CIRR val value, the one
# chosen on a val split. Choose your own with `zscir evaluate --alpha-sweep` on val.
DEFAULT_ALPHA: float = CIG_ALPHA[("cirr", "val")]
# The α values `zscir evaluate --alpha-sweep` (no values) and the demo try: 0.50, 0.55, ..., 1.00.
ALPHA_SWEEP: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(10, 21))

_SPLIT_ALIASES = {"test1": "test", "dev": "val"}


def published_cig_alpha(dataset: str | None, split: str | None) -> float | None:
    """The α the official CIG code uses on this benchmark split, or None if it has none.

    Args:
        dataset: "cirr", "fashioniq", "circo" (or None, e.g. for a folder index).
        split: the split name ("test1" counts as "test"); FashionIQ category suffixes are ignored.
    """
    if dataset is None or split is None:
        return None
    name = str(split).split("/")[0].split("-")[0]
    return CIG_ALPHA.get((dataset.lower(), _SPLIT_ALIASES.get(name, name)))


def cig_alpha(dataset: str | None, split: str | None) -> float:
    """The published CIG α of a benchmark split (`published_cig_alpha`), else `DEFAULT_ALPHA`."""
    alpha = published_cig_alpha(dataset, split)
    return DEFAULT_ALPHA if alpha is None else alpha


# ---------------------------------------------------------------------------------------------
# Training recipes


@dataclass(frozen=True)
class Recipe:
    """A published recipe of one command.

    Attributes:
        name: what `--recipe` takes.
        command: "train-phi", "train-rtd", "invert" or "train-generator".
        description: one line.
        settings: {option or config field: value}; config fields use their dataclass names
            (e.g. "batch_size"), other options their argparse dest (e.g. "backbone", "val_dataset").
        notes: what the official sources do not pin down (left at zscir's default), or how a value was derived.
    """

    name: str
    command: str
    description: str
    settings: dict[str, Any]
    notes: str = ""


_LINCIR = {
    # navervision/lincir README.md "How to Train LinCIR" command, and train_phi.py argparse defaults
    "method": "lincir",  # LinCIR trains Phi from text only (train_phi.py)
    "batch_size": 512,  # README: --batch_size 64 on 8 GPUs (= 512 total); one GPU: "256 or 512", results consistent
    "max_steps": 20000,  # README: --max_train_steps 20000
    "lr": 1e-4,  # train_phi.py: --learning_rate 1e-4
    "weight_decay": 0.01,  # train_phi.py: --weight_decay 0.01
    "lr_scheduler": "constant_with_warmup",  # README: --lr_scheduler constant_with_warmup
    "warmup_steps": 0,  # README: --lr_warmup_steps 0
    "mixed_precision": "fp16",  # README: --mixed_precision fp16
    "validate_every": 1000,  # README: --validation_steps 1000
    "checkpoint_every": 1000,  # README: --checkpointing_steps 1000
    "seed": 12345,  # README: --seed 12345
    "dropout": 0.5,  # train_phi.py: --phi_dropout 0.5
    "noise_scale": 1.0,  # train_phi.py: input_features += 1.0 * rand(B) * randn(B, P)
    "select_metric": "R@1",  # train_phi.py: phi_best by cirr_recall_at1
    "val_dataset": "cirr",  # train_phi.py validates on CIRR val (--cirr_dataset_path)
}

_LINCIR_NOTE = ("batch_size is per process: the official 8 x 64 = 512 is one process at 512; with N processes "
                "pass --batch-size 512/N. The README's first version (Dec 2023) said 30000 steps and validation / "
                "checkpoints every 500; the values here follow the later one (CVPR 2024)")

_SEARLE_DISTIL = {
    # miccunifi/SEARLE src/train_phi.py argparse defaults (latest version; also its README)
    "method": "searle",  # distillation of OTI tokens (src/train_phi.py)
    "epochs": 100,  # --num-epochs 100
    "batch_size": 256,  # --batch-size 256
    "lr": 1e-4,  # --learning-rate 1e-4
    "weight_decay": 0.01,  # --weight-decay 0.01
    "distill_loss": "nt-xent",  # src/utils.py contrastive_loss (PALAVRA), both sets' negatives
    "temperature": 0.25,  # --temperature 0.25
    "distil_weight": 1.0,  # --lambda-distil 1
    "phrase_weight": 0.75,  # --lambda-gpt 0.75
    "top_k": 150,  # --top-k-concepts 150
    "dropout": 0.5,  # --phi-dropout 0.5
    "seed": 42,  # --seed 42
    "mixed_precision": "fp16",  # torch.cuda.amp.autocast + GradScaler around the loss
    "val_dataset": "cirr",  # validates on CIRR val every epoch (--validation-frequency 1)
    "concepts": "openimages",  # data/oidv7-class-descriptions.csv: the concepts of the phrase loss
    "phrases": "lm:EleutherAI/gpt-neo-2.7B",  # --gpt-exp-name GPTNeo27B (reused from the token folder)
}

_SEARLE_OTI = {
    # miccunifi/SEARLE src/oti_inversion.py argparse defaults, src/gpt_phrases_generation.py
    "steps": 350,  # --oti-steps 350
    "lr": 2e-2,  # --learning-rate 2e-2
    "weight_decay": 0.01,  # --weight-decay 0.01
    "batch_size": 32,  # --batch-size 32
    "top_k": 15,  # --top-k 15
    "image_weight": 1.0,  # --lambda_cos 1
    "phrase_weight": 0.5,  # --lambda_gpt 0.5
    "ema_decay": 0.99,  # --ema-decay 0.99
    "template": "palavra",  # random.choices(get_templates()) every step (src/utils.py get_templates)
    "init_std": 0.02,  # nn.init.normal_(oti_pseudo_tokens, std=0.02)
    "seed": 42,  # --seed 42
    "target_pad": True,  # --preprocess-type targetpad (ratio 1.25)
    "concepts": "openimages",  # data/oidv7-class-descriptions.csv (src/image_concepts_association.py)
    "phrases": "lm:EleutherAI/gpt-neo-2.7B",  # gpt_phrases_generation.py --gpt-model
    "phrases_per_concept": 256,  # gpt_phrases_generation.py --num-return-sequences 256
}

_RTD = {
    # the RTD README (ICCV 2025) training command and train_text_encoder.py defaults (LeeHoang2710/RTD); METHODS §4
    "batch_size": 128,  # --batch_size 128 per GPU, on 4 GPUs (--nproc_per_node 4): the loss sees 128 per process
    "max_steps": 2000,  # --max_train_steps 2000
    "lr": 1e-5,  # --learning_rate 1e-5
    "weight_decay": 0.01,  # train_text_encoder.py --weight_decay 0.01 (AdamW)
    "lr_scheduler": "constant_with_warmup",  # --lr_scheduler constant_with_warmup
    "warmup_steps": 0,  # --lr_warmup_steps 0
    "mixed_precision": "fp16",  # --mixed_precision "fp16"
    "validate_every": 100,  # --validation_steps 100
    "checkpoint_every": 100,  # --checkpointing_steps 100
    "seed": 12345,  # --seed 12345
    "temperature": 0.07,  # train_text_encoder.py --tau 0.07 (the frozen-target contrastive loss, METHODS §4)
    "noise_scale": 0.5,  # train_text_encoder.py --noise_scale 0.5: v = Phi(ψ(T_r) + 0.5·u·n)
    "val_dataset": "cirr",  # --cirr_dataset_path: best by CIRR val R@1
}

RECIPES: dict[tuple[str, str], Recipe] = {(r.command, r.name): r for r in [
    Recipe("lincir-vit-l14", "train-phi", "LinCIR on CLIP ViT-L/14 (README command, --clip_model_name large)",
           {**_LINCIR, "backbone": "ViT-L/14"}, _LINCIR_NOTE),
    Recipe("lincir-bigg14", "train-phi", "LinCIR on CLIP bigG/14 (the same command, --clip_model_name giga)",
           {**_LINCIR, "backbone": "bigG/14"},
           "not pinned: the README gives one command for every backbone (the same values are used); " + _LINCIR_NOTE),
    Recipe("searle-vit-b32", "train-phi", "SEARLE Phi distilled from ImageNet1K-test OTI tokens, ViT-B/32",
           {**_SEARLE_DISTIL, "backbone": "ViT-B/32"},
           "training pairs: OTI tokens of the 100,000 ImageNet1K test images (zscir invert --recipe searle-vit-b32)"),
    Recipe("searle-vit-l14", "train-phi", "SEARLE-XL Phi distilled from ImageNet1K-test OTI tokens, ViT-L/14",
           {**_SEARLE_DISTIL, "backbone": "ViT-L/14"}),
    Recipe("searle-vit-b32", "invert", "SEARLE OTI on ViT-B/32", {**_SEARLE_OTI, "backbone": "ViT-B/32"},
           "concepts: Open Images V7 class names (SEARLE data/oidv7-class-descriptions.csv, not shipped: put it "
           "at $ZSCIR_CACHE/concepts/oidv7-class-descriptions.csv or pass --concepts FILE); phrases: GPT-Neo 2.7B, "
           "kept whole by SEARLE, cut at the first sentence by zscir"),
    Recipe("searle-vit-l14", "invert", "SEARLE-XL OTI on ViT-L/14", {**_SEARLE_OTI, "backbone": "ViT-L/14"},
           "concepts as for searle-vit-b32"),
    Recipe("rtd-lincir-vit-l14", "train-rtd", "RTD on a LinCIR ViT-L/14 Phi (the README command)",
           {**_RTD, "backbone": "ViT-L/14"}, "--phi: the LinCIR ViT-L/14 Phi (e.g. --phi lincir-vit-l14)"),
    Recipe("rtd-lincir-bigg14", "train-rtd", "RTD on a LinCIR bigG/14 Phi", {**_RTD, "backbone": "bigG/14"},
           "not pinned: the README shows the ViT-L/14 command only; the same values are used"),
    Recipe("rtd-searle-vit-b32", "train-rtd", "RTD on a SEARLE ViT-B/32 Phi", {**_RTD, "backbone": "ViT-B/32"},
           "not pinned: the README shows the LinCIR command only; the same values are used (--phi searle-vit-b32)"),
    Recipe("rtd-searle-vit-l14", "train-rtd", "RTD on a SEARLE-XL ViT-L/14 Phi", {**_RTD, "backbone": "ViT-L/14"},
           "not pinned: the README shows the LinCIR command only; the same values are used (--phi searle-vit-l14)"),
    Recipe("cig", "train-generator", "CIG's SDXL UNet fine-tuning on 'a photo of $' conditionings",
           {"backbone": "ViT-L/14", "backbone_2": "bigG/14",  # SDXL's two text encoders (extract_lincir_feat.py)
            "generator": "stabilityai/stable-diffusion-xl-base-1.0",
            "template": "plain",
            "resolution": 512},  # lan-lw/ComposedImageGen README / test_CIG.py --height 512 --width 512
           "not pinned: the authors' UNet training code is unreleased; lr, steps, batch and uncond_prob stay at "
           "zscir's defaults"),
]}


def recipe_names(command: str) -> list[str]:
    """The recipe names of one command, in table order."""
    return [name for (cmd, name) in RECIPES if cmd == command]


def get_recipe(command: str, name: str) -> Recipe:
    """The recipe `name` of `command`.

    Raises:
        ZscirError: unknown name (lists the command's recipes).
    """
    recipe = RECIPES.get((command, name))
    if recipe is None:
        raise ZscirError(f"unknown recipe {name!r} for `zscir {command}`; known: {', '.join(recipe_names(command))}")
    return recipe
