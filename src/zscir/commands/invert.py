"""`zscir invert`: SEARLE's optimisation-based textual inversion (OTI) of a set of images, resumable.

The output folder (a `TokenStore`) holds one EMA pseudo token per image with its image embedding;
`zscir train-phi --method searle --tokens FOLDER` distils a Phi from it, and `oti_pseudo_tokens`
uses the same machinery as the retrieval method "SEARLE-OTI". Under `accelerate launch` the image
encoding and the optimisation are both sharded (`zscir.oti.store.invert_to_store`):

    accelerate launch --num_processes 8 -m zscir.cli invert --images DIR --output-dir TOKENS ... --device cuda
"""

from __future__ import annotations

import argparse

from zscir.commands.common import (
    apply_recipe,
    check_backbone,
    check_concepts,
    check_runtime,
    concept_bank_from_args,
    existing_folder,
    print_config,
    require_options,
)
from zscir.commands.options import (
    OPTIONS,
    TEMPLATES_PLACEHOLDER,
    add,
    add_concept_arguments,
    add_recipe_arguments,
    add_runtime_arguments,
)
from zscir.data.images import list_images
from zscir.errors import ZscirError

# = the defaults of zscir.oti.optimise.OTIConfig (SEARLE's recipe), shown in --help without importing torch;
# the flags default to None so that --recipe can tell what the command line set
OTI_DEFAULTS = dict(steps=350, lr=2e-2, weight_decay=0.01, ema_decay=0.99, image_weight=1.0, phrase_weight=0.5,
                    top_k=15, template="palavra", init_std=None, seed=0, batch_size=32)

HELP = "SEARLE OTI: optimise one pseudo token per image (resumable; feeds `train-phi --method searle`)."

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    add_recipe_arguments(parser, "invert")
    add(parser, "backbone", help=OPTIONS["backbone"].kwargs["help"] + " (required unless --recipe sets it)")
    add(parser, "output-dir", required=True, help="token folder (rerun the same command to resume)")
    source = parser.add_argument_group("images (a benchmark split or a folder)")
    add(source, "dataset")
    add(source, "root", help="the dataset folder (with --dataset)")
    add(source, "split", default="val")
    source.add_argument("--all-images", action="store_true",
                        help="invert every image of the split (default: only the queries' reference images)")
    add(source, "images", help="a folder: invert every image file under it instead")
    add(source, "limit", help="only the first N images (for trials)")
    add_concept_arguments(parser)
    d = OTI_DEFAULTS
    oti = parser.add_argument_group("OTI recipe (defaults: the SEARLE paper)")
    oti.add_argument("--steps", type=int, metavar="N", help=f"optimisation steps per image (default {d['steps']})")
    oti.add_argument("--lr", type=float, metavar="X", help=f"AdamW learning rate (default {d['lr']})")
    oti.add_argument("--weight-decay", type=float, metavar="X",
                     help=f"AdamW weight decay (default {d['weight_decay']})")
    oti.add_argument("--ema-decay", type=float, metavar="X",
                     help=f"EMA decay of the output token (default {d['ema_decay']})")
    oti.add_argument("--image-weight", type=float, metavar="X",
                     help=f"weight of the image loss (default {d['image_weight']})")
    oti.add_argument("--phrase-weight", type=float, metavar="X",
                     help=f"0 = image loss only, no concepts needed (default {d['phrase_weight']})")
    oti.add_argument("--top-k", type=int, metavar="N", help=f"concepts per image (default {d['top_k']})")
    oti.add_argument("--init-std", type=float, metavar="X",
                     help="std of the initial token (default: the token-embedding table's; SEARLE: 0.02)")
    add(oti, "template", help="prompt(s) of the image loss: 'palavra' (default: SEARLE's 24 templates, one drawn "
        "per image and step), or one fixed prompt: " + TEMPLATES_PLACEHOLDER + " or a text with $")
    add(oti, "seed", help=f"base seed of the per-image streams (default {d['seed']})")
    add(oti, "batch-size", help=f"images optimised together, same result (default {d['batch_size']})")
    parser.add_argument("--chunk-size", type=int, default=256, metavar="N",
                        help="images per saved chunk, the unit of resumption (default 256)")
    add(parser, "target-pad")
    add_runtime_arguments(parser)
    add(parser, "cache-dir")


