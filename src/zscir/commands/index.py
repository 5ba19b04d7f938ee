"""`zscir index`: encode an image folder into a searchable index (resumable, incremental)."""

from __future__ import annotations

import argparse

from zscir.commands.common import check_backbone, check_runtime, existing_folder
from zscir.commands.options import REAL_BACKBONE, add, add_runtime_arguments

HELP = "Index an image folder (recursive jpg/jpeg/png/webp) for `zscir search` / `zscir serve`; reruns add new files."
BACKENDS = ("exact", "flat", "ivf", "hnsw", "ivfpq")  # = zscir.retrieval.index BACKENDS + STREAMED_BACKENDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    add(parser, "images", required=True)
    add(parser, "output-dir", required=True, help="index folder (created; rerun to update it)")
    add(parser, "backbone", default=REAL_BACKBONE)
    parser.add_argument("--backend", choices=BACKENDS, default="exact",
                        help="exact (torch), flat (FAISS exact), ivf or hnsw (FAISS approximate), ivfpq (FAISS IVF-PQ "
                        "on disk for galleries larger than memory, re-ranked exactly) (default exact)")
    parser.add_argument("--memory-budget", default="4GB", metavar="SIZE",
                        help="ivfpq: memory the build and the search may use; picks cells, code size and sample "
                        "(default 4GB)")
    parser.add_argument("--opq", action="store_true", help="ivfpq: OPQ rotation before the product quantizer")
    parser.add_argument("--fast-scan", action="store_true",
                        help="ivfpq: 4-bit fast-scan codes (same bytes per vector, several times faster code scan; "
                        "the codes are held in memory instead of on disk: 10M 768-dim vectors ≈ 1 GB)")
    parser.add_argument("--nlist", type=int, default=None, metavar="N", help="IVF cells (default ≈ 4·sqrt(N))")
    parser.add_argument("--nprobe", type=int, default=8, metavar="N", help="IVF cells visited per query (default 8)")
    parser.add_argument("--hnsw-m", type=int, default=32, metavar="N", help="HNSW neighbours per node (default 32)")
    parser.add_argument("--ef-search", type=int, default=64, metavar="N",
                        help="HNSW candidate list at search time (default 64)")
    parser.add_argument("--chunk-size", type=int, default=256, metavar="N",
                        help="images per chunk file, the unit of resumption (default 256)")
    add(parser, "batch-size", default=32, help="images per forward pass")
    add(parser, "workers", default=4, help="threads decoding images")
    add_runtime_arguments(parser)
    add(parser, "examples", default=5, help="unreadable files listed (the rest are counted)")


def run(args: argparse.Namespace) -> int:
    """Index the folder; print one summary line plus the skipped files. Returns 0."""
    from zscir.models.backbone import Backbone
    from zscir.retrieval.indexer import index_folder
    from zscir.retrieval.shards import process_group

    existing_folder(args.images, "--images")
    check_backbone(args.backbone)
    check_runtime(args.device, args.dtype)
    options = {"ivf": {"nlist": args.nlist, "nprobe": args.nprobe},
               "hnsw": {"m": args.hnsw_m, "ef_search": args.ef_search},
               "ivfpq": {"memory_budget": args.memory_budget, "opq": args.opq, "fast_scan": args.fast_scan},
               }.get(args.backend, {})
    group, device = process_group(args.device)  # under `accelerate launch`: one share of the images each
    backbone = Backbone.load(args.backbone, device=device, dtype=args.dtype, load_text=False)
    report = index_folder(args.images, backbone, args.output_dir, backend=args.backend, chunk_size=args.chunk_size,
                          batch_size=args.batch_size, workers=args.workers, index_options=options, group=group)
    if not group.is_main:
        return 0
    print(report.summary())
    if args.backend == "ivfpq":
        from zscir.retrieval.indexer import read_manifest

        p = read_manifest(args.output_dir)["index_params"]
        print(f"ivfpq: {p['spec']}, nprobe {p['nprobe']}, rerank {p['rerank']}: recall@{p['k']} {p['recall']:.3f} "
              f"against exact search on {p['heldout']} held-out images ({p['latency_ms']} ms per query)")
    for rel, reason in list(report.failed.items())[: args.examples]:
        print(f"skipped {rel}: {reason}")
    if len(report.failed) > args.examples:
        print(f"... and {len(report.failed) - args.examples} more unreadable files (listed in the manifest)")
    return 0
