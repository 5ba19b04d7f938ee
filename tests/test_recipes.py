"""Published recipes as data: every recipe resolves through its command, flags override it."""

from __future__ import annotations

import dataclasses
import json

import pytest

from zscir.cli import main
from zscir.recipes import RECIPES, get_recipe, recipe_names

# the minimal options each command needs before --print-config (never read: nothing runs)
REQUIRED = {"train-phi": [], "train-rtd": ["--triplets", "t.jsonl", "--phi", "phi.pt"],
            "invert": ["--output-dir", "oti"], "train-generator": ["--phi", "phi.pt"]}


def _printed(capsys, argv):
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("command,name", sorted(RECIPES))
def test_every_recipe_resolves_to_its_values(command, name, capsys):
    recipe = get_recipe(command, name)
    shown = _printed(capsys, [command, "--recipe", name, "--print-config", *REQUIRED[command]])
    assert shown["recipe"] == name and shown["notes"] == recipe.notes
    for key, value in recipe.settings.items():
        found = shown["config"].get(key, shown["options"].get(key, "<absent>"))
        assert found == value, (key, found, value)


def test_flags_override_the_recipe(capsys):
    shown = _printed(capsys, ["train-phi", "--recipe", "lincir-vit-l14", "--print-config", "--lr", "3e-4",
                              "--backbone", "ViT-B/32"])
    assert shown["config"]["lr"] == 3e-4 and shown["options"]["backbone"] == "ViT-B/32"
    assert shown["config"]["batch_size"] == 512 and shown["config"]["seed"] == 12345  # the rest: the recipe
    shown = _printed(capsys, ["train-phi", "--recipe", "searle-vit-b32", "--print-config", "--top-k", "20"])
    assert shown["config"]["top_k"] == 20 and shown["config"]["epochs"] == 100
    assert shown["options"]["method"] == "searle"
    # asking for steps counts steps, over the recipe's epochs
    shown = _printed(capsys, ["train-phi", "--recipe", "searle-vit-b32", "--print-config", "--max-steps", "10"])
    assert shown["config"]["max_steps"] == 10 and shown["config"]["epochs"] is None
    shown = _printed(capsys, ["invert", "--recipe", "searle-vit-l14", "--print-config", "--output-dir", "x",
                              "--steps", "5", "--template", "a photo of $"])
    assert shown["config"]["steps"] == 5 and shown["config"]["template"] == "a photo of $"
    assert shown["config"]["init_std"] == 0.02 and shown["options"]["target_pad"] is True
    shown = _printed(capsys, ["train-rtd", "--recipe", "rtd-lincir-vit-l14", "--print-config", "--max-steps", "10",
                              *REQUIRED["train-rtd"]])
    assert shown["config"]["max_steps"] == 10 and shown["config"]["lr"] == 1e-5
    # a --config file sits above the recipe too
    shown = _printed(capsys, ["train-rtd", "--recipe", "rtd-lincir-vit-l14", "--print-config", "--set", "seed=7",
                              *REQUIRED["train-rtd"]])
    assert shown["config"]["seed"] == 7 and shown["config"]["batch_size"] == 128


def test_no_recipe_prints_the_defaults_and_a_typo_lists_the_names(capsys):
    from zscir.commands.invert import OTI_DEFAULTS
    from zscir.oti.optimise import OTIConfig

    shown = _printed(capsys, ["train-rtd", "--print-config", *REQUIRED["train-rtd"]])
    assert shown["recipe"] is None and shown["config"]["temperature"] == 0.07
    shown = _printed(capsys, ["invert", "--print-config", *REQUIRED["invert"]])
    assert shown["config"] == dataclasses.asdict(OTIConfig()) == OTI_DEFAULTS  # --help shows OTIConfig's defaults
    assert shown["config"]["template"] == "palavra"  # SEARLE's per-step template draw by default
    assert main(["train-phi", "--recipe", "lincir-vit-l15", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "lincir-vit-l15" in err and all(name in err for name in recipe_names("train-phi"))
    assert main(["train-phi", "--print-config", "--max-steps", "3"]) == 0  # no backbone needed to print
    capsys.readouterr()
    assert main(["train-phi", "--corpus", "c.txt"]) == 2
    assert "--backbone is required (or a --recipe that sets it)" in capsys.readouterr().err


def test_help_lists_each_commands_recipes(capsys):
    for command in ("train-phi", "train-rtd", "invert", "train-generator"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert all(name in text for name in recipe_names(command)), command


def test_recipe_values_name_their_official_file():
    """Every recipe value carries a comment naming its source (checked on the module text)."""
    import inspect

    import zscir.recipes as module

    text = inspect.getsource(module)
    for block in ("_LINCIR = {", "_SEARLE_DISTIL = {", "_SEARLE_OTI = {", "_RTD = {"):
        body = text[text.index(block):].split("\n}\n", 1)[0].splitlines()[1:]
        for line in body:
            if line.strip().startswith('"'):
                assert "#" in line, line
