"""`zscir serve`: the search web page and JSON API on an index (default: the synthetic world's gallery)."""

from __future__ import annotations

import argparse

from zscir.commands.options import NETWORK_TEMPLATE, OPTIONS, add, add_hidden_alias
from zscir.recipes import DEFAULT_ALPHA
from zscir.web.limits import MiB, ServerLimits

HELP = "Serve a search page + JSON API on an index (no arguments: the synthetic world, after `zscir demo`)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--index", default=None, metavar="DIR",
                        help="index folder from `zscir index` (default: the synthetic world's gallery, indexed on "
                             "first use)")
    add(parser, "phi", help="inversion network enabling the Phi method (default with no --index: the world's Phi)")
    add(parser, "text-encoder")
    add(parser, "template", help=OPTIONS["template"].kwargs["help"] + NETWORK_TEMPLATE)
    cig = parser.add_argument_group("CIG pseudo targets (the Phi method then also uses a generated image)")
    add(cig, "generator")
    add(cig, "unet")
    add(cig, "backbone-2", help="second text tower (bigG/14 for real SDXL; default: the index's backbone again)")
    add(cig, "phi-2", help="inversion network of the second tower (needed with --backbone-2)")
    add(cig, "tokenizer-padding")
    cig.add_argument("--steps", "--generator-steps", type=int, default=50, metavar="N",
                     help="denoising steps (default 50, the paper's)")
    cig.add_argument("--size", "--generator-size", type=int, default=512, metavar="N",
                     help="image side in pixels (default 512, the paper's)")
    add_hidden_alias(cig._group_actions[-2], "--generator-steps")
    add_hidden_alias(cig._group_actions[-1], "--generator-size")
    add(cig, "alpha", help="fusion weight of the reference query, 1 = plain (default: zscir.recipes.DEFAULT_ALPHA, "
        f"the CIRR val value {DEFAULT_ALPHA:g}: an index is no benchmark split)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, metavar="N", help="(default 7860)")
    add(parser, "examples", default=8, help="gallery images offered as examples")
    limits = ServerLimits()
    parser.add_argument("--max-body-mb", type=float, default=limits.max_body_bytes / MiB,
                        help="largest request body in MiB (413 above; default %(default)g)")
    parser.add_argument("--max-upload-mb", type=float, default=limits.max_upload_bytes / MiB,
                        help="largest image upload in MiB (413 above; default %(default)g)")
    parser.add_argument("--max-megapixels", type=float, default=limits.max_pixels / 1e6,
                        help="largest decoded image in megapixels (400 above, checked before decoding; "
                             "default %(default)g)")
    parser.add_argument("--workers", type=int, default=limits.workers, metavar="N",
                        help="threads running searches; image searches use at most workers-1 of them so text "
                             "searches never wait behind a decode (default %(default)s)")
    add(parser, "device", default="cpu")


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted. Returns 0."""
    from zscir.retrieval.service import load_service
    from zscir.web.app import serve

    limits = ServerLimits(max_body_bytes=int(args.max_body_mb * MiB), max_upload_bytes=int(args.max_upload_mb * MiB),
                          max_pixels=int(args.max_megapixels * 1e6), workers=args.workers)
    index, phi, notice = args.index, args.phi, None
    if index is None:
        from zscir.demo.world_index import FAST_NOTICE, ensure_world_index, is_fast, served_world, world_phi

        world = served_world()
        index = ensure_world_index(world)
        if phi is None and world_phi(world) is not None:
            phi = str(world_phi(world))
        if is_fast(world):
            notice = FAST_NOTICE
            print(f"note: {FAST_NOTICE}")
    service = load_service(index, phi=phi, text_encoder=args.text_encoder, template=args.template,
                           device=args.device, alpha=args.alpha)
    if args.generator:
        service.generator = _generator(args, service)
    print(f"serving {service.describe()['count']} images from {service.root} on http://{args.host}:{args.port} "
          f"(methods: {', '.join(service.methods)}; JSON API: POST /api/search)")
    serve(service, host=args.host, port=args.port, examples=args.examples, limits=limits, notice=notice)
    return 0


def _generator(args: argparse.Namespace, service):
    """The CIG pseudo-target generator for the service's backbone + Phi (and an optional second tower)."""
    from zscir.commands.common import conditioner_pad_id
    from zscir.errors import ZscirError
    from zscir.generation.cig import load_generator
    from zscir.generation.conditioning import build_composed_conditioner
    from zscir.generation.options import GenerationConfig
    from zscir.retrieval.service import cig_generator

    if service.phi is None:
        raise ZscirError("--generator needs --phi (pseudo targets are generated from Phi's pseudo token)")
    if args.backbone_2 and not args.phi_2:
        raise ZscirError("--backbone-2 needs --phi-2 (its inversion network)")
    conditioner = build_composed_conditioner(service.backbone, service.phi, args.backbone_2, args.phi_2,
                                             service.template.text, device=args.device,
                                             pad_id=conditioner_pad_id(args))
    pipe = load_generator(args.generator, unet=args.unet, device=args.device)
    config = GenerationConfig(steps=args.steps, height=args.size, width=args.size)
    return cig_generator(pipe, conditioner, config)
