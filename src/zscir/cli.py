"""`zscir <command>`: the command-line entry point.

Every command lives in its own module under `zscir.commands` with three names:
`HELP` (one line), `add_arguments(parser)` and `run(args) -> int`. Command modules keep
their heavy imports inside `run`, so `zscir --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from zscir.commands.options import HelpFormatter
from zscir.errors import ZscirError

# command name -> module path; the order is the order shown by --help.
COMMANDS: dict[str, str] = {
    "demo": "zscir.commands.demo",
    "models": "zscir.commands.models",
    "evaluate": "zscir.commands.evaluate",
    "submit": "zscir.commands.submit",
    "check-data": "zscir.commands.check_data",
    "download": "zscir.commands.download",
    "train-clip": "zscir.commands.train_clip",
    "train-world-generator": "zscir.commands.train_world_generator",
    "train-phi": "zscir.commands.train_phi",
    "train-rtd": "zscir.commands.train_rtd",
    "invert": "zscir.commands.invert",
    "train-generator": "zscir.commands.train_generator",
    "generate": "zscir.commands.generate",
    "index": "zscir.commands.index",
    "search": "zscir.commands.search",
    "serve": "zscir.commands.serve",
}


def _available_commands() -> dict[str, object]:
    """Import the command modules that exist (a feature not built yet is simply absent)."""
    found = {}
    for name, module_path in COMMANDS.items():
        try:
            found[name] = importlib.import_module(module_path)
        except ModuleNotFoundError as exc:
            if exc.name != module_path:
                raise
    return found


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one sub-parser per available command."""
    parser = argparse.ArgumentParser(
        prog="zscir", description="Zero-shot composed image retrieval toolkit (SEARLE, LinCIR, Pic2Word, RTD, CIG)."
    )
    parser.add_argument("--version", action="version", version=f"zscir {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, module in _available_commands().items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _version() -> str:
    from zscir import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code. Library errors print one clear line."""
    # One clear line per problem, not library load reports and weight-loading bars.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except ZscirError as exc:
        flag = f" (--{exc.setting.replace('_', '-')})" if getattr(exc, "setting", None) else ""
        print(f"zscir {args.command}: error: {exc}{flag}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zscir {args.command}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
