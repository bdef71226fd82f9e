"""What the command groups share: the command table type and the options of analysing commands."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from JMIDAnomalyLib.inference.methods import EXPLAIN_METHODS

#: A subcommand: (help, add_arguments(parser), run(args) -> exit status).
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--bundle, --explain, --organs and --device: what analyzes a CT (analyze and review)."""
    parser.add_argument(
        "--bundle",
        required=True,
        type=Path,
        action="append",
        help="model bundle (folder or zip) or a folder of bundles; repeat for more organs",
    )
    parser.add_argument(
        "--explain",
        choices=EXPLAIN_METHODS,
        default=EXPLAIN_METHODS[0],
        help=f"heatmap method (default {EXPLAIN_METHODS[0]})",
    )
    parser.add_argument("--organs", help="comma-separated organs (default: every bundle's)")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")


def organ_list(text: str | None) -> list[str]:
    """``"liver, spleen"`` -> ``["liver", "spleen"]``; None or empty -> ``[]``."""
    return [o.strip() for o in text.split(",") if o.strip()] if text else []
