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
    parser.add_argument("--generator", default=None,
                        help="CIG: SDXL pipeline folder or hub id; the Phi method then also uses a pseudo target")
    parser.add_argument("--generator-unet", default=None, help="CIG: fine-tuned UNet folder replacing the pipeline's")
    parser.add_argument("--generator-backbone-2", default=None,
                        help="CIG: second text tower (bigG/14 for real SDXL; default: the index's backbone again)")
    parser.add_argument("--generator-phi-2", default=None, help="CIG: Phi of the second tower (default: --phi)")
    parser.add_argument("--generator-steps", type=int, default=50, help="CIG denoising steps (paper: 50)")
    parser.add_argument("--generator-size", type=int, default=512, help="CIG image size (paper: 512)")
    parser.add_argument("--alpha", type=float, default=0.85, help="CIG fusion weight of the reference query")
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
                           device=args.device, alpha=args.alpha)
    if args.generator:
        service.generator = _generator(args, service)
    print(f"serving {service.describe()['count']} images from {service.root} on http://{args.host}:{args.port} "
          f"(methods: {', '.join(service.methods)}; JSON API: POST /api/search)")
    serve(service, host=args.host, port=args.port, examples=args.examples)
    return 0


def _generator(args: argparse.Namespace, service):
    """The CIG pseudo-target generator for the service's backbone + Phi (and an optional second tower)."""
    from zscir.errors import ZscirError
    from zscir.generation.cig import load_generator
    from zscir.generation.conditioning import ComposedConditioner
    from zscir.generation.options import GenerationConfig
    from zscir.search.service import cig_generator

    if service.phi is None:
        raise ZscirError("--generator needs --phi (pseudo targets are generated from Phi's pseudo token)")
    backbone_2, phi_2 = service.backbone, service.phi
    if args.generator_backbone_2:
        from zscir.models.backbone import Backbone
        from zscir.models.phi import check_fits, load_inversion_network

        backbone_2 = Backbone.load(args.generator_backbone_2, device=args.device)
        if not args.generator_phi_2:
            raise ZscirError("--generator-backbone-2 needs --generator-phi-2 (its inversion network)")
        phi_2 = load_inversion_network(args.generator_phi_2, args.device)
        check_fits(phi_2, backbone_2)
    conditioner = ComposedConditioner(service.backbone, service.phi, backbone_2, phi_2, service.template)
    pipe = load_generator(args.generator, unet=args.generator_unet, device=args.device)
    config = GenerationConfig(steps=args.generator_steps, height=args.generator_size, width=args.generator_size)
    return cig_generator(pipe, conditioner, config)
