"""`zscir check-data`: is a benchmark folder complete? Annotation files, consistency, missing/corrupt images."""

from __future__ import annotations

import argparse

from zscir.commands.options import add

HELP = "Check a benchmark folder (CIRR, FashionIQ, CIRCO): annotation files, missing and undecodable images."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    add(parser, "dataset", required=True)
    add(parser, "root", required=True)
    add(parser, "split", help="one split (default: CIRR val+test1, FashionIQ val, CIRCO val+test)")
    add(parser, "categories")
    parser.add_argument("--decode", choices=("none", "verify", "full"), default="verify",
                        help="image check: existence only, PIL verify (fast, default) or a full decode (slow)")
    add(parser, "workers", default=8, help="threads for the decode check")
    add(parser, "examples", default=3, help="example paths shown per problem")


def run(args: argparse.Namespace) -> int:
    """Print one line per split; return 0 when everything is present and decodable, else 1."""
    from pathlib import Path

    from zscir.data.images import check_images
    from zscir.data.records import dataset_module, load_benchmark, resolve_split
    from zscir.errors import DataError

    root = Path(args.root).expanduser()
    if not root.is_dir():
        print(f"{args.dataset}: root folder {root} does not exist")
        return 1
    module = dataset_module(args.dataset)
    splits = [resolve_split(args.dataset, args.split)] if args.split else list(module.EVAL_SPLITS)
    complete = True
    empty_queries = 0
    for split in splits:
        try:
            loaded = load_benchmark(args.dataset, root, split, categories=args.categories, strict=False)
        except (DataError, OSError) as exc:  # a missing/malformed annotation file: report, keep checking
            print(f"{args.dataset}/{split}: {exc}")
            complete = False
            continue
        for unit in loaded:
            report = check_images(unit.image_paths(), decode=args.decode, workers=args.workers)
            print(f"{unit.name}: {len(unit.queries)} queries, {len(unit.gallery)} gallery images; "
                  f"{report.summary(args.examples)}")
            problems = unit.problems(args.examples)
            for problem in problems:
                print(f"{unit.name}: {problem}")
            empty_note = unit.empty_caption_note(args.examples)
            if empty_note:  # present in the official files; evaluate and submit compose them as written
                print(f"note: {empty_note}")
                empty_queries += sum(q.has_empty_caption for q in unit.queries)
            complete = complete and report.ok and not problems
    if not complete:
        print("incomplete: see the lines above")
    elif empty_queries:
        noun = "query has" if empty_queries == 1 else "queries have"
        print(f"complete, except that {empty_queries} {noun} an empty caption (listed above; the official "
              "protocol composes them as written, and so do evaluate and submit)")
    else:
        print("complete")
    return 0 if complete else 1
