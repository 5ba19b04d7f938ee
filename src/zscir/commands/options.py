"""One registry of command-line options, so the same thing has the same flag, choices, metavar and shown
default in every command; plus the option groups several commands share.

A command adds an option by name: `add(parser, "dataset", required=True)`. An entry may carry old
spellings (`aliases`): they still parse but are hidden from --help (kept for one release).
Turning parsed options into library objects (configs, validators, models) lives in
`zscir.commands.common`; no library module sees an argparse namespace.

This module stays free of torch (`zscir --help` builds every command's parser).
"""

from __future__ import annotations

import argparse
import copy
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from zscir.recipes import ALPHA_SWEEP, CIG_ALPHA, DEFAULT_ALPHA, recipe_names  # pure data, no torch

DATASETS = ("cirr", "fashioniq", "circo")
DTYPES = ("fp32", "fp16", "bf16")
METHOD_NAMES = ("phi", "image", "text", "sum")  # = zscir.compose.METHODS (kept light for --help)
REAL_BACKBONE = "ViT-L/14"  # the default backbone of commands that read real images (SDXL's tower 1 too)
TEMPLATES_PLACEHOLDER = "{templates}"  # expanded by HelpFormatter with the registered template names
# the default of a query's --template: zscir.prompts.METHOD_TEMPLATES (each network kind its own method's prompt)
NETWORK_TEMPLATE = " (default: the network's own method's: pic2word for a Pic2Word checkpoint, else default)"


@dataclass(frozen=True)
class Option:
    """One command-line option as data.

    Attributes:
        flags: the shown spellings (the first is the canonical one).
        kwargs: `add_argument` keywords (help without the default: the default is appended).
        aliases: old spellings that still parse and are hidden from --help.
    """

    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()


def _opt(*flags: str, aliases: tuple[str, ...] = (), **kwargs) -> Option:
    return Option(flags, kwargs, aliases)


