"""``jmid analyze`` and ``jmid review``: analysing CTs, in files or in the browser."""

from __future__ import annotations

import argparse
from pathlib import Path

from JMIDAnomalyLib.apps.cli.options import (
    Command,
    add_batch_options,
    add_model_options,
    organ_list,
)


def _add_analyze(parser: argparse.ArgumentParser) -> None:
    add_batch_options(parser)
    seg = parser.add_mutually_exclusive_group()
    seg.add_argument(
        "--seg",
        type=Path,
        help="organ segmentation: a label map on the CT's grid, a .seg.nrrd or a DICOM SEG",
    )
    seg.add_argument(
        "--seg-model",
        type=Path,
        help="nnU-Net v2 model folder to segment with (with --manifest: the cases without seg)",
    )
    parser.add_argument(
        "--seg-labels",
        type=Path,
        help="label table of --seg when the file carries none (default: SEG's name with .json)",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="results folder (--manifest: one per case in it)"
    )
    add_model_options(parser)
    parser.add_argument("--no-scene", action="store_true", help="skip the Slicer scene")
    parser.add_argument(
        "--dicom-out",
        action="store_true",
        help="also write OUT/dicom/: DICOM SEG and parametric maps (CT given as DICOM)",
    )


def _run_analyze(args: argparse.Namespace) -> int:
    from JMIDAnomalyLib.common.errors import InputError
    from JMIDAnomalyLib.common.progress import console_progress
    from JMIDAnomalyLib.inference.analyze_job import AnalysisRunner, AnalyzeConfig
    from JMIDAnomalyLib.models.domain import OUTSIDE_NOTE

    settings = {
        "bundles": [str(b) for b in args.bundle],
        "seg_model": str(args.seg_model or ""),
        "explain": args.explain,
        "organs": organ_list(args.organs),
        "device": args.device,
        "scene": not args.no_scene,
        "dicom": args.dicom_out,
    }
    if args.manifest:
        from JMIDAnomalyLib.apps.cli.datasets import analyze_manifest

        if args.seg:
            raise InputError("--seg", "with --manifest the segmentations are the seg column")
        return analyze_manifest(args, settings)
    config = AnalyzeConfig(
        ct=str(args.ct),
        out=str(args.out),
        seg=str(args.seg or ""),
        seg_labels=str(args.seg_labels or ""),
        **settings,
    )
    analysis = AnalysisRunner().run(config, console_progress("analyze")).analysis
    for organ in analysis.organs:
        if not organ.scores:
            print(f"  {organ.key:18s} {organ.status}: {organ.message}")
            continue
        flagged = ", ".join(organ.flagged) or "no finding above threshold"
        top = organ.abnormal[0]
        print(f"  {organ.key:18s} {flagged:40s} (top {top.cls} {top.probability:.2f})")
        if organ.outside_training_data:
            print(f"  {'':18s} {OUTSIDE_NOTE} (domain ratio {organ.domain_ratio:.1f})")
    print(f"scores.json, heatmaps, overview.png and scene.mrb written to {args.out}")
    return 0


def _add_review(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--ct", type=Path, help="a CT volume file or DICOM folder to read")
    what.add_argument(
        "--cases",
        type=Path,
        help="predictions CSV of jmid evaluate: read its cases and review its errors",
    )
    add_model_options(parser)
    parser.add_argument("--seg", type=Path, help="organ label map of --ct (else --seg-model)")
    parser.add_argument("--seg-labels", type=Path, help="label table of --seg")
    parser.add_argument("--seg-model", type=Path, help="nnU-Net v2 model folder to segment with")
    parser.add_argument("--data-root", type=Path, help="the cases' folder (images/, segs/)")
    parser.add_argument(
        "--feedback", type=Path, help="marks CSV (default: feedback.csv beside --cases)"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 serves the "
        "network); every address needs sign-in",
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    parser.add_argument(
        "--users",
        type=Path,
        help="readers' file of hashed passwords (jmid review-user); default: a token in the URL",
    )
    parser.add_argument("--reader", help="the name marks record with the token (default: login)")
    parser.add_argument("--certfile", type=Path, help="TLS certificate (with --keyfile)")
    parser.add_argument("--keyfile", type=Path, help="TLS private key")


def _run_review(args: argparse.Namespace) -> int:
    from JMIDAnomalyLib.apps.webreview.app import ReviewOptions
    from JMIDAnomalyLib.apps.webreview.server import serve

    options = ReviewOptions(
        bundles=[str(b) for b in args.bundle],
        ct=str(args.ct or ""),
        seg=str(args.seg or ""),
        seg_labels=str(args.seg_labels or ""),
        seg_model=str(args.seg_model or ""),
        cases=str(args.cases or ""),
        data_root=str(args.data_root or ""),
        feedback=str(args.feedback or ""),
        explain=args.explain,
        device=args.device,
        organs=organ_list(args.organs),
        users=str(args.users or ""),
        reader=args.reader or "",
        certfile=str(args.certfile or ""),
        keyfile=str(args.keyfile or ""),
    )
    serve(options, args.host, args.port)
    return 0


def _add_review_user(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", required=True, type=Path, help="the users file (created)")
    parser.add_argument("--name", required=True, help="the reader's name")


def _run_review_user(args: argparse.Namespace) -> int:
    import getpass
    import sys

    from JMIDAnomalyLib.apps.webreview.access import add_user, check_reader_name

    check_reader_name(args.name)
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ; nothing written", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\n")
    add_user(args.users, args.name, password)
    print(f"{args.name} can sign in to jmid review --users {args.users}")
    return 0


COMMANDS: dict[str, Command] = {
    "analyze": ("scores and heatmaps of a CT with model bundles", _add_analyze, _run_analyze),
    "review": (
        "read cases and review errors in the browser (trame-slicer)",
        _add_review,
        _run_review,
    ),
    "review-user": (
        "add a reader (name and password) to a jmid review users file",
        _add_review_user,
        _run_review_user,
    ),
}
