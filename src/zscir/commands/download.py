"""`zscir download fashioniq --urls DIR --out ROOT/images`: fetch dataset images from URL lists."""

from __future__ import annotations

import argparse

from zscir.commands.options import add

HELP = "Download dataset images from URL lists (FashionIQ), resumably, with retries and a dead-URL report."

DATASETS = ("fashioniq",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `zscir download`."""
    add(parser, "dataset", choices=DATASETS, help="dataset whose images to fetch (CIRR images come from NLVR2 and "
        "CIRCO's from COCO: get them from their sites)")
    # the old positional spelling (`zscir download fashioniq ...`), hidden, for one release
    parser.add_argument("legacy_dataset", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--urls", required=True, metavar="DIR",
                        help="folder with {category}.json ([{asin, url}]) and/or asin2url.{category}.txt lists")
    add(parser, "output-dir", required=True, help="images folder, e.g. ROOT/images")
    add(parser, "categories", help="categories to fetch, e.g. dress shirt toptee (default: every list found)")
    add(parser, "workers", default=16, help="concurrent downloads")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request socket timeout in s (default 10)")
    parser.add_argument("--retries", type=int, default=3,
                        help="extra attempts on timeouts, connection errors, truncated bodies and 5xx (default 3)")
    parser.add_argument("--backoff", type=float, default=0.5,
                        help="base delay in s of the exponential backoff between attempts (default 0.5)")


def run(args: argparse.Namespace) -> int:
    """Run the download and print one summary line; the full report goes to OUT/download_report.json."""
    from zscir.errors import ZscirError

    dataset = args.dataset or args.legacy_dataset
    if dataset is None:
        raise ZscirError(f"--dataset is required ({', '.join(DATASETS)})")
    if dataset.lower() not in DATASETS:
        raise ZscirError(
            f"no downloader for dataset {dataset!r}; supported: {', '.join(DATASETS)} "
            "(CIRR images come from NLVR2 and CIRCO images from COCO unlabeled2017: get them from their sites)"
        )
    if args.workers < 1 or args.timeout <= 0 or args.retries < 0 or args.backoff < 0:
        raise ZscirError("--workers must be >= 1, --timeout > 0, --retries >= 0 and --backoff >= 0")
    from zscir.commands.common import existing_folder

    existing_folder(args.urls, "--urls")

    from zscir.data.download import REPORT_NAME, download_fashioniq, summary_line

    report = download_fashioniq(
        args.urls, args.output_dir, args.categories,
        workers=args.workers, timeout=args.timeout, retries=args.retries, backoff=args.backoff,
    )
    print(f"{summary_line(report)}; report: {str(args.output_dir).rstrip('/')}/{REPORT_NAME}")
    return 0
