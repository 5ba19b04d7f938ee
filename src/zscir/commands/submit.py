"""`zscir submit`: test-server files for CIRR (recall + recall_subset) and CIRCO, from any method."""

from __future__ import annotations

import argparse

from zscir.commands.common import check_evaluation, empty_caption_notes, evaluate_from_args, resolved_config
from zscir.commands.options import OPTIONS, add, add_cig_arguments, add_evaluation_arguments

HELP = ("Write CIRR / CIRCO test-server submission files for a method (image, text, sum, phi), optionally "
        "CIG-fused with pseudo targets.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options (the same model options as `evaluate`)."""
    add(parser, "dataset", required=True, choices=("cirr", "circo"), help=OPTIONS["dataset"].kwargs["help"]
        + " (CIRR and CIRCO have test servers)")
    add(parser, "split", default="test")
    add_evaluation_arguments(parser)
    add_cig_arguments(parser, sweep=False)  # CIG as published: --pseudo-targets DIR [--alpha X]
    add(parser, "output-dir", help="folder for the submission files (default: runs/submit/<dataset>-<split>-<method>)")


def run(args: argparse.Namespace) -> int:
    """Rank the split's gallery for every query and write the validated submission file(s)."""
    from pathlib import Path

    from zscir.errors import DataError
    from zscir.evaluation.submission import write_submission
    from zscir.retrieval.shards import launched_rank
    from zscir.utils.io import write_json_atomic

    splits = check_evaluation(args)  # every flag and path, before any model is loaded
    out = Path(args.output_dir or f"runs/submit/{args.dataset}-{args.split}-{args.method}")
    if launched_rank() == 0:
        write_json_atomic(out / "config.json", resolved_config(args))
    results = evaluate_from_args(args, splits)
    if results is None:  # a helper process of a sharded run
        return 0
    for name, result in results.items():
        if result.dropped_queries:
            raise DataError(f"{name}: {result.dropped_queries} queries have a missing or undecodable reference; "
                            "a submission needs every query (fix the images)")
        if result.dropped_images:
            print(f"note: {name}: ranked without {result.dropped_images} missing or undecodable gallery images")
        for path in write_submission(result.split, result.scores, out):
            print(f"wrote {path}")
    for line in empty_caption_notes(results):
        print(f"note: {line}")
    return 0
