"""`zscir evaluate`: one method on a benchmark's val split; metrics JSON + resolved config + a table."""

from __future__ import annotations

import argparse

from zscir.commands.common import check_evaluation, empty_caption_notes, evaluate_from_args, resolved_config
from zscir.commands.options import add, add_cig_arguments, add_evaluation_arguments

HELP = "Evaluate a method (image, text, sum, phi) on CIRR, FashionIQ or CIRCO; write metrics and config."

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    add(parser, "dataset", required=True)
    add(parser, "split", default="val")
    add(parser, "categories")
    add_evaluation_arguments(parser)
    add(parser, "output-dir", help="folder for metrics.json and config.json "
        "(default: runs/evaluate/<dataset>-<split>-<method>)")
    add_cig_arguments(parser, sweep=True)


def dropped_note(results) -> list[str]:
    """Lines saying how many queries / images were left out (never a silent partial metric)."""
    return [f"{name}: evaluated {len(r.split.queries)} of {len(r.split.queries) + r.dropped_queries} queries "
            f"({r.dropped_queries} dropped; {r.dropped_images} gallery images missing or undecodable)"
            for name, r in results.items() if r.dropped_queries or r.dropped_images]


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write `config.json` and `metrics.json` into the output folder."""
    from pathlib import Path

    from zscir.errors import ZscirError
    from zscir.evaluation.runner import format_table, summary_metrics
    from zscir.retrieval.shards import launched_rank
    from zscir.utils.io import write_json_atomic

    splits = check_evaluation(args)  # every flag and path, before any model is loaded
    out = Path(args.output_dir or f"runs/evaluate/{args.dataset}-{args.split}-{args.method}")
    if launched_rank() == 0:  # under `accelerate launch` only the main process writes
        (out / "metrics.json").unlink(missing_ok=True)  # never leave an older run's metrics beside this config
        write_json_atomic(out / "config.json", resolved_config(args))
    results = evaluate_from_args(args, splits)
    if results is None:  # a helper process of a sharded run: its images are in the cache
        return 0
    table = summary_metrics(results)
    if not table:
        raise ZscirError(f"{args.dataset}/{args.split} has no targets; use `zscir submit` for test splits")
    notes = dropped_note(results) + empty_caption_notes(results)
    write_json_atomic(out / "metrics.json", {
        "metrics": table,
        "queries": {name: len(r.split.queries) for name, r in results.items()},
        "dropped_queries": {name: r.dropped_queries for name, r in results.items()},
        "dropped_images": {name: r.dropped_images for name, r in results.items()},
        "empty_caption_queries": {name: sum(q.has_empty_caption for q in r.split.queries)
                                  for name, r in results.items()},
    })
    print(format_table(table))
    for line in notes:
        print(f"note: {line}")
    print(f"wrote {out / 'metrics.json'} and {out / 'config.json'}")
    return 0
