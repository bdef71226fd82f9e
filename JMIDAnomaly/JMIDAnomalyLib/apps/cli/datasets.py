"""``jmid dataset``, and the ``--manifest`` forms of ``segment``, ``crop`` and ``analyze``.

The batch forms share one loop (:func:`~JMIDAnomalyLib.common.batch.run_batch`): models loaded
once, cases already done skipped, failures recorded per case, ``--shard K/N`` (or the SLURM /
torchrun environment) splitting the work.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from JMIDAnomalyLib.apps.cli.options import Command, build_segmenter, finish_batch, organ_list


def _add_dataset(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="root", required=True, type=Path, help="dataset folder")
    parser.add_argument(
        "--layout",
        default="auto",
        help="cohort (images/, segs/), nnunet (imagesTr/, labelsTr/), published "
        "(<organ>/jmid_*_0000.nii.gz), folder (volume files), dicom (a DICOM tree); "
        "default: detected",
    )
    parser.add_argument(
        "--segs", type=Path, help="segmentations named <case_id>.nii.gz (jmid segment --manifest)"
    )
    parser.add_argument(
        "--reports", type=Path, help="report export (CSV, JSON Lines or folder): patient ids"
    )
    parser.add_argument("--out", required=True, type=Path, help="manifest CSV to write")


def _report_patients(path: Path) -> dict[str, str]:
    from JMIDAnomalyLib.labels.reports import Report, read_reports

    problems: list[str] = []
    return {r.case_id: r.patient_id for r in read_reports(path, problems) if isinstance(r, Report)}


def _run_dataset(args: argparse.Namespace) -> int:
    from JMIDAnomalyLib.imaging.manifest import (
        detect_layout,
        join_reports,
        scan_dataset,
        write_manifest,
    )

    layout = detect_layout(args.root) if args.layout == "auto" else args.layout
    rows, notes = scan_dataset(args.root, layout, args.segs)
    for note in notes:
        print(f"  note: {note}")
    if args.reports:
        rows, matched = join_reports(rows, _report_patients(args.reports))
        print(f"reports: {matched} of {len(rows)} cases have one ({args.reports})")
    with_seg = sum(bool(r.seg) for r in rows)
    write_manifest(rows, args.out)
    print(f"{len(rows)} cases ({layout} layout, {with_seg} with a segmentation) -> {args.out}")
    return 0


def _dataset(args: argparse.Namespace):
    """The manifest's rows and this process's shard (--manifest, --shard or the environment)."""
    from JMIDAnomalyLib.common.sharding import resolve_shard
    from JMIDAnomalyLib.imaging.manifest import read_manifest

    return read_manifest(args.manifest), resolve_shard(args.shard)


def segment_manifest(args: argparse.Namespace) -> int:
    """``jmid segment --manifest M --out DIR``."""
    from JMIDAnomalyLib.common.progress import console_progress
    from JMIDAnomalyLib.common.sharding import local_device
    from JMIDAnomalyLib.segmentation.batch import segment_dataset

    rows, shard = _dataset(args)
    if args.out.exists() and not args.out.is_dir():
        from JMIDAnomalyLib.common.errors import InputError

        raise InputError(args.out, "with --manifest, --out is a folder; this is a file")
    segmenter = build_segmenter(args, local_device(args.device))
    summary = segment_dataset(segmenter, rows, args.out, shard, console_progress("segment"))
    return finish_batch(summary, args.out)


def crop_manifest(args: argparse.Namespace, config) -> int:
    """``jmid crop --manifest M --cache DIR``."""
    from JMIDAnomalyLib.common.devices import available_cores
    from JMIDAnomalyLib.common.progress import console_progress
    from JMIDAnomalyLib.imaging.crop_batch import build_crop_cache

    if not args.cache:
        from JMIDAnomalyLib.common.errors import InputError

        raise InputError("--cache", "jmid crop --manifest fills a crop cache: give --cache DIR")
    rows, shard = _dataset(args)
    organs = tuple(organ_list(args.organs))
    workers = args.workers or available_cores()
    summary = build_crop_cache(
        rows, args.cache, organs, config, shard, workers, args.verify, console_progress("crop")
    )
    return finish_batch(summary, args.cache)


def analyze_manifest(args: argparse.Namespace, settings: dict) -> int:
    """``jmid analyze --manifest M --out DIR``: ``settings`` are the AnalyzeConfig fields."""
    from JMIDAnomalyLib.common.progress import console_progress
    from JMIDAnomalyLib.common.sharding import local_device
    from JMIDAnomalyLib.inference.analyze_job import AnalysisRunner, analyze_dataset

    rows, shard = _dataset(args)
    settings = {**settings, "device": local_device(settings["device"])}
    summary = analyze_dataset(
        AnalysisRunner(), rows, args.out, settings, shard, console_progress("analyze")
    )
    return finish_batch(summary, args.out)


COMMANDS: dict[str, Command] = {
    "dataset": (
        "write a dataset manifest from a folder of CTs (cohort, nnU-Net, published, DICOM)",
        _add_dataset,
        _run_dataset,
    ),
}
