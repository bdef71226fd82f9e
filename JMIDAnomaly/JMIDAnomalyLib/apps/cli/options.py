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


def add_batch_options(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """--ct or --manifest (one required), and --shard: what every dataset command takes.

    Returns the --ct/--manifest group (for commands that add more single-case inputs)."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--ct", type=Path, help="CT volume file or DICOM folder")
    what.add_argument(
        "--manifest", type=Path, help="dataset manifest CSV (jmid dataset): every case of it"
    )
    parser.add_argument(
        "--shard",
        help="with --manifest: do shard K/N, every N-th case from the K-th (default: from "
        "SLURM_ARRAY_TASK_ID/COUNT or torchrun's RANK/WORLD_SIZE, else all)",
    )
    return what


def finish_batch(summary, folder: Path) -> int:
    """Write a batch summary into ``folder``, print its counts and failures; the exit status."""
    path = summary.write(folder)
    print(f"{summary.describe()} ({summary.shard.source}); summary {path}")
    for failure in summary.failures:
        print(f"  failed {failure.case_id}: {failure.reason}")
    return summary.exit_status


def build_segmenter(args: argparse.Namespace, device: str):
    """The :class:`~JMIDAnomalyLib.segmentation.nnunet.OrganSegmenter` of ``jmid segment``'s
    options (--model, --folds, --checkpoint, --step-size, --mirroring, --orientation)."""
    from JMIDAnomalyLib.segmentation.nnunet import OrganSegmenter

    folds = tuple(f.strip() for f in args.folds.split(",")) if args.folds else None
    return OrganSegmenter(
        args.model,
        folds,
        args.checkpoint,
        args.step_size,
        args.mirroring,
        device,
        None if args.orientation.lower() == "none" else args.orientation,
    )
