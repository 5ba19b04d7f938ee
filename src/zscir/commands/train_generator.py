"""`zscir train-generator`: fine-tune the CIG generator's UNet to reconstruct images from "a photo of $".

Example (synthetic world):
    zscir train-generator --generator world/tiny-sdxl --backbone synthetic-clip --phi world/phi \
        --root world/cirr --dataset cirr --split train --output-dir runs/generator --max-steps 500 --cpu
Real SDXL: --backbone ViT-L/14 --phi phi_L.pt --backbone-2 bigG/14 --phi-2 phi_G.pt on GPUs
(`accelerate launch -m zscir.cli train-generator ...`).
"""

from __future__ import annotations

HELP = "fine-tune the CIG generator UNet on 'a photo of $' conditionings of its own images (accelerate loop)"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def add_arguments(parser) -> None:
    """Options of `zscir train-generator`."""
    from zscir.training.config import add_config_arguments
    from zscir.training.generator_config import GeneratorTrainConfig

    data = parser.add_argument_group("training images (a folder, or every image of a benchmark split)")
    data.add_argument("--images", help="folder of training images (searched recursively)")
    data.add_argument("--dataset", help="cirr | fashioniq | circo: train on the images of --root/--split")
    data.add_argument("--root", help="dataset folder")
    data.add_argument("--split", default="train", help="split whose images are used (default: train)")
    cond = parser.add_argument_group("conditioning (frozen)")
    cond.add_argument("--backbone", default="synthetic-clip", help="tower 1 (ViT-L/14 for SDXL)")
    cond.add_argument("--phi", required=True, help="inversion network of tower 1")
    cond.add_argument("--backbone-2", help="tower 2 (bigG/14 for SDXL); default: tower 1 again")
    cond.add_argument("--phi-2", help="inversion network of tower 2; default: --phi")
    cond.add_argument("--unet", help="start from this UNet folder instead of the generator's")
    cond.add_argument("--device", default=None, help="device of the frozen towers (default: cuda if available)")
    cond.add_argument("--dtype", default="fp32", help="dtype of the frozen towers (fp32 | fp16 | bf16)")
    add_config_arguments(parser, GeneratorTrainConfig)


def training_images(args) -> list:
    """The image files named by --images or --dataset/--root/--split."""
    from pathlib import Path

    from zscir.errors import ZscirError

    if bool(args.images) == bool(args.dataset):
        raise ZscirError("give either --images DIR or --dataset/--root/--split")
    if args.images:
        folder = Path(args.images)
        if not folder.is_dir():
            raise ZscirError(f"--images {folder}: no such folder")
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not paths:
            raise ZscirError(f"--images {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        return paths
    if not args.root:
        raise ZscirError("--dataset needs --root")
    from zscir.data.records import load_benchmark

    paths = []
    for split in load_benchmark(args.dataset, args.root, args.split):
        paths += split.image_paths()
    return list(dict.fromkeys(paths))


def run(args) -> int:
    """Build the conditioner, train, print where the UNet went."""
    import torch

    from zscir.commands.generate import build_conditioner
    from zscir.training.config import config_from_args
    from zscir.training.generator import train_generator
    from zscir.training.generator_config import GeneratorTrainConfig

    config = config_from_args(GeneratorTrainConfig, args)
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not config.cpu else "cpu")
    args.template = config.template
    paths = training_images(args)
    conditioner = build_conditioner(args)
    result = train_generator(config, conditioner, paths, args.unet)
    print(f"trained {result.steps} steps on {len(paths)} images, last loss {result.last_loss:.4g}; "
          f"UNet: {result.final_dir / 'unet'} (zscir generate --unet {result.final_dir})")
    return 0
