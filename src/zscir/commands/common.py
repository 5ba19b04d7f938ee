"""CLI glue shared by several commands: parsed options → library objects (configs, models, validators,
concept banks, conditioners, evaluation runs).

Library modules never see an argparse namespace; this module reads one and calls them with plain
arguments. Errors that are about a flag name the flag here (the library says what is wrong).
Heavy imports stay inside the functions so that `zscir --help` imports no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from zscir.errors import ZscirError


def config_from_args(cls, args: argparse.Namespace):
    """The config given by `add_config_arguments`' flags: defaults < --recipe < --config < --set < --field flags.

    The recipe's config fields are those `apply_recipe` kept aside (none without --recipe)."""
    from dataclasses import fields

    from zscir.training.config import load_config, parse_overrides

    known = {f.name for f in fields(cls)}
    base = getattr(args, "_recipe_config", None) or {}
    foreign = sorted(set(base) - known)
    if foreign:
        raise ZscirError(f"--recipe {args.recipe} sets {', '.join(foreign)}, which this run's config "
                         f"({cls.__name__}) has not; check --method")
    overrides = parse_overrides(args.set)
    for name in known:
        value = getattr(args, f"cfg_{name}", None)
        if value is not None:
            overrides[name] = value
    return load_config(cls, args.config, overrides, base=base)


# ---------------------------------------------------------------------------------------------
# Published recipes (--recipe, --print-config)


def apply_recipe(args: argparse.Namespace, command: str) -> None:
    """Fill what the command line left unset from `--recipe NAME` (`zscir.recipes`), in place.

    A recipe value of a config field (a `cfg_<field>` flag of `add_config_arguments`) becomes the base layer of
    `config_from_args`, below --config, --set and the flags; any other option (backbone, method, val_dataset,
    an OTI setting, ...) is set when the command line left it unset (None or False).

    Raises:
        ZscirError: unknown recipe (lists the command's), or a recipe value the command has no option for.
    """
    from zscir.recipes import get_recipe

    args._recipe_config = {}
    if not getattr(args, "recipe", None):
        return
    recipe = get_recipe(command, args.recipe)
    for key, value in recipe.settings.items():
        if hasattr(args, f"cfg_{key}"):
            args._recipe_config[key] = value
        elif hasattr(args, key):
            if getattr(args, key) in (None, False):
                setattr(args, key, value)
        else:
            raise ZscirError(f"recipe {recipe.name!r} sets {key!r}, which `zscir {command}` has no option for")


def print_config(args: argparse.Namespace, command: str, config: dict) -> int:
    """Print {"recipe", "notes", "options", "config"} as JSON (what --print-config shows); returns 0."""
    import json

    from zscir.recipes import RECIPES

    recipe = RECIPES.get((command, args.recipe)) if args.recipe else None
    skipped = {"command", "config", "set", "recipe", "print_config"}
    options = {k: v for k, v in vars(args).items() if not k.startswith(("_", "cfg_")) and k not in skipped}
    print(json.dumps({"recipe": args.recipe, "notes": recipe.notes if recipe else "", "options": options,
                      "config": config}, indent=2, default=str))
    return 0


def require_options(args: argparse.Namespace, *names: str) -> None:
    """Raise ZscirError for the first option that neither the command line nor the recipe set."""
    for name in names:
        if getattr(args, name, None) in (None, ""):
            raise ZscirError(f"--{name.replace('_', '-')} is required (or a --recipe that sets it)")


def resolved_config(args: argparse.Namespace) -> dict:
    """All arguments as JSON-ready data (plus the zscir version)."""
    from zscir import __version__

    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    config["zscir_version"] = __version__
    return config


