"""The ``jmid`` command line. Each subcommand is a thin layer over a library call.

Errors about the user's input end the command with one line naming the file and the problem
(exit status 2), never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .cli_models import (
    _add_analyze,
    _add_evaluate,
    _add_review,
    _add_train,
    _run_analyze,
    _run_evaluate,
    _run_review,
    _run_train,
)
from .errors import JMIDError
from .organs import ORGANS

logger = logging.getLogger("jmid")

#: name -> (help, add_arguments(parser), run(args) -> exit status)
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


def _add_fetch(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache", type=Path, help="cache folder (default $JMID_CACHE_DIR or ~/.cache/jmid)"
    )


def _run_fetch(args: argparse.Namespace) -> int:
    from .referencedata import fetch_reference_data

    data = fetch_reference_data(args.cache)
    print(data.root)
    return 0


def _add_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, type=Path, help="CT volume file or DICOM folder")


def _run_info(args: argparse.Namespace) -> int:
    import numpy as np
    import SimpleITK as sitk

    from .geometry import Grid
    from .imageio import read_ct

    image = read_ct(args.ct)
    grid = Grid.from_image(image)
    values = sitk.GetArrayViewFromImage(image)
    print(f"size (x, y, z):     {grid.size}")
    print(f"spacing (mm):       {tuple(round(v, 4) for v in grid.spacing)}")
    print(f"origin (LPS, mm):   {tuple(round(v, 3) for v in grid.origin)}")
    print(f"direction (LPS):    {tuple(round(v, 4) for v in grid.direction)}")
    p1, p50, p99 = np.percentile(values, [1, 50, 99])
    print(f"HU 1/50/99 %:       {p1:.0f} / {p50:.0f} / {p99:.0f}")
    return 0


def _add_scene(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, type=Path, help="CT volume file or DICOM folder")
    parser.add_argument("--seg", type=Path, help="organ label map on the CT's grid")
    parser.add_argument(
        "--labels", type=Path, help="label table JSON (value -> name, or dataset.json)"
    )
    parser.add_argument(
        "--all-structures",
        action="store_true",
        help="keep every structure of the label map (default: only the seven abdominal organs)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output scene, .mrb or .mrml")


def _run_scene(args: argparse.Namespace) -> int:
    from slicer import vtkMRMLScene

    from .imageio import read_ct, read_label_map
    from .labelmaps import read_label_names, select_organs
    from .mrml import save_scene
    from .scenes import add_case_to_scene

    ct = read_ct(args.ct)
    label_map, names = None, None
    if args.seg:
        label_map = read_label_map(args.seg, reference=ct)
        names = read_label_names(args.labels) if args.labels else {}
        if not args.all_structures and names:
            label_map, names = select_organs(label_map, names)
    scene = vtkMRMLScene()
    add_case_to_scene(scene, ct, label_map, names)
    print(save_scene(scene, args.out))
    return 0


def _add_labels(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reports", required=True, type=Path, help="J-MID export CSV, JSON Lines, or a folder"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder for <organ>.csv and summary.json"
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
    parser.add_argument("--no-crosscheck", action="store_true",
                        help="skip comparing structured and free-text labels")  # fmt: skip


def _run_labels(args: argparse.Namespace) -> int:
    from .progress import console_progress
    from .trainerlogic import TrainerLogic

    summary = TrainerLogic().import_labels(
        args.reports, args.out, args.uncertain, args.unmentioned,
        str(args.taxonomy) if args.taxonomy else None, not args.no_crosscheck,
        progress=console_progress("labels"),
    )  # fmt: skip
    print(f"reports read {summary['reports_read']}, labelled {summary['reports_labelled']}, "
          f"skipped {len(summary['rows_skipped'])}")  # fmt: skip
    for organ, counts in summary["counts"].items():
        shown = ", ".join(f"{c} {n}" for c, n in counts.items() if not c.endswith(":unknown"))
        print(f"  {organ:12s} {shown}")
    top = list(summary["unmapped_terms"].items())[:10]
    if top:
        print("unmapped terms (-> other_abnormality): " + ", ".join(f"{t} ({n})" for t, n in top))
    print(f"labels written to {args.out}")
    return 0


def _add_segment(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, type=Path, help="CT volume file or DICOM folder")
    parser.add_argument(
        "--model", required=True, type=Path, help="nnU-Net v2 model (trainer output) folder"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output label map (.nii.gz, .nrrd, .mha)"
    )
    parser.add_argument("--folds", help="comma-separated folds (default: all in the folder)")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    parser.add_argument(
        "--step-size", type=float, default=0.5, help="sliding-window step (fraction of patch)"
    )
    parser.add_argument(
        "--mirroring",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="test-time mirroring (default: on for GPU, off for CPU)",
    )
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument(
        "--orientation",
        default="none",
        help="reorient to this DICOM code first (RAS: TotalSegmentator)",
    )


def _run_segment(args: argparse.Namespace) -> int:
    from .cropjob import default_label_table
    from .imageio import read_ct, write_image
    from .labelmaps import write_label_names
    from .progress import console_progress
    from .segmentation import OrganSegmenter

    folds = tuple(f.strip() for f in args.folds.split(",")) if args.folds else None
    segmenter = OrganSegmenter(
        args.model, folds, args.checkpoint, args.step_size, args.mirroring, args.device,
        None if args.orientation.lower() == "none" else args.orientation,
    )  # fmt: skip
    labels = segmenter.segment(read_ct(args.ct), progress=console_progress("segment"))
    write_image(labels, args.out)
    table = default_label_table(args.out)
    write_label_names(segmenter.label_names, table)
    print(f"label map written to {args.out} (label table {table.name})")
    return 0


def _add_crop(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, type=Path, help="CT volume file or DICOM folder")
    parser.add_argument("--seg", required=True, type=Path, help="organ label map on the CT's grid")
    parser.add_argument(
        "--labels",
        type=Path,
        help="label table JSON (default: SEG's name with .json, as jmid segment writes)",
    )
    parser.add_argument(
        "--organs", default=",".join(ORGANS), help="comma-separated organs (default all)"
    )
    parser.add_argument(
        "--preset",
        choices=("published", "demo"),
        default="published",
        help="grid and 2.5D layout: published 64x256x256, demo 24x64x64",
    )
    parser.add_argument("--mode", choices=("mask", "box"), help="mask (default) or bounding box")
    parser.add_argument(
        "--margin-mm",
        type=float,
        help="mask dilation / box margin (default 3 mm; negative: mask erosion)",
    )
    parser.add_argument("--fill-hu", type=float, help="HU outside the mask (default: air)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")  # fmt: skip


def _run_crop(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .cropjob import crop_case
    from .crops import CropConfig

    config = CropConfig.preset(args.preset)
    overrides = {
        k: v
        for k, v in (("mode", args.mode), ("margin_mm", args.margin_mm), ("fill_hu", args.fill_hu))
        if v is not None
    }
    config = replace(config, **overrides)
    organs = tuple(o.strip() for o in args.organs.split(",") if o.strip())
    crops = crop_case(args.ct, args.seg, args.out, organs, config, args.labels)
    for crop in crops:
        size = "x".join(map(str, crop.record.crop.shape_zyx)) if crop.record else "-"
        print(
            f"{crop.key:14s} {crop.status:10s} {crop.volume_ml:9.1f} ml  {size:12s} {crop.message}"
        )
    print(f"crops written to {args.out}")
    return 0


def _add_cohort(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--cases", type=int, default=60, help="number of exams (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same cohort)")
    parser.add_argument("--label-noise", type=float, default=0.1,
                        help="share of findings the reports leave out (default 0.1)")  # fmt: skip


def _run_cohort(args: argparse.Namespace) -> int:
    import time

    from .cohort import build_cohort
    from .progress import console_progress

    if args.cases < 1 or not 0 <= args.label_noise <= 1:
        raise JMIDError("--cases must be at least 1 and --label-noise within 0..1")
    start = time.perf_counter()
    summary = build_cohort(args.out, args.cases, args.seed, args.label_noise,
                           progress=console_progress("cohort"))  # fmt: skip
    seconds = time.perf_counter() - start
    print(f"{summary['cases']} cases of {summary['patients']} patients, "
          f"{summary['cases_with_findings']} with findings, in {seconds:.0f} s; "
          f"{summary['size_mb']} MB on disk")  # fmt: skip
    for kind, count in summary["findings"].items():
        print(f"  {kind:40s} {count}")
    print(f"cohort written to {args.out} (contact sheet: contact_sheet.png)")
    return 0


def _add_demo(parser: argparse.ArgumentParser) -> None:
    from .demo import DemoSettings

    d = DemoSettings()
    parser.add_argument("--out", type=Path, default=Path("jmid-demo"), help="output folder")
    parser.add_argument("--cases", type=int, default=d.cases, help=f"cohort size ({d.cases})")
    parser.add_argument("--seed", type=int, default=d.seed, help="cohort and training seed")
    parser.add_argument("--organs", default=",".join(d.organs), help="organs to train")
    parser.add_argument("--folds", type=int, default=d.folds, help=f"folds ({d.folds})")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs ({d.epochs})")
    parser.add_argument("--holdout", type=int, default=d.holdout, help="held-out cases to analyze")
    parser.add_argument("--model", default=d.model, help=f"classifier ({d.model})")


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_demo
    from .progress import console_progress

    organs = tuple(o.strip() for o in args.organs.split(",") if o.strip())
    settings = DemoSettings(args.cases, args.seed, organs, args.folds, args.epochs,
                            args.holdout, args.model)  # fmt: skip
    result = run_demo(args.out, settings, progress=console_progress("demo"))
    print(result.table())
    print()
    for what, path in result.files.items():
        print(f"{what:14s} {path}")
    return 0


COMMANDS: dict[str, Command] = {
    "demo": ("run the main job on the built-in demo data", _add_demo, _run_demo),
    "fetch-examples": ("download the real example CTs into the cache", _add_fetch, _run_fetch),
    "cohort": ("build the demo cohort (CTs, planted findings, reports)", _add_cohort, _run_cohort),
    "crop": ("crop organs from a CT for the classifier", _add_crop, _run_crop),
    "info": ("read and validate a CT; print its geometry", _add_info, _run_info),
    "train": ("train an organ's k-fold ensemble into a model bundle", _add_train, _run_train),
    "evaluate": ("metrics, ROC and confusion plots of a bundle", _add_evaluate, _run_evaluate),
    "analyze": ("scores and heatmaps of a CT with model bundles", _add_analyze, _run_analyze),
    "segment": ("segment organs with an nnU-Net v2 model folder", _add_segment, _run_segment),
    "labels": ("per-organ labels from radiology reports", _add_labels, _run_labels),
    "scene": ("write a Slicer scene with a CT and its organ segmentation", _add_scene, _run_scene),
    "review": ("read cases and review errors in the browser (trame-slicer)", _add_review,
               _run_review),
}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
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
