"""The command line as a user meets it: one spelling per option, shown defaults, old spellings still parsing,
every flag and path checked before any heavy work, and the CLI glue kept out of the library."""

from __future__ import annotations

import argparse
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from zscir.cli import build_parser, main
from zscir.commands.options import OPTIONS

SRC = Path(__file__).resolve().parents[1] / "src" / "zscir"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _visible(parser):
    return [a for a in parser._actions if a.help is not argparse.SUPPRESS and a.option_strings
            and not isinstance(a, argparse._HelpAction)]


def test_every_default_worth_knowing_is_shown_in_help():
    missing = []
    for name, parser in _subparsers().items():
        for action in _visible(parser):
            default = action.default
            if default in (None, False, argparse.SUPPRESS) or default == []:
                continue
            if "default" not in (action.help or "").lower():
                missing.append(f"{name} {action.option_strings[0]} (default {default!r})")
    assert not missing, missing


def test_no_internal_names_in_help():
    for name, parser in _subparsers().items():
        text = parser.format_help()
        assert "CFG_" not in text, name
        for action in _visible(parser):
            assert action.metavar is None or "_" not in str(action.metavar), (name, action.metavar)


def test_the_same_flag_means_the_same_thing_everywhere():
    seen: dict[str, set] = {}
    choices: dict[str, list] = {}
    for parser in _subparsers().values():
        for action in _visible(parser):
            flag = action.option_strings[0]
            seen.setdefault(flag, set()).add((action.metavar, action.nargs))
            choices.setdefault(flag, []).append(action.choices)
    differing = {flag: kinds for flag, kinds in seen.items() if len(kinds) > 1}
    assert not differing, differing
    # A flag restricted to choices somewhere is restricted everywhere (no free text for --dataset / --dtype).
    for flag, options in choices.items():
        if any(c is not None for c in options):
            assert all(c is not None for c in options), flag
    for flag in ("--dataset", "--dtype"):  # (train-phi's --method is the recipe, not the query method)
        registry = set(OPTIONS[flag.lstrip("-")].kwargs["choices"])
        assert all(set(c) <= registry for c in choices[flag]), flag


def test_template_names_are_listed_in_help_and_models(capsys):
    from zscir.compose import TEMPLATES

    help_text = _subparsers()["evaluate"].format_help()
    assert all(name in help_text for name in TEMPLATES)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "Prompt templates" in out and all(f"{name}" in out for name in TEMPLATES)


def test_old_spellings_still_parse_but_are_hidden():
    parser = build_parser()
    args = parser.parse_args(["index", "--images", "x", "--out", "y"])
    assert args.output_dir == "y"
    args = parser.parse_args(["download", "fashioniq", "--urls", "u", "--out", "o"])
    assert args.legacy_dataset == "fashioniq" and args.output_dir == "o"
    args = parser.parse_args(["serve", "--generator-unet", "u", "--generator-backbone-2", "b",
                              "--generator-steps", "3"])
    assert (args.unet, args.backbone_2, args.steps) == ("u", "b", 3)
    args = parser.parse_args(["train-rtd", "--triplets", "t", "--backbone", "b", "--phi", "p", "--out", "run"])
    assert args.cfg_output_dir == "run"
    subs = _subparsers()
    for name in ("index", "download", "train-rtd"):
        text = subs[name].format_help()
        assert "--output-dir" in text and not re.search(r"--out\b(?!put)", text), name
    assert "--generator-unet" not in subs["serve"].format_help() and "--unet" in subs["serve"].format_help()


def test_wrong_choices_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--dataset", "cir", "--root", "r", "--output-dir", "o"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--dataset", "cirr", "--root", "r", "--output-dir", "o", "--dtype", "float16"])
    assert "invalid choice" in capsys.readouterr().err


def test_python_dash_m_zscir_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "zscir", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("zscir ")


# ---------------------------------------------------------------------------------------------
# Layering of the CLI glue


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_commands_do_not_import_each_other():
    shared = {"zscir.commands.options", "zscir.commands.common"}
    for path in (SRC / "commands").glob("*.py"):
        other = {m for m in _imports(path) if m.startswith("zscir.commands.") and m not in shared}
        assert not other, (path.name, other)


def _library_modules():
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "commands" or rel.name in ("cli.py", "__main__.py"):
            continue
        yield rel, path


def test_no_library_module_reads_an_argparse_namespace():
    for rel, path in _library_modules():
        assert "argparse" not in _imports(path), rel
        assert "zscir.commands" not in {m.rsplit(".", 1)[0] for m in _imports(path)}, rel


def test_library_errors_name_no_cli_flag():
    flag = re.compile(r"(?<![\w-])--[a-z]")
    found = []
    for rel, path in _library_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                texts = [c.value for c in ast.walk(node.exc)
                         if isinstance(c, ast.Constant) and isinstance(c.value, str)]
                found += [f"{rel}:{node.lineno}: {t}" for t in texts if flag.search(t)]
    assert not found, found


# ---------------------------------------------------------------------------------------------
# Errors that arrive early: every command checks its flags and paths before any heavy work


@pytest.fixture()
def no_heavy_work(monkeypatch):
    """Loading a model or reading a corpus fails the test: the command had to refuse before."""
    import zscir.models.backbone
    import zscir.training.phi
    import zscir.training.rtd

    def heavy(*args, **kwargs):
        raise AssertionError("heavy work started before the arguments were checked")

    monkeypatch.setattr(zscir.models.backbone.Backbone, "load", classmethod(heavy))
    monkeypatch.setattr(zscir.training.phi, "read_captions", heavy)
    monkeypatch.setattr(zscir.training.rtd, "read_triplets", heavy)