OPTIONS: dict[str, Option] = {
    # data
    "dataset": _opt("--dataset", choices=DATASETS, help="benchmark format"),
    "root": _opt("--root", metavar="DIR", help="the dataset folder"),
    "split": _opt("--split", metavar="SPLIT", help="benchmark split (val, test, train)"),
    "categories": _opt("--categories", nargs="+", metavar="CAT", help="FashionIQ categories (default: all three)"),
    "images": _opt("--images", metavar="DIR", help="folder of images (searched recursively)"),
    "limit": _opt("--limit", type=int, metavar="N", help="only the first N items (quick trials)"),
    "output-dir": _opt("--output-dir", aliases=("--out",), metavar="DIR", help="output folder"),
    "cache-dir": _opt("--cache-dir", metavar="DIR", help="feature cache (default: $ZSCIR_CACHE/features)"),
    # models
    "backbone": _opt("--backbone", metavar="NAME",
                     help="CLIP backbone: a registered name (see `zscir models`), hub id or local CLIP folder"),
    "phi": _opt("--phi", metavar="PATH",
                help="inversion network: SEARLE/LinCIR {'Phi'} file, Pic2Word checkpoint or zscir folder"),
    "text-encoder": _opt("--text-encoder", metavar="PATH", help="fine-tuned text tower (RTD .pt file or HF folder)"),
    "tokens": _opt("--tokens", metavar="DIR", help="OTI token folder written by `zscir invert`"),
    "template": _opt("--template", metavar="NAME|TEXT",
                     help="prompt template: " + TEMPLATES_PLACEHOLDER + ", or a text with $ and {caption}"),
    "method": _opt("--method", choices=METHOD_NAMES, help="how queries are built"),
    # runtime
    "device": _opt("--device", metavar="DEVICE", help="torch device: cpu, cuda, cuda:1, ..."),
    "dtype": _opt("--dtype", choices=DTYPES, help="weights dtype of the frozen models"),
    "batch-size": _opt("--batch-size", type=int, metavar="N", help="items per forward pass"),
    "workers": _opt("--workers", type=int, metavar="N", help="threads"),
    "seed": _opt("--seed", type=int, metavar="N", help="random seed"),
    "target-pad": _opt("--target-pad", action="store_true", help="SEARLE's target-pad preprocessing (ratio 1.25)"),
    "examples": _opt("--examples", type=int, metavar="N", help="examples listed per problem"),
    # CIG generator (generate, train-generator, serve)
    "backbone-2": _opt("--backbone-2", aliases=("--generator-backbone-2",), metavar="NAME",
                       help="second conditioning tower (bigG/14 for SDXL; default: the first tower again)"),
    "phi-2": _opt("--phi-2", aliases=("--generator-phi-2",), metavar="PATH",
                  help="inversion network of the second tower (default: --phi)"),
    "generator": _opt("--generator", metavar="NAME", help="SDXL pipeline folder or hub id"),
    "unet": _opt("--unet", aliases=("--generator-unet",), metavar="DIR",
                 help="fine-tuned generator UNet (folder from `zscir train-generator`)"),
    # published recipes (train-phi, train-rtd, invert, train-generator)
    "recipe": _opt("--recipe", metavar="NAME",
                   help="a published recipe: sets every hyperparameter it names (zscir.recipes, each value with "
                   "its official file); flags given here override it"),
    "print-config": _opt("--print-config", action="store_true",
                         help="print the resolved recipe, options and config as JSON and exit (nothing is read "
                         "or run)"),
    "tokenizer-padding": _opt("--tokenizer-padding", action="store_true",
                              help="pad each SDXL prompt as its tokenizer does (zscir before) instead of with id 0 "
                              "after the end token, as the official CIG extraction does (clip.tokenize)"),
    # CIG fusion (evaluate, submit, serve)
    "pseudo-targets": _opt("--pseudo-targets", metavar="DIR",
                           help="folder written by `zscir generate`: fuse each query with its pseudo target's query"),
    "alpha": _opt("--alpha", type=float, metavar="X",
                  help="weight of the reference query: q = norm(a*f_ref + (1-a)*f_gen), 1 = plain; default: the "
                  "published value of the benchmark split ("
                  + ", ".join(f"{dataset} {split} {alpha:g}" for (dataset, split), alpha in CIG_ALPHA.items())
                  + f"; zscir.recipes.CIG_ALPHA), else {DEFAULT_ALPHA:g}"),
    "alpha-sweep": _opt("--alpha-sweep", type=float, nargs="*", metavar="X",
                        help="also print metrics for each alpha (no values: "
                        f"{ALPHA_SWEEP[0]:.2f}..{ALPHA_SWEEP[-1]:.2f} by {ALPHA_SWEEP[1] - ALPHA_SWEEP[0]:.2f}); "
                        "choose on val"),
}


def _shown_default(default: Any) -> str | None:
    """The default as shown in --help, or None when there is nothing worth showing."""
    if default in (None, False, argparse.SUPPRESS) or default == []:
        return None
    if isinstance(default, (list, tuple)):
        return " ".join(str(v) for v in default)
    return str(default)


def add(parser, name: str, **overrides) -> argparse.Action:
    """Add the registered option `name` to a parser or argument group.

    Args:
        parser: an `ArgumentParser` or argument group.
        name: a key of `OPTIONS`.
        **overrides: `add_argument` keywords of this command (default, required, help, dest, ...).
    Returns:
        The argparse action; a shown default "(default X)" is appended to the help unless it says one.
    """
    option = OPTIONS[name]
    kwargs = {**option.kwargs, **overrides}
    default = kwargs.get("default")
    shown = _shown_default(default)
    help_text = kwargs.get("help")
    if shown is not None and help_text and help_text is not argparse.SUPPRESS and "default" not in help_text:
        kwargs["help"] = f"{help_text} (default {shown})"
    action = parser.add_argument(*option.flags, *option.aliases, **kwargs)
    action.hidden_aliases = option.aliases
    return action


