"""`zscir evaluate`: one method on a benchmark's val split; metrics JSON + resolved config + a table."""

from __future__ import annotations

import argparse

HELP = "Evaluate a method (image, text, sum, phi) on CIRR, FashionIQ or CIRCO; write metrics and config."

METHOD_NAMES = ("image", "text", "sum", "phi")  # = zscir.evaluation.runner.METHODS (kept light for --help)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `evaluate` and `submit`: data, backbone, method, features."""
    parser.add_argument("--root", required=True, help="the dataset folder")
    parser.add_argument("--backbone", required=True, help="registered name, hub id or local CLIP folder")
    parser.add_argument("--method", choices=METHOD_NAMES, default="phi", help="how queries are built (default: phi)")
    parser.add_argument("--phi", default=None, help="inversion network: SEARLE/LinCIR {'Phi'} file, Pic2Word "
                        "checkpoint or zscir folder (needed by --method phi)")
    parser.add_argument("--text-encoder", default=None, help="fine-tuned text tower (RTD .pt file or HF folder)")
    parser.add_argument("--template", default="default", help="prompt template name or text with $ and {caption}")
    parser.add_argument("--target-pad", action="store_true", help="SEARLE's target-pad preprocessing (ratio 1.25)")
    parser.add_argument("--circo-text", choices=("caption", "concept"), default="caption",
                        help="CIRCO query text: the caption, or 'find {shared_concept} but {caption}'")
    parser.add_argument("--caption-cleaning", choices=("official", "strip"), default="official",
                        help="official (default): FashionIQ captions stripped of '.?, ' at both ends, CIRR and "
                        "CIRCO captions as written; strip: every caption loses surrounding spaces and trailing "
                        "'.?, ' (zscir 0.1)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="evaluate without missing/undecodable images (reports how many queries were dropped)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (text: 4x)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: $ZSCIR_CACHE/features)")
    parser.add_argument("--no-cache", action="store_true", help="keep no features on disk")
    parser.add_argument("--hash-images", action="store_true",
                        help="key cached features by each image's SHA-256 (default: its size and modification times)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--dataset", required=True, choices=("cirr", "fashioniq", "circo"))
    parser.add_argument("--split", default="val", help="split to evaluate (default: val)")
    parser.add_argument("--categories", nargs="+", default=None, help="FashionIQ categories (default: all three)")
    add_model_arguments(parser)
    parser.add_argument("--out", default=None,
                        help="folder for metrics.json and config.json "
                        "(default: runs/evaluate/<dataset>-<split>-<method>)")
    cig = parser.add_argument_group("CIG pseudo targets (method phi; see zscir.generation.fusion)")
    cig.add_argument("--pseudo-targets", default=None, metavar="DIR",
                     help="folder written by `zscir generate`: fuse each query with its pseudo target's query")
    cig.add_argument("--alpha", type=float, default=0.85,  # = zscir.generation.fusion.DEFAULT_ALPHA (light --help)
                     help="weight of the reference query: q = norm(a*f_ref + (1-a)*f_gen) (default 0.85; 1 = plain)")
    cig.add_argument("--alpha-sweep", type=float, nargs="*", default=None, metavar="A",
                     help="also print metrics for each alpha (no values: 0.50..1.00 by 0.05); choose on val")


def load_models(args: argparse.Namespace):
    """(backbone with the text tower swapped in if given, phi or None) from the parsed arguments."""
    from zscir.errors import ZscirError
    from zscir.models.backbone import Backbone
    from zscir.models.phi import check_fits, load_inversion_network

    if args.method == "phi" and not args.phi:
        raise ZscirError("--method phi needs --phi PATH (a SEARLE/LinCIR/Pic2Word checkpoint or zscir folder)")
    if args.text_encoder and args.method == "image":
        raise ZscirError("--text-encoder has no effect with --method image (no text is encoded)")
    backbone = Backbone.load(args.backbone, device=args.device, dtype=args.dtype)
    if args.text_encoder:
        from zscir.models.text_tower import load_text_tower

        backbone = backbone.with_text_tower(load_text_tower(args.text_encoder, like=backbone.text))
    phi = None
    if args.method == "phi":
        phi = load_inversion_network(args.phi, device=args.device)
        check_fits(phi, backbone)
    return backbone, phi


