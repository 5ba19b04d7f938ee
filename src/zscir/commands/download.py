"""`zscir download fashioniq --urls DIR --out ROOT/images`: fetch dataset images from URL lists."""

from __future__ import annotations

import argparse

HELP = "Download dataset images from URL lists (FashionIQ), resumably, with retries and a dead-URL report."

DATASETS = ("fashioniq",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `zscir download`."""
    parser.add_argument("dataset", help="dataset whose images to fetch; only 'fashioniq' for now")
    parser.add_argument("--urls", required=True, metavar="DIR",
                        help="folder with {category}.json ([{asin, url}]) and/or asin2url.{category}.txt lists")
    parser.add_argument("--out", required=True, metavar="DIR", help="images folder, e.g. ROOT/images")
    parser.add_argument("--categories", nargs="+", default=None, metavar="CAT",
                        help="categories to fetch, e.g. dress shirt toptee (default: every list found)")
    parser.add_argument("--workers", type=int, default=16, help="concurrent downloads (default 16)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request socket timeout in s (default 10)")
    parser.add_argument("--retries", type=int, default=3,
                        help="extra attempts on timeouts, connection errors, truncated bodies and 5xx (default 3)")
    parser.add_argument("--backoff", type=float, default=0.5,
                        help="base delay in s of the exponential backoff between attempts (default 0.5)")


def run(args: argparse.Namespace) -> int:
    """Run the download and print one summary line; the full report goes to OUT/download_report.json."""
    from zscir.errors import ZscirError

    dataset = args.dataset.lower()
    if dataset not in DATASETS:
        raise ZscirError(
            f"no downloader for dataset {args.dataset!r}; supported: {', '.join(DATASETS)} "
            "(CIRR images come from NLVR2 and CIRCO images from COCO unlabeled2017: get them from their sites)"
        )
    if args.workers < 1 or args.timeout <= 0 or args.retries < 0 or args.backoff < 0:
        raise ZscirError("--workers must be >= 1, --timeout > 0, --retries >= 0 and --backoff >= 0")

    from zscir.data.download import REPORT_NAME, download_fashioniq, summary_line

    report = download_fashioniq(
        args.urls, args.out, args.categories,
        workers=args.workers, timeout=args.timeout, retries=args.retries, backoff=args.backoff,
    )
    print(f"{summary_line(report)}; report: {args.out.rstrip('/')}/{REPORT_NAME}")
    return 0