def add_hidden_alias(action: argparse.Action, *aliases: str) -> None:
    """Record option strings of `action` that parse but are not shown (old spellings)."""
    action.hidden_aliases = tuple(getattr(action, "hidden_aliases", ())) + aliases


class HelpFormatter(argparse.HelpFormatter):
    """Hides old spellings and lists the registered prompt templates where a help text asks for them."""

    def _format_action_invocation(self, action):
        hidden = getattr(action, "hidden_aliases", ())
        if hidden:
            action = copy.copy(action)
            action.option_strings = [s for s in action.option_strings if s not in hidden]
        return super()._format_action_invocation(action)

    def _split_lines(self, text, width):
        """Wrap help at spaces only: names such as `rtd-lincir-vit-l14` or `--alpha-sweep` stay whole."""
        import re
        import textwrap

        return textwrap.wrap(re.sub(r"\s+", " ", text).strip(), width, break_on_hyphens=False)

    def _get_help_string(self, action):
        text = super()._get_help_string(action)
        if text and TEMPLATES_PLACEHOLDER in text:
            text = text.replace(TEMPLATES_PLACEHOLDER, ", ".join(template_names()))
        return text


def template_names() -> list[str]:
    """Names of the registered prompt templates (imported when help is shown, not when parsers are built)."""
    from zscir.compose import TEMPLATES

    return list(TEMPLATES)


# ---------------------------------------------------------------------------------------------
# Shared option groups


def add_runtime_arguments(parser, device: str | None = "cpu", dtype: str | None = "fp32") -> None:
    """`--device` and `--dtype` with their shown defaults."""
    add(parser, "device", default=device,
        **({} if device else {"help": "torch device: cpu, cuda, cuda:1, ... (default: accelerate's device)"}))
    add(parser, "dtype", default=dtype)


