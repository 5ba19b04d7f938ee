"""`zscir invert`: SEARLE's optimisation-based textual inversion (OTI) of a set of images, resumable.

The output folder (a `TokenStore`) holds one EMA pseudo token per image with its image embedding;
`zscir train-phi --method searle --tokens FOLDER` distils a Phi from it, and `oti_pseudo_tokens`
uses the same machinery as the retrieval method "SEARLE-OTI".
"""

from __future__ import annotations

import argparse

HELP = "SEARLE OTI: optimise one pseudo token per image (resumable; feeds `train-phi --method searle`)."

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def add_concept_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that choose the concepts and phrases of the phrase loss (shared with `train-phi --method searle`)."""
    group = parser.add_argument_group("concepts and phrases")
    group.add_argument("--concepts", default="world",
                       help="concept list: a text file (one per line) or JSON list; 'world' = the synthetic "
                       "world's shapes and colour-shape pairs (default)")
    group.add_argument("--phrases", default="world",
                       help="phrase source: a JSON {concept: [phrases]} or 'concept<TAB>phrase' text file; "
                       "'lm:MODEL' = sample from a causal LM (local folder or hub id); 'world' = the world's "
                       "caption grammar (default)")
    group.add_argument("--phrases-per-concept", type=int, default=32, help="phrases generated per concept")
    group.add_argument("--phrase-seed", type=int, default=0, help="seed of the generated phrases")


def concept_bank_from_args(backbone, args: argparse.Namespace, save_to=None):
    """Build the ConceptBank the arguments describe; generated phrases are saved as `save_to` (JSON) and reused.

    Args:
        backbone: the `Backbone` (concepts and phrases are embedded with its text tower).
        args: parsed `add_concept_arguments` options.
        save_to: optional JSON path for the phrases (an existing file there is reused, not regenerated).
    Returns:
        A `ConceptBank`.
    """
    from pathlib import Path

    from zscir.training.concepts import (
        DEFAULT_TEMPLATES,
        WORLD_TEMPLATES,
        ConceptBank,
        generate_phrases,
        load_concepts,
        load_phrases,
        world_concepts,
        world_phrases,
    )
    from zscir.utils.io import write_json_atomic

    world = args.concepts == "world"
    concepts = world_concepts() if world else load_concepts(args.concepts)
    if save_to is not None and Path(save_to).is_file():
        phrases = load_phrases(save_to)
    elif args.phrases == "world":
        phrases = world_phrases(concepts, args.phrases_per_concept, args.phrase_seed)
    elif args.phrases.startswith("lm:"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from zscir.models.backbone import _hub_error

        source = args.phrases[3:]
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source).to(backbone.device)
        except (OSError, ValueError) as exc:
            raise _hub_error(source, exc) from exc
        phrases = generate_phrases(model, tokenizer, concepts, args.phrases_per_concept, seed=args.phrase_seed)
    else:
        phrases = load_phrases(args.phrases)
    if save_to is not None and not Path(save_to).is_file():
        write_json_atomic(save_to, phrases)
    bank = ConceptBank.build(backbone, concepts, phrases, WORLD_TEMPLATES if world else DEFAULT_TEMPLATES)
    print(bank.summary())
    return bank


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("--backbone", required=True, help="registered name, hub id or local CLIP folder")
    parser.add_argument("--out", required=True, help="token folder (rerun the same command to resume)")
    source = parser.add_argument_group("images (a benchmark split or a folder)")
    source.add_argument("--dataset", choices=("cirr", "fashioniq", "circo"), default=None)
    source.add_argument("--root", default=None, help="the dataset folder (with --dataset)")
    source.add_argument("--split", default="val", help="benchmark split (default: val)")
    source.add_argument("--all-images", action="store_true",
                        help="invert every image of the split (default: only the queries' reference images)")
    source.add_argument("--images", default=None, help="a folder: invert every image file under it instead")
    source.add_argument("--limit", type=int, default=None, help="only the first N images (for trials)")
    add_concept_arguments(parser)
    oti = parser.add_argument_group("OTI recipe (defaults: the SEARLE paper)")
    oti.add_argument("--steps", type=int, default=350)
    oti.add_argument("--lr", type=float, default=2e-2)
    oti.add_argument("--weight-decay", type=float, default=0.01)
    oti.add_argument("--ema-decay", type=float, default=0.99)
    oti.add_argument("--phrase-weight", type=float, default=0.5, help="0 = image loss only (no phrases needed)")
    oti.add_argument("--top-k", type=int, default=15, help="concepts per image")
    oti.add_argument("--template", default="a photo of $", help="prompt the token is read in")
    oti.add_argument("--seed", type=int, default=0)
    oti.add_argument("--batch-size", type=int, default=32, help="images optimised together (same result)")
    parser.add_argument("--chunk-size", type=int, default=256, help="images per saved chunk (unit of resumption)")
    parser.add_argument("--target-pad", action="store_true", help="SEARLE's target-pad preprocessing (ratio 1.25)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: $ZSCIR_CACHE/features)")


def images_from_args(args: argparse.Namespace) -> dict:
    """{name: path} of the images to invert, in a fixed order."""
    from pathlib import Path

    from zscir.errors import ZscirError

    if (args.images is None) == (args.dataset is None):
        raise ZscirError("give either --images FOLDER or --dataset NAME --root FOLDER")
    if args.images is not None:
        root = Path(args.images).expanduser()
        if not root.is_dir():
            raise ZscirError(f"--images {root}: no such folder")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        images = {str(p.relative_to(root)): p for p in files}
    else:
        if args.root is None:
            raise ZscirError("--dataset needs --root (the dataset folder)")
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
    """Invert the images not yet in --out; print a one-line summary."""
    from pathlib import Path

    from zscir.errors import DataError
    from zscir.models.backbone import Backbone
    from zscir.retrieval.features import FeatureCache
    from zscir.training.oti import META_NAME, OTIConfig, TokenStore, features_key, invert_to_store

    config = OTIConfig(steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, ema_decay=args.ema_decay,
                       phrase_weight=args.phrase_weight, top_k=args.top_k, template=args.template, seed=args.seed,
                       batch_size=args.batch_size)
    config.check()
    images = images_from_args(args)
    backbone = Backbone.load(args.backbone, device=args.device, dtype=args.dtype)
    pad = 1.25 if args.target_pad else None
    feats = FeatureCache(args.cache_dir).image_features(backbone, images, pad, desc="OTI image features")
    if feats.failed:
        name, reason = next(iter(feats.failed.items()))
        raise DataError(f"{len(feats.failed)} image(s) could not be encoded, e.g. {name}: {reason}")
    out = Path(args.out)
    bank = None
    if config.phrase_weight > 0:
        bank = concept_bank_from_args(backbone, args, save_to=out / "phrases.json")
    names = list(images)
    done_before = set(TokenStore(out).index()) if (out / META_NAME).is_file() else set()
    store = invert_to_store(backbone, names, feats.features, bank, config, out, args.chunk_size,
                            features_key=features_key(backbone, pad))
    print(f"OTI: {len(names)} images, {sum(n not in done_before for n in names)} inverted now, "
          f"{len(store.index())} tokens in {out}")
    return 0