def _cases(tmp: Path):
    corpus = tmp / "captions.txt"
    corpus.write_text("a dog on the grass\n")
    triplets = tmp / "triplets.jsonl"
    triplets.write_text("{}\n")
    clip = tmp / "clip"  # a local backbone folder that exists (its content is never read)
    clip.mkdir()
    phi = tmp / "phi.pt"
    phi.write_bytes(b"")
    images = tmp / "images"
    images.mkdir()
    from zscir.models.phi import Phi

    phi_l14 = tmp / "phi-l14"
    Phi(8, 8, 8, backbone="ViT-L/14").save_pretrained(phi_l14)
    missing = str(tmp / "missing")
    lincir = ["train-phi", "--backbone", str(clip), "--corpus", str(corpus), "--output-dir", str(tmp / "run")]
    return [
        (lincir + ["--mixed-precision", "fp16"], "--mixed-precision fp16 needs a GPU"),
        (lincir + ["--val-dataset", "cirr", "--val-root", missing], "--val-root"),
        (lincir + ["--report-to", "mlflow"], "mlflow package is not installed"),
        (lincir + ["--warmup-steps", "5", "--lr-scheduler", "constant"], "--lr-scheduler"),
        (lincir[:3] + ["--corpus", missing], "--corpus"),
        (["train-phi", "--method", "searle", "--backbone", str(clip), "--tokens", missing], "--tokens"),
        (["train-phi", "--method", "searle", "--backbone", str(clip), "--tokens", str(images)], "--concepts"),
        (["train-phi", "--method", "searle", "--backbone", str(clip), "--tokens", str(images),
          "--concepts", "openimages"], "oidv7-class-descriptions.csv"),
        (["train-rtd", "--triplets", str(triplets), "--backbone", str(clip), "--phi", str(phi),
          "--val-dataset", "cirr", "--val-root", missing], "--val-root"),
        (["train-rtd", "--triplets", str(triplets), "--backbone", str(clip), "--phi", missing], "--phi"),
        (["train-rtd", "--triplets", str(triplets), "--backbone", str(clip), "--phi", str(phi),
          "--mixed-precision", "fp16"], "needs a GPU"),
        (["evaluate", "--dataset", "cirr", "--root", missing, "--backbone", str(clip), "--method", "image"],
         "--root"),
        (["evaluate", "--dataset", "cirr", "--root", str(images), "--backbone", str(clip)], "--method phi needs"),
        (["evaluate", "--dataset", "cirr", "--root", str(images), "--backbone", str(clip), "--method", "image",
          "--dtype", "fp16"], "--dtype fp16 needs a GPU"),
        (["evaluate", "--dataset", "cirr", "--root", str(images), "--backbone", "ViT-L14",
          "--method", "image"], "--backbone"),
        (["submit", "--dataset", "cirr", "--root", str(images), "--backbone", str(clip),
          "--phi", missing], "--phi"),
        (["evaluate", "--dataset", "cirr", "--root", str(images), "--backbone", "ViT-B/32",
          "--phi", str(phi_l14)], "was trained for backbone 'ViT-L/14', not 'ViT-B/32'"),
        (["index", "--images", missing, "--output-dir", str(tmp / "ix")], "--images"),
        (["index", "--images", str(images), "--output-dir", str(tmp / "ix")],  # ViT-L/14, the default, offline
         "openai/clip-vit-large-patch14 is not in the local hub cache"),
        (["index", "--images", str(images), "--output-dir", str(tmp / "ix"), "--backbone", missing], "--backbone"),
        (["index", "--images", str(images), "--output-dir", str(tmp / "ix"), "--backbone", str(clip),
          "--dtype", "fp16"], "needs a GPU"),
        (["invert", "--backbone", str(clip), "--images", str(images), "--output-dir", str(tmp / "tok")],
         "--concepts"),
        (["invert", "--backbone", str(clip), "--images", missing, "--output-dir", str(tmp / "tok"),
          "--phrase-weight", "0"], "--images"),
        (["invert", "--backbone", str(clip), "--images", str(images), "--output-dir", str(tmp / "tok"),
          "--concepts", str(corpus)], "--phrases"),
        (["generate", "--dataset", "cirr", "--root", missing, "--output-dir", str(tmp / "g"), "--phi", str(phi)],
         "--root"),
        (["generate", "--dataset", "cirr", "--root", str(images), "--output-dir", str(tmp / "g"),
          "--phi", missing], "--phi"),
        (["train-generator", "--images", str(images), "--phi", str(phi), "--backbone", str(clip),
          "--mixed-precision", "fp16"], "needs a GPU"),
        (["train-generator", "--images", missing, "--phi", str(phi), "--backbone", str(clip)], "--images"),
        (["search", "--index", missing, "--method", "image", "--image", str(phi)], "--index"),
    ]


def test_errors_arrive_before_any_heavy_work(tmp_path, capsys, no_heavy_work):
    import torch

    if torch.cuda.is_available():
        pytest.skip("the fp16 cases assume a machine without a GPU")
    for argv, expected in _cases(tmp_path):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert expected in err and err.count("\n") == 1, (argv, err)


def test_every_readme_command_parses():
    """The README's `zscir ...` examples use flags that exist ("[--x]" marks an optional flag)."""
    import shlex

    text = (Path(__file__).parents[1] / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("zscir ") and "--help" not in line:
                commands.append(re.sub(r"\[(--[\w-]+)\]", r"\1", line))
    assert len(commands) >= 10
    parser = build_parser()
    for command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"README example does not parse: {command}")