def add_model_arguments(parser) -> None:
    """Backbone, method, Phi, text tower and template: what `evaluate` and `submit` load."""
    add(parser, "backbone", required=True)
    add(parser, "method", default="phi")
    add(parser, "phi", help=OPTIONS["phi"].kwargs["help"] + " (needed by --method phi)")
    add(parser, "text-encoder")
    add(parser, "tokens", help=OPTIONS["tokens"].kwargs["help"] + ": compose each query with the saved token of its "
        "reference image instead of Phi's (SEARLE's --eval-type oti; --method phi without --phi)")
    add(parser, "template", help=OPTIONS["template"].kwargs["help"] + NETWORK_TEMPLATE)
    parser.add_argument("--l2-normalize", action="store_true",
                        help="L2-normalise the image embeddings before Phi (LinCIR's --l2_normalize)")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                        help="fp16: round the towers' weights to fp16 and compute in --dtype, as the official LinCIR "
                        "and SEARLE evaluations load them; a near tie can then rank the other way (measured on the "
                        "world in BENCHMARKS.md: no metric moved) (default fp32)")


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `evaluate` and `submit`: data, models, preprocessing, features."""
    add(parser, "root", required=True)
    add_model_arguments(parser)
    add(parser, "target-pad")
    parser.add_argument("--circo-text", choices=("caption", "concept"), default="caption",
                        help="CIRCO query text: the caption, or 'find {shared_concept} but {caption}' "
                        "(default caption)")
    parser.add_argument("--caption-cleaning", choices=("official", "strip"), default="official",
                        help="official (default): FashionIQ captions stripped of '.?, ' at both ends, CIRR and "
                        "CIRCO captions as written; strip: every caption loses surrounding spaces and trailing "
                        "'.?, ' (zscir 0.1)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="evaluate without missing/undecodable images (reports how many queries were dropped)")
    add(parser, "batch-size", default=64, help="images per forward pass (text: 4x)")
    add_runtime_arguments(parser)
    add(parser, "cache-dir")
    parser.add_argument("--no-cache", action="store_true", help="keep no features on disk")
    parser.add_argument("--hash-images", action="store_true",
                        help="key cached features by each image's SHA-256 (default: its size and modification times)")


def add_recipe_arguments(parser, command: str) -> None:
    """`--recipe NAME` (its help lists the command's recipes) and `--print-config`."""
    add(parser, "recipe", help=OPTIONS["recipe"].kwargs["help"] + f" (one of: {', '.join(recipe_names(command))})")
    add(parser, "print-config")


def add_cig_arguments(parser, sweep: bool) -> None:
    """`--pseudo-targets DIR`, `--alpha X` (default: the published α of the split) and, with `sweep`,
    `--alpha-sweep` (`evaluate`; `submit` ranks a test split, where no α is chosen)."""
    cig = parser.add_argument_group("CIG pseudo targets (method phi; see zscir.evaluation.fusion)")
    add(cig, "pseudo-targets")
    add(cig, "alpha")
    if sweep:
        add(cig, "alpha-sweep")


def add_validation_arguments(parser) -> None:
    """`--val-*` options of the train commands (validation on a CIR val split)."""
    group = parser.add_argument_group("validation on a CIR split (keeps the best model by --select-metric)")
    group.add_argument("--val-dataset", choices=DATASETS, default=None,
                       help="benchmark to validate on (none: no validation, the final model is kept)")
    group.add_argument("--val-root", default=None, metavar="DIR", help="the benchmark's folder")
    group.add_argument("--val-split", default="val", metavar="SPLIT", help="(default val)")
    group.add_argument("--val-categories", nargs="+", default=None, metavar="CAT",
                       help="FashionIQ categories (default: all)")
    group.add_argument("--val-template", default="default", metavar="NAME|TEXT",
                       help=OPTIONS["template"].kwargs["help"] + " (default default)")
    group.add_argument("--feature-cache", default=None, metavar="DIR",
                       help="image feature cache (default: $ZSCIR_CACHE/features)")


def add_concept_arguments(parser) -> None:
    """Concepts and phrases of SEARLE's phrase loss (`invert`, `train-phi --method searle`); no default source:
    a real-data command names its vocabulary (`openimages` for photos, `world` for the synthetic world)."""
    group = parser.add_argument_group("concepts and phrases (SEARLE's phrase loss)")
    group.add_argument("--concepts", default=None, metavar="FILE|openimages|world",
                       help="concept list: a text file (one per line), JSON list or CSV with a DisplayName column; "
                       "'openimages' = the Open Images V7 class names SEARLE uses for real photos "
                       "($ZSCIR_CACHE/concepts/oidv7-class-descriptions.csv); 'world' = the synthetic world's "
                       "shapes (required unless --phrase-weight 0)")
    group.add_argument("--phrases", default=None, metavar="FILE|lm:MODEL|world",
                       help="phrase source: a JSON {concept: [phrases]} or 'concept<TAB>phrase' text file; "
                       "'lm:MODEL' = sample from a causal LM (local folder or hub id); 'world' = the world's "
                       "caption grammar (default: 'world' with --concepts world, else required)")
    group.add_argument("--phrases-per-concept", type=int, default=None, metavar="N",
                       help="phrases generated per concept (default: 256 from an LM, as SEARLE's "
                       "gpt_phrases_generation.py; 32 from the world grammar)")
    group.add_argument("--phrase-seed", type=int, default=0, metavar="N", help="seed of generated phrases (default 0)")


def add_conditioner_arguments(group, backbone_default: str | None = REAL_BACKBONE, phi_required: bool = False) -> None:
    """The towers + Phis that condition the CIG generator (`generate`, `train-generator`)."""
    add(group, "backbone", default=backbone_default, help="conditioning tower 1 (ViT-L/14 for SDXL)")
    add(group, "phi", required=phi_required, help="inversion network of tower 1 (file or folder)")
    add(group, "backbone-2")
    add(group, "phi-2")
    add(group, "tokenizer-padding")


# ---------------------------------------------------------------------------------------------
# Training config flags, generated from the config dataclasses


def _metavar(kind) -> str:
    origin = typing.get_origin(kind)
    if origin is typing.Union or type(None) in typing.get_args(kind):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    return {int: "N", float: "X"}.get(kind, "TEXT")


def field_docs(cls) -> dict[str, str]:
    """{field: its one-paragraph description} from the "Attributes:" sections of `cls` and its bases."""
    import inspect
    import re

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = inspect.cleandoc(klass.__dict__.get("__doc__") or "")
        if "Attributes:" not in text:
            continue
        current: list[str] = []
        for line in text.split("Attributes:", 1)[1].splitlines():
            match = re.match(r"^ {4}([a-z_][a-z0-9_ /]*):\s*(.*)$", line)
            if match:
                current = [n.strip() for n in match.group(1).split("/")]
                for name in current:
                    docs[name] = match.group(2).strip()
            elif line.startswith("        ") and current:
                for name in current:
                    docs[name] += " " + line.strip()
            elif line.strip():
                current = []
    return docs


def _field_metadata(cls, name: str) -> dict:
    """A field's metadata (choices, help), also when a subclass overrides only its default."""
    for klass in cls.__mro__:
        found = getattr(klass, "__dataclass_fields__", {}).get(name)
        if found is not None and found.metadata:
            return dict(found.metadata)
    return {}


def _recipe_name(cls) -> str:
    return cls.__name__.removesuffix("Config").lower()


def add_config_arguments(parser: argparse.ArgumentParser, *classes, title: str = "training config") -> None:
    """Add `--config FILE`, `--set key=value` and one `--field-name` flag per config field (default: unset).

    Args:
        parser: the command's parser.
        *classes: the recipe config dataclasses the command can run (e.g. LinCIRConfig, SearleConfig);
            a flag's shown default names each recipe's value where they differ.
        title: the argument group's title.

    A field's choices and help come from its dataclass metadata (`field(metadata={"choices": ..., "help": ...})`);
    `output_dir` also parses as the old `--out`.
    """
    existing = {s for a in parser._actions for s in a.option_strings}
    if "--config" not in existing:
        parser.add_argument("--config", metavar="FILE",
                            help="YAML or JSON file of config fields (CLI flags override it)")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any field")
    group = parser.add_argument_group(f"{title} (defaults: the recipe)")
    seen: dict[str, tuple] = {}
    docs = {k: v for cls in classes for k, v in field_docs(cls).items()}
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            seen.setdefault(f.name, (_field_metadata(cls, f.name), hints[f.name], {}))[2][_recipe_name(cls)] = default
    for name, (metadata, kind, defaults) in seen.items():
        flag = "--" + name.replace("_", "-")
        if flag in existing:  # a command-level option of the same name wins
            continue
        values = list(defaults.values())
        if len(defaults) == len(classes) and all(v == values[0] for v in values):
            shown = f"(default {values[0]})"
        elif len(defaults) == len(classes):
            shown = "(default " + ", ".join(f"{recipe} {value}" for recipe, value in defaults.items()) + ")"
        else:
            shown = "(" + ", ".join(defaults) + " only; default " + ", ".join(map(str, values)) + ")"
        text = metadata.get("help") or docs.get(name, "")
        kwargs: dict[str, Any] = dict(dest=f"cfg_{name}", default=None, help=f"{text} {shown}".strip())
        registered = OPTIONS.get(name.replace("_", "-"))
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif registered is not None and "metavar" in registered.kwargs:  # the same name shown the same way
            kwargs["metavar"] = registered.kwargs["metavar"]
        elif name.endswith("_dir"):
            kwargs["metavar"] = "DIR"
        elif "choices" in metadata:
            kwargs["choices"] = metadata["choices"]
        elif typing.get_origin(kind) is tuple:
            kwargs.update(nargs="+", metavar=_metavar(typing.get_args(kind)[0]))
        else:
            kwargs["metavar"] = _metavar(kind)
        flags = (flag, "--out") if name == "output_dir" else (flag,)
        action = group.add_argument(*flags, **kwargs)
        if name == "output_dir":
            add_hidden_alias(action, "--out")