def existing_folder(path, flag: str) -> Path:
    """`path` as a Path, or a ZscirError naming the flag when it is not a folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ZscirError(f"{flag} {folder}: the folder does not exist")
    return folder


def existing_path(path, flag: str) -> Path:
    """`path` as a Path, or a ZscirError naming the flag when nothing is there."""
    found = Path(path).expanduser()
    if not found.exists():
        raise ZscirError(f"{flag} {found}: no such file or folder")
    return found


def check_model_source(source: str | None, flag: str) -> None:
    """Refuse a model argument that looks like a local path but does not exist (a hub id passes)."""
    if source is None:
        return
    path = Path(source).expanduser()
    looks_local = (source.startswith((".", "/", "~")) or path.suffix in (".pt", ".pth", ".bin", ".safetensors")
                   or source.count("/") > 1)  # a hub id is "owner/name"; a bare word may be a zoo name
    if looks_local and not path.exists():
        raise ZscirError(f"{flag} {source}: no such file or folder")


def check_phi_source(source: str | None, flag: str = "--phi") -> None:
    """An inversion-network argument before any work: an existing path, a zoo name or a hub id (else one line
    naming the zoo's names)."""
    if source is None:
        return
    check_model_source(source, flag)
    from zscir.models.zoo import ZOO, looks_like_hub_id

    if not Path(source).expanduser().exists() and source not in ZOO and not looks_like_hub_id(source):
        raise ZscirError(f"{flag} {source}: no such file or folder, nor a published name ({', '.join(ZOO)}) or a "
                         "hub id (owner/repo or owner/repo/file.pt)")


def check_backbone(name: str, flag: str = "--backbone") -> None:
    """Resolve a backbone name before any heavy work: unknown names and missing local folders fail here."""
    from zscir.errors import ModelLoadError
    from zscir.registry import resolve_backbone

    try:
        source, spec = resolve_backbone(name)
    except ModelLoadError as exc:
        raise ZscirError(f"{flag}: {exc}") from exc
    if spec is not None and spec.source.startswith("{cache}") and not Path(source).exists():
        raise ZscirError(f"{flag} {name}: {source} is not built yet (run `zscir demo` first)")
    check_model_source(source if spec is None else None, flag)
    if not Path(source).expanduser().exists():
        check_hub_reachable(source, f"{flag} {name}")


def check_hub_reachable(repo_id: str, what: str) -> None:
    """Offline (HF_HUB_OFFLINE=1), a hub model must already be in the local hub cache: say so before any work."""
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        raise ZscirError(f"{what}: {repo_id} is not in the local hub cache and HF_HUB_OFFLINE=1; download it "
                         "where the hub is reachable, or pass a local folder")


def check_phi_backbone(phi: str, backbone: str, flag: str = "--phi") -> None:
    """Refuse a saved Phi recorded for another backbone, from its config alone (before any model is loaded)."""
    from zscir.errors import ModelLoadError
    from zscir.models.phi import check_backbone_name, recorded_backbone

    try:
        check_backbone_name(recorded_backbone(phi), backbone, what=f"{flag} {phi}")
    except ModelLoadError as exc:
        raise ZscirError(f"{exc} (--backbone)") from exc


def check_template(name_or_text: str, flag: str = "--template") -> None:
    """A template name or text, checked before anything is encoded (a typo lists the known names)."""
    from zscir.compose import PromptTemplate

    try:
        PromptTemplate.named(name_or_text)
    except ZscirError as exc:
        raise ZscirError(f"{flag}: {exc}") from exc


def check_runtime(device: str | None, dtype: str | None = None, mixed_precision: str | None = None) -> None:
    """Refuse a device that is not there and fp16 without a GPU, before anything is loaded."""
    import torch

    from zscir.utils.device import check_device

    if device:
        try:
            check_device(device)
        except ZscirError as exc:
            raise ZscirError(f"--device: {exc}") from exc
    on_cpu = not device or device == "cpu" or not torch.cuda.is_available()
    if dtype == "fp16" and on_cpu:
        raise ZscirError("--dtype fp16 needs a GPU (on the CPU use fp32 or bf16)")
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ZscirError("--mixed-precision fp16 needs a GPU (on the CPU use bf16 or no)")


def check_training(config, device: str | None = None, dtype: str | None = None) -> None:
    """A train command's config before anything is read or loaded: precision vs hardware, trackers installed,
    and an output folder with checkpoints only when resuming."""
    from zscir.training.loop import list_checkpoints, trackers_for

    check_runtime(device or ("cpu" if config.cpu else None), dtype, config.mixed_precision)
    trackers_for(config.report_to)
    existing = list_checkpoints(Path(config.output_dir) / "checkpoints")
    if existing and not config.resume:
        raise ZscirError(f"--output-dir {config.output_dir} already holds checkpoints (last: step "
                         f"{existing[-1][0]}); pass --resume to continue that run, or choose another folder")


# ---------------------------------------------------------------------------------------------
# Models of a query: backbone + optional text tower + optional Phi


def check_query_models(args: argparse.Namespace) -> None:
    """Validate `add_model_arguments`' options (paths, method needs) without loading anything."""
    tokens = getattr(args, "tokens", None)
    if tokens and (args.method != "phi" or args.phi):
        raise ZscirError("--tokens replaces the inversion network: use it with --method phi and without --phi")
    if args.method == "phi" and not args.phi and not tokens:
        raise ZscirError("--method phi needs --phi PATH (a SEARLE/LinCIR/Pic2Word checkpoint, zscir folder, zoo "
                         "name or hub id) or --tokens DIR (saved OTI tokens)")
    if getattr(args, "text_encoder", None) and args.method == "image":
        raise ZscirError("--text-encoder has no effect with --method image (no text is encoded)")
    if getattr(args, "l2_normalize", False) and not (args.method == "phi" and args.phi):
        raise ZscirError("--l2-normalize acts on Phi's input: it needs --method phi with --phi")
    if tokens:
        existing_folder(tokens, "--tokens")
    if getattr(args, "template", None):
        check_template(args.template)
    check_phi_source(args.phi if args.method == "phi" else None, "--phi")
    if args.method == "phi" and args.phi:
        check_phi_backbone(args.phi, args.backbone)
    check_backbone(args.backbone)
    check_model_source(getattr(args, "text_encoder", None), "--text-encoder")
    check_runtime(getattr(args, "device", None), getattr(args, "dtype", None))


def load_query_models(args: argparse.Namespace, device: str | None = None):
    """(backbone with the text tower swapped in if given, phi or None) from `add_model_arguments`' options.

    `device` overrides `args.device` (this process's GPU under `accelerate launch`)."""
    from zscir.models import loading

    check_query_models(args)
    backbone, phi = loading.load_query_models(args.backbone, args.text_encoder or None,
                                              args.phi if args.method == "phi" and args.phi else None,
                                              device=device or args.device, dtype=args.dtype)
    if getattr(args, "precision", "fp32") == "fp16":
        backbone.round_weights("fp16")
    if phi is not None and getattr(args, "l2_normalize", False):
        from zscir.models.phi import L2NormalizedInput

        phi = L2NormalizedInput(phi)
    return backbone, phi


# ---------------------------------------------------------------------------------------------
# Evaluation (evaluate, submit)


def check_evaluation(args: argparse.Namespace):
    """Validate an `evaluate` / `submit` run and read its annotation files (light); returns the splits."""
    from zscir.data.records import load_benchmark

    check_query_models(args)
    existing_folder(args.root, "--root")
    if getattr(args, "pseudo_targets", None):
        if args.method != "phi" or not args.phi:
            raise ZscirError("--pseudo-targets needs --method phi with --phi (the pseudo target is inverted by the "
                             "same Phi)")
        existing_folder(args.pseudo_targets, "--pseudo-targets")
    return load_benchmark(args.dataset, args.root, args.split, categories=getattr(args, "categories", None),
                          caption_cleaning=getattr(args, "caption_cleaning", "official"))


def empty_caption_notes(results) -> list[str]:
    """Lines counting the queries with an empty caption (composed as written, never dropped)."""
    return [note for r in results.values() if (note := r.split.empty_caption_note())]


def evaluate_from_args(args: argparse.Namespace, splits=None):
    """Load data and models and run the evaluation; returns {split name: EvalResult}.

    Under `accelerate launch` every process encodes its share of the images into the feature cache; the
    main process then evaluates alone and the others return None.
    """
    from zscir.evaluation.runner import encode_split_images, evaluate_splits
    from zscir.retrieval.features import FeatureCache
    from zscir.retrieval.shards import process_group

    group, device = process_group(args.device)
    splits = splits if splits is not None else check_evaluation(args)
    backbone, phi = load_query_models(args, device)
    cache = FeatureCache(args.cache_dir, enabled=not args.no_cache, content_hash=args.hash_images)
    options = dict(pad_to_ratio=1.25 if args.target_pad else None, circo_text=args.circo_text,
                   skip_missing=args.skip_missing, batch_size=args.batch_size)
    if group.world > 1:
        sharded = FeatureCache(args.cache_dir, enabled=not args.no_cache, content_hash=args.hash_images,
                               group=group)
        encode_split_images(backbone, splits, sharded, options)
        if not group.is_main:
            return None
    if getattr(args, "pseudo_targets", None):
        from zscir.evaluation.fusion import evaluate_cig
        from zscir.recipes import ALPHA_SWEEP

        sweep_values = getattr(args, "alpha_sweep", None)
        sweep = None if sweep_values is None else (sweep_values or ALPHA_SWEEP)
        alpha, source = cig_alpha_of(args)
        print(f"CIG: alpha {alpha:g} ({source})")
        return evaluate_cig(splits, backbone, phi, cache, options, args.pseudo_targets, alpha, sweep,
                            template=args.template)
    if getattr(args, "tokens", None):
        from zscir.evaluation.runner import evaluate_saved_tokens

        return evaluate_saved_tokens(backbone, splits, cache, options, args.tokens, template=args.template)
    return evaluate_splits(backbone, splits, args.method, cache, options, phi=phi, template=args.template)


def cig_alpha_of(args: argparse.Namespace) -> tuple[float, str]:
    """(α, where it comes from): --alpha, else the published α of --dataset/--split (`zscir.recipes.cig_alpha`)."""
    from zscir.recipes import cig_alpha, published_cig_alpha

    if args.alpha is not None:
        return args.alpha, "--alpha"
    alpha = cig_alpha(args.dataset, args.split)
    if published_cig_alpha(args.dataset, args.split) is not None:
        return alpha, f"published for {args.dataset} {args.split}"
    return alpha, f"no published value for {args.dataset} {args.split}: the CIRR val one"


# ---------------------------------------------------------------------------------------------
# Validation during training (train-phi, train-rtd)


def check_validation(args: argparse.Namespace):
    """Validate the `--val-*` options and read the val split's annotations (light); None without --val-dataset."""
    if args.val_dataset is None:
        return None
    if not args.val_root:
        recipe = getattr(args, "recipe", None)
        by_recipe = f" (--recipe {recipe} validates on {args.val_dataset})" if recipe else ""
        raise ZscirError(f"--val-dataset needs --val-root (the benchmark's folder){by_recipe}")
    from zscir.data.records import load_benchmark

    existing_folder(args.val_root, "--val-root")
    return load_benchmark(args.val_dataset, args.val_root, args.val_split, categories=args.val_categories)


def build_validator(args: argparse.Namespace, backbone, splits, phi=None):
    """A `CIRValidator` on the checked val `splits` (from `check_validation`), or None when there are none."""
    if splits is None:
        return None
    from zscir.retrieval.features import FeatureCache
    from zscir.training.validation import CIRValidator

    return CIRValidator(backbone, splits, phi=phi, cache=FeatureCache(args.feature_cache),
                        template=args.val_template)


# ---------------------------------------------------------------------------------------------
# Concepts and phrases (invert, train-phi --method searle)


def check_concepts(args: argparse.Namespace, phrase_weight: float) -> None:
    """Validate `add_concept_arguments`' options (files exist, a source is given when phrases are used)."""
    if phrase_weight <= 0:
        return
    if args.concepts is None:
        raise ZscirError("the phrase loss needs --concepts (a file, 'openimages' for real photos, 'world' for "
                         "the synthetic world), or set --phrase-weight 0")
    from zscir.oti.concepts import concepts_path

    path = concepts_path(args.concepts)
    if path is not None and not path.is_file():
        raise ZscirError(f"--concepts {args.concepts}: {path} not found" + (
            "" if args.concepts != "openimages" else
            " (put Open Images V7's oidv7-class-descriptions.csv there; see README, 'SEARLE on real images')"))
    phrases = phrase_source(args)
    if phrases is None:
        raise ZscirError("--concepts other than 'world' needs --phrases (a file, or lm:MODEL to generate them)")
    if phrases != "world" and not phrases.startswith("lm:"):
        existing_path(phrases, "--phrases")


def phrase_source(args: argparse.Namespace) -> str | None:
    """The phrase source: --phrases, or 'world' with the world's concepts."""
    return args.phrases or ("world" if args.concepts == "world" else None)


def concept_bank_from_args(backbone, args: argparse.Namespace, save_to=None, quiet: bool = False):
    """Build the ConceptBank the concept options describe; generated phrases are saved as `save_to` and reused.

    Args:
        backbone: the `Backbone` (concepts and phrases are embedded with its text tower).
        args: parsed `add_concept_arguments` options.
        save_to: optional JSON path for the phrases (an existing file there is reused, not regenerated).
        quiet: do not print the bank's summary (the other processes of a sharded run).
    Returns:
        A `ConceptBank`.
    """
    from zscir.oti.concepts import build_concept_bank

    bank = build_concept_bank(backbone, args.concepts, phrase_source(args), args.phrases_per_concept,
                              args.phrase_seed, save_to=save_to)
    if not quiet:
        print(bank.summary())
    return bank


# ---------------------------------------------------------------------------------------------
# CIG conditioner (generate, train-generator)


def check_conditioner(args: argparse.Namespace) -> None:
    """Validate the towers and Phis of `add_conditioner_arguments` before anything is loaded."""
    if args.phi is None:
        return
    check_phi_source(args.phi, "--phi")
    check_phi_source(args.phi_2, "--phi-2")
    check_phi_backbone(args.phi, args.backbone)
    if args.phi_2:
        check_phi_backbone(args.phi_2, args.backbone_2 or args.backbone, "--phi-2")
    check_backbone(args.backbone)
    if args.backbone_2:
        check_backbone(args.backbone_2, "--backbone-2")


def conditioner_pad_id(args: argparse.Namespace) -> int | None:
    """The pad id of the SDXL prompts: the official 0, or None (each tokenizer's own) with --tokenizer-padding."""
    from zscir.generation.conditioning import OFFICIAL_PAD_ID

    return None if getattr(args, "tokenizer_padding", False) else OFFICIAL_PAD_ID


def build_conditioner(args: argparse.Namespace, template: str):
    """The ComposedConditioner of the conditioner options (None when no --phi is given)."""
    from zscir.generation.conditioning import build_composed_conditioner

    if args.phi is None:
        return None
    return build_composed_conditioner(args.backbone, args.phi, args.backbone_2, args.phi_2, template,
                                      device=args.device, dtype=args.dtype, pad_id=conditioner_pad_id(args))
