"""`zscir demo`: the whole pipeline on the synthetic world, printing a real metric table."""

from zscir.commands.options import add

HELP = "build the synthetic world, train tiny CLIP / LinCIR / RTD / SEARLE / CIG on the CPU, evaluate, print a table"
STAGES = ("baselines", "lincir", "rtd", "searle", "cig")


def add_arguments(parser) -> None:
    """Options of the demo."""
    parser.add_argument("--cache-dir", default=None, metavar="DIR",
                        help="cache root (default: $ZSCIR_CACHE or ~/.cache/zscir)")
    add(parser, "output-dir", help="results folder (default: <cache>/demo-results)")
    parser.add_argument("--fast", action="store_true", help="tiny world and seconds-long trainings (smoke test)")
    parser.add_argument("--skip", nargs="*", default=[], choices=STAGES, metavar="STAGE",
                        help="stages to leave out: " + " ".join(STAGES))
    add(parser, "seed", default=0, help="world seed (the first one with --seeds)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="repeat world, training and evaluation over N seeds; report mean ± std per row "
                        "(default 1)")
    parser.add_argument("--train-clip", action="store_true",
                        help="train the world CLIP from scratch here instead of using the shipped weights "
                        "(the base generator is then pretrained here too)")
    parser.add_argument("--train-generator", action="store_true",
                        help="pretrain CIG's base generator here (about 20 min) instead of using the shipped one")


def run(args) -> int:
    """Run the demo."""
    from pathlib import Path

    from zscir.demo.pipeline import DemoConfig, run_demo
    from zscir.models.backbone import library_bars_only_on_a_terminal
    from zscir.registry import default_cache_dir

    config = DemoConfig(cache_dir=Path(args.cache_dir) if args.cache_dir else default_cache_dir(), fast=args.fast,
                        skip=tuple(args.skip), out_dir=Path(args.output_dir) if args.output_dir else None,
                        seed=args.seed, seeds=args.seeds, train_clip=args.train_clip,
                        train_generator=args.train_generator)
    with library_bars_only_on_a_terminal():
        run_demo(config)
    return 0
