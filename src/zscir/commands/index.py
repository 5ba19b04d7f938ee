"""`zscir index`: encode an image folder into a searchable index (resumable, incremental)."""

from __future__ import annotations

import argparse

HELP = "Index an image folder (recursive jpg/jpeg/png/webp) for `zscir search` / `zscir serve`; reruns add new files."
BACKENDS = ("exact", "flat", "ivf", "hnsw")  # = zscir.retrieval.index.BACKENDS (kept light for --help)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--images", required=True, help="folder of images (scanned recursively)")
    parser.add_argument("--out", required=True, help="index folder (created; rerun to update it)")
    parser.add_argument("--backbone", default="synthetic-clip",
                        help="registered name, hub id or local CLIP folder (default: synthetic-clip)")
    parser.add_argument("--backend", choices=BACKENDS, default="exact",
                        help="exact (torch), flat (FAISS exact), ivf or hnsw (FAISS approximate); default exact")
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default ≈ 4·sqrt(N))")
    parser.add_argument("--nprobe", type=int, default=8, help="IVF cells visited per query")
    parser.add_argument("--hnsw-m", type=int, default=32, help="HNSW neighbours per node")
    parser.add_argument("--ef-search", type=int, default=64, help="HNSW candidate list at search time")
    parser.add_argument("--chunk-size", type=int, default=256, help="images per chunk file (unit of resumption)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=4, help="threads decoding images")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--examples", type=int, default=5, help="unreadable files listed (the rest are counted)")


def run(args: argparse.Namespace) -> int:
    """Index the folder; print one summary line plus the skipped files. Returns 0."""
    from zscir.models.backbone import Backbone
    from zscir.search.indexer import index_folder

    options = {"ivf": {"nlist": args.nlist, "nprobe": args.nprobe},
               "hnsw": {"m": args.hnsw_m, "ef_search": args.ef_search}}.get(args.backend, {})
    backbone = Backbone.load(args.backbone, device=args.device, dtype=args.dtype, load_text=False)
    report = index_folder(args.images, backbone, args.out, backend=args.backend, chunk_size=args.chunk_size,
                          batch_size=args.batch_size, workers=args.workers, index_options=options)
    print(report.summary())
    for rel, reason in list(report.failed.items())[: args.examples]:
        print(f"skipped {rel}: {reason}")
    if len(report.failed) > args.examples:
        print(f"... and {len(report.failed) - args.examples} more unreadable files (listed in the manifest)")
    return 0
