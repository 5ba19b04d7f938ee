"""`zscir serve`: the search web page and JSON API on an index (default: the synthetic world's gallery)."""

from __future__ import annotations

import argparse

HELP = "Serve a search page + JSON API on an index (no arguments: the synthetic world, after `zscir demo`)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--index", default=None,
                        help="index folder from `zscir index` (default: the synthetic world's gallery, indexed on "
                             "first use)")
    parser.add_argument("--phi", default=None,
                        help="inversion network enabling the Phi method (default with no --index: the world's Phi)")
    parser.add_argument("--text-encoder", default=None, help="fine-tuned text tower (RTD .pt or HF folder)")
    parser.add_argument("--template", default=None, help="prompt template of the Phi method")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--examples", type=int, default=8, help="gallery images offered as examples")
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted. Returns 0."""
    from zscir.search.service import load_service
    from zscir.web.app import serve

    index, phi = args.index, args.phi
    if index is None:
        from zscir.search.defaults import ensure_world_index, world_phi

        index = ensure_world_index()
        if phi is None and world_phi() is not None:
            phi = str(world_phi())
    service = load_service(index, phi=phi, text_encoder=args.text_encoder, template=args.template,
                           device=args.device)
    print(f"serving {service.describe()['count']} images from {service.root} on http://{args.host}:{args.port} "
          f"(methods: {', '.join(service.methods)}; JSON API: POST /api/search)")
    serve(service, host=args.host, port=args.port, examples=args.examples)
    return 0
