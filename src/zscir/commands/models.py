"""`zscir models`: list registered backbones and the checkpoint formats zscir reads."""

HELP = ("list registered backbones (name → hub id / folder, dims), prompt templates, published inversion networks "
        "(zoo) and checkpoint formats")


def add_arguments(parser) -> None:
    """No options."""


def run(args) -> int:
    """Print the registry as four tables."""
    from pathlib import Path

    from zscir.compose import TEMPLATES
    from zscir.registry import ALIASES, BACKBONES, CHECKPOINT_FORMATS, resolve_backbone

    print("Backbones (any other hub id or local CLIP folder works too):")
    print(f"  {'name':<16} {'P':>5} {'H':>5}  source")
    for name, spec in BACKBONES.items():
        source, _ = resolve_backbone(name)
        state = "" if "/" not in source or not source.startswith("/") else ("  [built]" if Path(source).exists()
                                                                          else "  [not built: zscir demo]")
        dims = (str(spec.projection_dim or "-"), str(spec.hidden_size or "-"))
        print(f"  {name:<16} {dims[0]:>5} {dims[1]:>5}  {source}{state}  — {spec.description}")
    print("  aliases: " + ", ".join(f"{a}={t}" for a, t in sorted(ALIASES.items())))
    print("\nPrompt templates (--template NAME, or any text with $ and {caption}):")
    for name, text in TEMPLATES.items():
        print(f"  {name:<18} {text}")
    from zscir.models.zoo import ZOO, zoo_path

    print("\nPublished inversion networks (--phi NAME: fetched once into the cache; offline, put the file there):")
    for name, entry in ZOO.items():
        state = "[cached]" if zoo_path(entry).is_file() else f"[not cached: {zoo_path(entry)}]"
        print(f"  {name:<16} {entry.backbone:<9} {entry.url}  {state}")
    print("\nCheckpoint formats (Phi / Pic2Word / RTD text encoder):")
    for name, text in CHECKPOINT_FORMATS.items():
        print(f"  {name:<18} {text}")
    return 0
