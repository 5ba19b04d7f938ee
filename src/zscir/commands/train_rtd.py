"""`zscir train-rtd`: RTD — fine-tune the text encoder for a frozen Phi on text triplets (METHODS.md §4)."""

from __future__ import annotations

import argparse

from zscir.commands.common import (
    apply_recipe,
    build_validator,
    check_backbone,
    check_phi_backbone,
    check_phi_source,
    check_training,
    check_validation,
    config_from_args,
    existing_path,
    print_config,
    require_options,
)
from zscir.commands.options import OPTIONS, add, add_config_arguments, add_recipe_arguments, add_validation_arguments
from zscir.training.config import RTDConfig

HELP = "Fine-tune the text encoder with RTD on text triplets for a frozen Phi; resumable, multi-GPU."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    add_recipe_arguments(parser, "train-rtd")
    parser.add_argument("--triplets", required=True, metavar="PATH", help="JSONL (or JSON list) of "
                        "{reference_caption, conditioning_caption, target_caption}")
    add(parser, "backbone", help=OPTIONS["backbone"].kwargs["help"] + " (required unless --recipe sets it)")
    add(parser, "phi", required=True, help="the frozen Phi: {'Phi'} file or zscir folder (LinCIR/SEARLE)")
    add_validation_arguments(parser)
    add_config_arguments(parser, RTDConfig)


def run(args: argparse.Namespace) -> int:
    """Read the triplets, train the text tower, print where it was saved."""
    from zscir.errors import require

    require("accelerate", "train")  # before reading data and loading models
    import os
    from pathlib import Path

    from zscir.models.backbone import Backbone
    from zscir.models.phi import check_fits, load_inversion_network
    from zscir.training.rtd import RTD_FILE, read_triplets, rtd_validator, train_rtd

    apply_recipe(args, "train-rtd")
    config = config_from_args(RTDConfig, args)
    if args.print_config:
        return print_config(args, "train-rtd", config.to_dict())
    require_options(args, "backbone")
    existing_path(args.triplets, "--triplets")
    check_phi_source(args.phi, "--phi")
    check_phi_backbone(args.phi, args.backbone)
    check_backbone(args.backbone)
    check_training(config)
    val_splits = check_validation(args)
    triplets, summary = read_triplets(args.triplets, config.max_bad_fraction)
    print(summary)
    backbone = Backbone.load(args.backbone, load_vision=val_splits is not None)
    phi = load_inversion_network(args.phi)
    check_fits(phi, backbone)
    validator = build_validator(args, backbone, val_splits, phi=phi)
    train_rtd(backbone, phi, triplets, config, validate=rtd_validator(validator) if validator else None)
    best = Path(config.output_dir) / ("best" if validator else "final")
    if os.environ.get("RANK", "0") == "0":  # one line, not one per process
        print(f"text encoder saved to {best} (HF folder) and {best / RTD_FILE} (RTD format); "
              f"use it with `zscir evaluate --text-encoder {best}`")
    return 0
