"""The ``asr`` command: one subcommand per stage, plus transcribe and score.

Each module in ``COMMAND_MODULES`` defines ``register(subparsers)`` and adds its subcommands with
``parser.set_defaults(func=...)``; ``func(args) -> int`` returns the exit code. User-facing problems
raise :class:`asr.errors.AsrError` and are printed here as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

from asr import __version__
from asr.errors import AsrError

COMMAND_MODULES = [
    "asr.datadir",
    "asr.datadir_ops",
    "asr.lhotse_io",
    "asr.make_feats",
    "asr.cmvn",
    "asr.perturb_speed",
    "asr.noise",
    "asr.perturb_feats",
    "asr.tokens",
    "asr.train",
    "asr.decode",
    "asr.align",
    "asr.subsegment",
    "asr.tune_lm",
    "asr.lm.build",
    "asr.graph",
    "asr.score_files",
    "asr.report",
    "asr.results",
    "asr.transcribe",
    "asr.export",
    "asr.download",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"asr {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except AsrError as e:
        print(f"asr {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"asr {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
