"""Command line: ``diffem SUBCOMMAND ...``.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (a callable
taking the parsed args and returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules that provide subcommands, in the order they appear in --help.
SUBCOMMAND_MODULES = [
    "deblur",          # diffem deblur, diffem demo
    "kernels",         # diffem kernels, diffem train-kernel-denoiser, diffem fig4
    "priors",          # diffem train-prior, diffem convert-checkpoint, diffem prior-quality
    "bench",           # diffem bench, diffem bench-merge
]


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    from diffem import __version__

    parser = argparse.ArgumentParser(prog="diffem", description="Blind image deblurring with diffusion priors.")
    parser.add_argument("--version", action="version", version=f"diffem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(f"diffem.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from diffem.perf import configure_cpu

    configure_cpu()  # glibc malloc settings: the biggest CPU win for large tensors
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, PermissionError) as e:
        print(f"diffem {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffem {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