def evaluate_from_args(args: argparse.Namespace):
    """Load data and models and run the evaluation; returns {split name: EvalResult}."""
    from zscir.data.records import load_benchmark
    from zscir.evaluation.runner import evaluate_splits
    from zscir.retrieval.features import FeatureCache

    splits = load_benchmark(args.dataset, args.root, args.split, categories=getattr(args, "categories", None),
                            caption_cleaning=getattr(args, "caption_cleaning", "official"))
    backbone, phi = load_models(args)
    cache = FeatureCache(args.cache_dir, enabled=not args.no_cache)
    options = dict(pad_to_ratio=1.25 if args.target_pad else None, circo_text=args.circo_text,
                   skip_missing=args.skip_missing, batch_size=args.batch_size)
    if getattr(args, "pseudo_targets", None):
        from zscir.errors import ZscirError
        from zscir.generation.fusion import DEFAULT_SWEEP, evaluate_cig

        if args.method != "phi":
            raise ZscirError("--pseudo-targets needs --method phi (the pseudo target is inverted by the same Phi)")
        sweep = None if args.alpha_sweep is None else (args.alpha_sweep or DEFAULT_SWEEP)
        return evaluate_cig(splits, backbone, phi, cache, options, args.pseudo_targets, args.alpha, sweep,
                            template=args.template)
    return evaluate_splits(backbone, splits, args.method, cache, options, phi=phi, template=args.template)


def resolved_config(args: argparse.Namespace) -> dict:
    """All arguments as JSON-ready data (plus the zscir version)."""
    from zscir import __version__

    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    config["zscir_version"] = __version__
    return config


def dropped_note(results) -> list[str]:
    """Lines saying how many queries / images were left out (never a silent partial metric)."""
    return [f"{name}: evaluated {len(r.split.queries)} of {len(r.split.queries) + r.dropped_queries} queries "
            f"({r.dropped_queries} dropped; {r.dropped_images} gallery images missing or undecodable)"
            for name, r in results.items() if r.dropped_queries or r.dropped_images]


def empty_caption_notes(results) -> list[str]:
    """Lines counting the queries with an empty caption (composed as written, never dropped)."""
    return [note for r in results.values() if (note := r.split.empty_caption_note())]


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, write `config.json` and `metrics.json` into the output folder."""
    from pathlib import Path

    from zscir.errors import ZscirError
    from zscir.evaluation.runner import format_table, summary_metrics
    from zscir.utils.io import write_json_atomic

    out = Path(args.out or f"runs/evaluate/{args.dataset}-{args.split}-{args.method}")
    (out / "metrics.json").unlink(missing_ok=True)  # never leave an older run's metrics beside this config
    write_json_atomic(out / "config.json", resolved_config(args))
    results = evaluate_from_args(args)
    table = summary_metrics(results)
    if not table:
        raise ZscirError(f"{args.dataset}/{args.split} has no targets; use `zscir submit` for test splits")
    notes = dropped_note(results) + empty_caption_notes(results)
    write_json_atomic(out / "metrics.json", {
        "metrics": table,
        "queries": {name: len(r.split.queries) for name, r in results.items()},
        "dropped_queries": {name: r.dropped_queries for name, r in results.items()},
        "dropped_images": {name: r.dropped_images for name, r in results.items()},
        "empty_caption_queries": {name: sum(q.has_empty_caption for q in r.split.queries)
                                  for name, r in results.items()},
    })
    print(format_table(table))
    for line in notes:
        print(f"note: {line}")
    print(f"wrote {out / 'metrics.json'} and {out / 'config.json'}")
    return 0