def images_from_args(args: argparse.Namespace) -> dict:
    """{name: path} of the images to invert, in a fixed order."""
    if (args.images is None) == (args.dataset is None):
        raise ZscirError("give either --images FOLDER or --dataset NAME --root FOLDER")
    if args.images is not None:
        root = existing_folder(args.images, "--images")
        files = sorted(root / rel for rel in list_images(root))
        images = {str(p.relative_to(root)): p for p in files}
    else:
        if args.root is None:
            raise ZscirError("--dataset needs --root (the dataset folder)")
        existing_folder(args.root, "--root")
        from zscir.data.records import load_benchmark

        images = {}
        for unit in load_benchmark(args.dataset, args.root, args.split):
            names = unit.images if args.all_images else dict.fromkeys(q.reference for q in unit.queries)
            images.update({n: unit.images[n] for n in names})
    if args.limit is not None:
        images = dict(list(images.items())[: args.limit])
    if not images:
        raise ZscirError("no images to invert")
    return images


def run(args: argparse.Namespace) -> int:
    """Invert the images not yet in --output-dir; print a one-line summary."""
    import dataclasses
    from pathlib import Path

    from zscir.compose import TEMPLATES
    from zscir.errors import DataError
    from zscir.models.backbone import Backbone
    from zscir.oti.optimise import OTIConfig
    from zscir.oti.store import features_key, invert_to_store
    from zscir.retrieval.features import FeatureCache
    from zscir.retrieval.shards import process_group

    apply_recipe(args, "invert")
    given = {name: getattr(args, name) for name in OTI_DEFAULTS if getattr(args, name) is not None}
    if "template" in given:
        given["template"] = TEMPLATES.get(given["template"], given["template"])
    config = OTIConfig(**given)
    config.check()
    if args.print_config:
        return print_config(args, "invert", dataclasses.asdict(config))
    require_options(args, "backbone")
    # every flag and path before any image is encoded
    check_backbone(args.backbone)
    check_runtime(args.device, args.dtype)
    check_concepts(args, config.phrase_weight)
    images = images_from_args(args)
    group, device = process_group(args.device)  # under `accelerate launch`: encoding and OTI are sharded
    backbone = Backbone.load(args.backbone, device=device, dtype=args.dtype)
    pad = 1.25 if args.target_pad else None
    feats = FeatureCache(args.cache_dir, group=group).image_features(backbone, images, pad, desc="OTI image features")
    if feats.failed:
        name, reason = next(iter(feats.failed.items()))
        raise DataError(f"{len(feats.failed)} image(s) could not be encoded, e.g. {name}: {reason}")
    out = Path(args.output_dir)
    bank = None
    if config.phrase_weight > 0:  # the main process generates and saves the phrases; the others read them
        if group.is_main:
            bank = concept_bank_from_args(backbone, args, save_to=out / "phrases.json")
        group.barrier()
        if not group.is_main:
            bank = concept_bank_from_args(backbone, args, save_to=out / "phrases.json", quiet=True)
    names = list(images)
    store = invert_to_store(backbone, names, feats.features, bank, config, out, args.chunk_size,
                            features_key=features_key(backbone, pad), group=group)
    shares = group.gather(store.inverted)
    if group.is_main:
        by = f" by {group.world} processes ({' + '.join(map(str, shares))})" if group.world > 1 else ""
        print(f"OTI: {len(names)} images, {sum(shares)} inverted now{by}, {len(store.index())} tokens in {out}")
    return 0
