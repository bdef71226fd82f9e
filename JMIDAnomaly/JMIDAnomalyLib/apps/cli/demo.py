"""``jmid demo``, ``cohort`` and ``fetch-examples``: the built-in demo data."""

from __future__ import annotations

import argparse
from pathlib import Path

from JMIDAnomalyLib.apps.cli.options import Command, organ_list
from JMIDAnomalyLib.common.errors import JMIDError


def _add_demo(parser: argparse.ArgumentParser) -> None:
    from JMIDAnomalyLib.demo.run import DemoSettings

    d = DemoSettings()
    parser.add_argument("--out", type=Path, default=Path("jmid-demo"), help="output folder")
    parser.add_argument("--cases", type=int, default=d.cases, help=f"cohort size ({d.cases})")
    parser.add_argument("--seed", type=int, default=d.seed, help="cohort and training seed")
    parser.add_argument("--organs", default=",".join(d.organs), help="organs to train")
    parser.add_argument("--folds", type=int, default=d.folds, help=f"folds ({d.folds})")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs ({d.epochs})")
    parser.add_argument(
        "--holdout", type=int, default=d.holdout, help="test cases to analyze with heatmaps"
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=d.test_fraction,
        help=f"share of the cases held out as the test set, whole patients ({d.test_fraction})",
    )
    parser.add_argument("--model", default=d.model, help=f"classifier ({d.model})")
    parser.add_argument(
        "--other-cases",
        type=int,
        default=d.other_cases,
        help=f"cases of another patient to score the bundle on ({d.other_cases}; 0: none)",
    )


def _run_demo(args: argparse.Namespace) -> int:
    from JMIDAnomalyLib.common.progress import console_progress
    from JMIDAnomalyLib.demo.run import DemoSettings, run_demo

    if args.other_cases < 0:
        raise JMIDError("--other-cases must be 0 or more")
    organs = tuple(organ_list(args.organs))
    settings = DemoSettings(
        args.cases,
        args.seed,
        organs,
        args.folds,
        args.epochs,
        args.holdout,
        args.model,
        args.test_fraction,
        args.other_cases,
    )
    result = run_demo(args.out, settings, progress=console_progress("demo"))
    print(result.table())
    print()
    for what, path in result.files.items():
        print(f"{what:14s} {path}")
    return 0


def _add_cohort(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--cases", type=int, default=60, help="number of exams (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same cohort)")
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.1,
        help="share of findings the reports leave out (default 0.1)",
    )
    parser.add_argument(
        "--source-ct", type=Path, help="make the cases from this CT (default: the example CT)"
    )
    parser.add_argument("--source-seg", type=Path, help="its organ segmentation (with --source-ct)")
    parser.add_argument(
        "--source-labels", type=Path, help="the segmentation's label table, if it carries none"
    )
    parser.add_argument(
        "--source-enhanced",
        action="store_true",
        help="the source CT is contrast-enhanced already (portal venous): add no enhancement",
    )


def _run_cohort(args: argparse.Namespace) -> int:
    import time

    from JMIDAnomalyLib.common.progress import console_progress
    from JMIDAnomalyLib.demo.cohort import build_cohort

    if args.cases < 1 or not 0 <= args.label_noise <= 1:
        raise JMIDError("--cases must be at least 1 and --label-noise within 0..1")
    if bool(args.source_ct) != bool(args.source_seg):
        raise JMIDError("--source-ct and --source-seg go together")
    if args.source_enhanced and not args.source_ct:
        raise JMIDError("--source-enhanced describes a --source-ct")
    source = None
    if args.source_ct:
        source = (str(args.source_ct), str(args.source_seg), str(args.source_labels or ""))
    start = time.perf_counter()
    summary = build_cohort(
        args.out,
        args.cases,
        args.seed,
        args.label_noise,
        progress=console_progress("cohort"),
        source=source,
        source_enhanced=args.source_enhanced,
    )
    seconds = time.perf_counter() - start
    print(
        f"{summary['cases']} cases of {summary['patients']} patients, "
        f"{summary['cases_with_findings']} with findings, in {seconds:.0f} s; "
        f"{summary['size_mb']} MB on disk"
    )
    for kind, count in summary["findings"].items():
        print(f"  {kind:40s} {count}")
    print(f"cohort written to {args.out} (contact sheet: contact_sheet.png)")
    return 0


def _add_fetch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache", type=Path, help="cache folder (default $JMID_CACHE_DIR or ~/.cache/jmid)"
    )


def _run_fetch(args: argparse.Namespace) -> int:
    from JMIDAnomalyLib.demo.reference_data import fetch_reference_data

    data = fetch_reference_data(args.cache)
    print(data.root)
    return 0


COMMANDS: dict[str, Command] = {
    "demo": ("run the main job on the built-in demo data", _add_demo, _run_demo),
    "cohort": ("build the demo cohort (CTs, planted findings, reports)", _add_cohort, _run_cohort),
    "fetch-examples": ("download the real example CTs into the cache", _add_fetch, _run_fetch),
}
