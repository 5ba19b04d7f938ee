"""`zscir train-world-generator`: pretrain the synthetic world's base generator (the recipe of the shipped one).

The demo ships a tiny SDXL base (VAE + UNet pretrained on world scenes with their captions) as
package data (`zscir/demo/world_generator`), as real CIG starts from a pretrained SDXL; this command
(or `zscir demo --train-generator`) pretrains it from scratch:
    zscir train-world-generator --output-dir runs/world-generator                  # the shipped recipe
    zscir train-world-generator --output-dir runs/short --unet-steps 300 --vae-steps 300
    zscir train-world-generator --output-dir runs/mine --clip runs/world-clip      # for a CLIP of train-clip
"""

from zscir.commands.options import add

HELP = "pretrain the synthetic world's base generator for CIG (the recipe of the one the demo ships)"


def add_arguments(parser) -> None:
    """Options of `zscir train-world-generator`."""
    add(parser, "output-dir", required=True, help="output folder (vae/, unet/, base_generator.json)")
    parser.add_argument("--clip", default=None, metavar="DIR",
                        help="world CLIP folder whose text tower conditions the generator (default: the shipped "
                        "world CLIP, unpacked into the zscir cache)")
    for name, what in (("scenes", "world scenes to pretrain on"), ("vae-steps", "VAE training steps"),
                       ("unet-steps", "UNet training steps")):
        parser.add_argument(f"--{name}", type=int, default=None, metavar="N", help=f"{what} (default: the recipe's)")
    add(parser, "seed", help="scenes, initialisation and training seed (default: the recipe's)")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="torch CPU threads (default 1: tiny models run fastest on one thread)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    """Pretrain and print the training report."""
    import json
    from dataclasses import replace
    from pathlib import Path

    import torch

    from zscir.demo.world_generator import BASE_LOG, GeneratorBaseRecipe, train_generator_base
    from zscir.demo.world_models import world_clip
    from zscir.errors import ZscirError
    from zscir.models.backbone import Backbone
    from zscir.registry import default_cache_dir

    changes = {k: v for k, v in (("images", args.scenes), ("vae_steps", args.vae_steps),
                                 ("unet_steps", args.unet_steps), ("seed", args.seed)) if v is not None}
    if any(v < 1 for k, v in changes.items() if k != "seed") or args.threads < 1:
        raise ZscirError("--scenes, --vae-steps, --unet-steps and --threads must be at least 1")
    out = Path(args.output_dir)
    if out.exists() and any(out.iterdir()):
        raise ZscirError(f"{out}: folder exists and is not empty; choose a new folder")
    clip_dir = Path(args.clip) if args.clip else world_clip(default_cache_dir(), progress=False)[0]
    torch.set_num_threads(args.threads)
    recipe = replace(GeneratorBaseRecipe(), **changes)
    train_generator_base(out, Backbone.load(str(clip_dir)), recipe, progress=not args.no_progress)
    print(json.dumps(json.loads((out / BASE_LOG).read_text())["report"]))
    return 0
