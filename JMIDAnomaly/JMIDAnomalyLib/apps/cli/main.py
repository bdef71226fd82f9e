"""The ``jmid`` command line. Each subcommand is a thin layer over a library call.

Errors about the user's input end the command with one line naming the file and the problem
(exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from JMIDAnomalyLib import __version__
from JMIDAnomalyLib.apps.cli import analysis, datasets, demo, images, labels, training
from JMIDAnomalyLib.apps.cli.options import Command
from JMIDAnomalyLib.common.errors import JMIDError

logger = logging.getLogger("jmid")


COMMANDS: dict[str, Command] = {
    **demo.COMMANDS,
    **datasets.COMMANDS,
    **images.COMMANDS,
    **training.COMMANDS,
    **analysis.COMMANDS,
    **labels.COMMANDS,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``jmid`` argument parser: one subcommand per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="jmid",
        description="JMID Anomaly: abdominal organ anomaly detection on CT, trained from reports.",
    )
    parser.add_argument("--version", action="version", version=f"jmid {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command_parser)
        command_parser.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``jmid``; returns the exit status (0 ok, 2 bad input or usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args))
    except JMIDError as exc:
        print(f"jmid {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jmid {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
