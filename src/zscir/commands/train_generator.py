"""`zscir train-generator`: fine-tune the CIG generator's UNet to reconstruct images from "a photo of $".

Example (synthetic world):
    zscir train-generator --generator world/tiny-sdxl --backbone synthetic-clip --phi world/phi \
        --root world/cirr --dataset cirr --split train --output-dir runs/generator --max-steps 500 --cpu
Real SDXL: --backbone ViT-L/14 --phi phi_L.pt --backbone-2 bigG/14 --phi-2 phi_G.pt on GPUs
(`accelerate launch -m zscir.cli train-generator ...`).
"""

from __future__ import annotations

from zscir.commands.common import (
    apply_recipe,
    build_conditioner,
    check_conditioner,
    check_training,
    config_from_args,
    existing_folder,
    print_config,
)
from zscir.commands.options import (
    add,
    add_conditioner_arguments,
    add_config_arguments,
    add_recipe_arguments,
    add_runtime_arguments,
)
from zscir.data.images import IMAGE_EXTENSIONS, list_images
from zscir.errors import ZscirError
from zscir.training.config import GeneratorTrainConfig

HELP = "fine-tune the CIG generator UNet on 'a photo of $' conditionings of its own images (accelerate loop)"


def add_arguments(parser) -> None:
    """Options of `zscir train-generator`."""
    add_recipe_arguments(parser, "train-generator")
    data = parser.add_argument_group("training images (a folder, or every image of a benchmark split)")
    add(data, "images")
    add(data, "dataset", help="train on the images of --root/--split of this benchmark")
    add(data, "root")
    add(data, "split", default="train", help="split whose images are used")
    cond = parser.add_argument_group("conditioning (frozen)")
    add_conditioner_arguments(cond, phi_required=True)
    add(cond, "unet", help="start from this UNet folder instead of the generator's")
    add_runtime_arguments(cond, device=None)
    add_config_arguments(parser, GeneratorTrainConfig)


def training_images(args) -> list:
    """The image files named by --images or --dataset/--root/--split."""
    if bool(args.images) == bool(args.dataset):
        raise ZscirError("give either --images DIR or --dataset/--root/--split")
    if args.images:
        folder = existing_folder(args.images, "--images")
        paths = sorted(folder / rel for rel in list_images(folder))
        if not paths:
            raise ZscirError(f"--images {folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return paths
    if not args.root:
        raise ZscirError("--dataset needs --root")
    existing_folder(args.root, "--root")
    from zscir.data.records import load_benchmark

    paths = []
    for split in load_benchmark(args.dataset, args.root, args.split):
        paths += split.image_paths()
    return list(dict.fromkeys(paths))


def run(args) -> int:
    """Build the conditioner, train, print where the UNet went."""
    import torch

    from zscir.training.generator import train_generator

    apply_recipe(args, "train-generator")
    config = config_from_args(GeneratorTrainConfig, args)
    if args.print_config:
        return print_config(args, "train-generator", config.to_dict())
    # every flag and path before a model is loaded
    check_conditioner(args)
    check_training(config, args.device, args.dtype)
    paths = training_images(args)
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not config.cpu else "cpu")
    conditioner = build_conditioner(args, config.template)
    result = train_generator(config, conditioner, paths, args.unet)
    print(f"trained {result.steps} steps on {len(paths)} images, last loss {result.last_loss:.4g}; "
          f"UNet: {result.final_dir / 'unet'} (zscir generate --unet {result.final_dir})")
    return 0
