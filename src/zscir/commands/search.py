"""`zscir search`: ranked images of an index for a reference image + modifying text."""

from __future__ import annotations

import argparse

from zscir.commands.options import OPTIONS, add

HELP = "Search an index built by `zscir index` with a reference image and a modifying text."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--index", required=True, metavar="DIR", help="index folder written by `zscir index`")
    parser.add_argument("--image", default=None, metavar="FILE", help="reference image file (not needed by --method "
                        "text)")
    parser.add_argument("--text", default=None, metavar="TEXT", help="modifying text, e.g. 'is red and has two dogs'")
    add(parser, "method", default="phi")
    add(parser, "phi")
    add(parser, "text-encoder")
    add(parser, "template", help=OPTIONS["template"].kwargs["help"] + " (default default)")
    parser.add_argument("-k", type=int, default=10, metavar="N", help="number of results (default 10)")
    parser.add_argument("--keep-reference", action="store_true",
                        help="keep the reference image itself among the hits (by default it is left out, as on the "
                        "web page and in CIRR's protocol)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add(parser, "device", default="cpu")


def run(args: argparse.Namespace) -> int:
    """Print the ranked hits (rank, score, path) or JSON. Returns 0."""
    import json

    from zscir.errors import ZscirError
    from zscir.retrieval.service import check_caption, load_service, open_reference

    if args.method == "phi" and not args.phi:
        raise ZscirError("--method phi needs --phi PATH (an inversion network); or use --method image, text or sum")
    if args.method != "text" and not args.image:
        raise ZscirError(f"--method {args.method} needs --image REF")
    # bad input fails here, before any model is loaded
    from zscir.commands.common import check_model_source, check_phi_source, existing_folder

    existing_folder(args.index, "--index")
    check_phi_source(args.phi, "--phi")
    check_model_source(args.text_encoder, "--text-encoder")
    reference = open_reference(args.image) if args.method != "text" else None
    if args.method != "image":
        check_caption(args.text)
    service = load_service(args.index, phi=args.phi if args.method == "phi" else None,
                           text_encoder=args.text_encoder, template=args.template, device=args.device)
    hits = service.search(reference, args.text, method=args.method, k=args.k,
                          exclude_reference=not args.keep_reference)
    if args.json:
        print(json.dumps({"index": str(service.index_dir), "method": args.method, "image": args.image,
                          "text": args.text, "hits": [h.to_dict() for h in hits]}, indent=2))
    else:
        for hit in hits:
            print(f"{hit.rank:>4}  {hit.score:+.4f}  {hit.path}")
    return 0
