"""`zscir train-clip`: train the synthetic world's CLIP from scratch (the recipe of the shipped weights).

The demo ships this CLIP as package data (`zscir/demo/world_clip`), as real CIR starts from a
pretrained CLIP; this command (or `zscir demo --train-clip`) retrains it from scratch:
    zscir train-clip --out runs/world-clip              # the shipped recipe
    zscir train-clip --out runs/short --steps 100       # a shorter run of the same recipe
    zscir train-clip --out runs/composed --composed-fraction 0.2 --attribute-fraction 0.3 --context-length 64
    zscir train-clip --out runs/both --phase-one runs/first   # runs/first: trained with --continue-steps 0
The recipe has two phases: 600 steps from scratch, then 300 steps of continued pretraining on a mix with
composed texts (`--continue-*`); `zscir/demo/world_models.py` says why.
"""

from zscir.commands.options import add

HELP = "train the synthetic world's tiny CLIP from scratch (the recipe of the weights the demo ships)"


def add_arguments(parser) -> None:
    """Options of `zscir train-clip`."""
    add(parser, "output-dir", required=True, help="output folder (a CLIP folder loadable as --backbone)")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="training steps (default: the shipped recipe's)")
    add(parser, "batch-size", help="pairs per step (default: the recipe's)")
    add(parser, "seed", help="initialisation and data seed (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads (default: torch's choice)")
    for prefix, phase in (("", "the first phase (default: the recipe's)"), ("continue-", "the second phase")):
        parser.add_argument(f"--{prefix}composed-fraction", type=float, default=None, metavar="F",
                            help="share of composed pretraining texts ('{reference caption}, but {change}' with the "
                                 f"edited image) in {phase}")
        parser.add_argument(f"--{prefix}attribute-fraction", type=float, default=None, metavar="F",
                            help=f"share of relative captions worded as FashionIQ's statements in {phase}")
    parser.add_argument("--context-length", type=int, default=None, metavar="N",
                        help="text context in tokens (default: the recipe's; composed texts need 64)")
    parser.add_argument("--continue-steps", type=int, default=None, metavar="N",
                        help="a second phase of N steps (continued pretraining at the recipe's continue_lr; "
                        "default: the recipe's)")
    parser.add_argument("--phase-one", default=None, metavar="DIR",
                        help="a folder this command trained with the same first phase: load it instead of "
                        "training the first phase again (the result is the same)")
    parser.add_argument("--fp16", action="store_true", help="store the weights in fp16 (how they are shipped)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Train, save, and print the held-out geometry and retrieval of the result."""
    import json
    from dataclasses import replace
    from pathlib import Path

    from zscir.demo.calibration import heldout_pairs, modality_geometry
    from zscir.demo.world_models import default_clip_config, train_world_clip
    from zscir.errors import ZscirError
    from zscir.models.backbone import Backbone

    config = default_clip_config()
    changes = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("seed", args.seed),
                                 ("threads", args.threads)) if v is not None}
    if any(v is not None and v < 1 for k, v in changes.items() if k != "seed"):
        raise ZscirError("--steps, --batch-size and --threads must be at least 1")
    data, later = ({k: v for k, v in (("composed_fraction", getattr(args, f"{prefix}composed_fraction")),
                                      ("attribute_fraction", getattr(args, f"{prefix}attribute_fraction")))
                    if v is not None} for prefix in ("", "continue_"))
    if any(not 0 <= v <= 1 for v in (*data.values(), *later.values())):
        raise ZscirError("the --*composed-fraction and --*attribute-fraction shares must be between 0 and 1")
    if args.context_length is not None:
        if args.context_length < 8:
            raise ZscirError("--context-length must be at least 8")
        changes["size"] = replace(config.size, context_length=args.context_length)
    if args.continue_steps is not None:
        if args.continue_steps < 0:
            raise ZscirError("--continue-steps must be at least 0")
        changes["continue_steps"] = args.continue_steps
    config = replace(config, **changes, data={**config.data, **data}, continue_data={**config.continue_data, **later})
    if args.phase_one is not None and not (Path(args.phase_one) / "train_log.json").is_file():
        raise ZscirError(f"--phase-one {args.phase_one}: no train_log.json there (not a folder of this command)")
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()):
        raise ZscirError(f"{out}: folder exists and is not empty; choose a new folder")
    train_world_clip(out, config, progress=not args.no_progress,
                     phase_one=Path(args.phase_one) if args.phase_one else None)
    if args.fp16:
        from zscir.models.factory import save_weights_fp16

        save_weights_fp16(out)
    backbone = Backbone.load(str(out))
    images, captions = heldout_pairs(config.size.image_size)
    geometry = modality_geometry(backbone.encode_image(images, batch_size=256), backbone.encode_text(captions))
    (out / "heldout_geometry.json").write_text(json.dumps(geometry, indent=2))
    print(json.dumps(geometry))
    return 0
