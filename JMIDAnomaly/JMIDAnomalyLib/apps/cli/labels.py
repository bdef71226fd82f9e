"""``jmid labels``: per-organ labels from radiology reports."""

from __future__ import annotations

import argparse
from pathlib import Path

from JMIDAnomalyLib.apps.cli.options import Command


def _add_labels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reports", required=True, type=Path, help="J-MID export CSV, JSON Lines, or a folder"
    )
    parser.add_argument("--out", type=Path, help="output folder for <organ>.csv and summary.json")
    parser.add_argument(
        "--explain",
        metavar="CASE",
        help="print why each label of one case was set (sentence and deciding cue); writes nothing",
    )
    parser.add_argument(
        "--taxonomy",
        type=Path,
        help="folder of keyword tables (<organ>.csv) replacing the built-in ones",
    )
    parser.add_argument(
        "--uncertain",
        choices=("positive", "negative", "ignore"),
        default="positive",
        help="label for uncertain findings (疑い, possible); ignore leaves the cell empty",
    )
    parser.add_argument(
        "--unmentioned",
        choices=("normal", "unknown"),
        default="normal",
        help="organs the report never mentions: normal (nofinding=1) or unknown (empty)",
    )
    parser.add_argument(
        "--no-crosscheck",
        action="store_true",
        help="skip comparing structured and free-text labels",
    )


def _run_labels(args: argparse.Namespace) -> int:
    from JMIDAnomalyLib.apps.trainer import TrainerLogic
    from JMIDAnomalyLib.common.errors import InputError
    from JMIDAnomalyLib.common.progress import console_progress

    policy = (args.uncertain, args.unmentioned, str(args.taxonomy) if args.taxonomy else None)
    if args.explain:
        print("\n".join(TrainerLogic().explain_labels(args.reports, args.explain, *policy)))
        return 0
    if args.out is None:
        raise InputError("--out", "is required (or --explain CASE)")
    summary = TrainerLogic().import_labels(
        args.reports,
        args.out,
        *policy,
        not args.no_crosscheck,
        progress=console_progress("labels"),
    )
    print(
        f"reports read {summary['reports_read']}, labelled {summary['reports_labelled']}, "
        f"skipped {len(summary['rows_skipped'])}"
    )
    for organ, counts in summary["counts"].items():
        shown = ", ".join(f"{c} {n}" for c, n in counts.items() if not c.endswith(":unknown"))
        print(f"  {organ:12s} {shown}")
    top = list(summary["unmapped_terms"].items())[:10]
    if top:
        print("unmapped terms (-> other_abnormality): " + ", ".join(f"{t} ({n})" for t, n in top))
    print(f"labels written to {args.out}")
    return 0


COMMANDS: dict[str, Command] = {
    "labels": ("per-organ labels from radiology reports", _add_labels, _run_labels),
}
