"""``jmid train`` and ``jmid evaluate``: the model commands of the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import JMIDError


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, type=Path, help="training configuration (JSON or YAML)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in the same --out"
    )


def _run_train(args: argparse.Namespace) -> int:
    from .progress import console_progress
    from .trainerlogic import TrainerLogic

    bundle = TrainerLogic().train(args.config, args.resume, progress=console_progress("train"))
    print(f"model bundle written to {bundle} (and {bundle.with_suffix('.zip').name})")
    return 0


def _add_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="model bundle folder or zip")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--oof", type=Path, help="evaluate a training run's oof_predictions.csv")
    parser.add_argument("--labels", type=Path, help="labels folder (jmid labels) of a held-out set")
    parser.add_argument("--data", type=Path, help="held-out data root: images/, segs/, labels.json")
    parser.add_argument("--crops", type=Path, help="crop cache folder (default <out>/crop_cache)")


def _run_evaluate(args: argparse.Namespace) -> int:
    from .trainerlogic import TrainerLogic

    if not args.oof and not (args.labels and args.data):
        raise JMIDError("give --oof FILE, or --labels DIR and --data DIR for a held-out set")
    summary = TrainerLogic().evaluate(args.bundle, args.out, args.oof, args.labels, args.data,
                                      args.crops)  # fmt: skip
    print(f"{summary['organ']}: {summary['cases']} cases")
    for c in summary["classes"]:
        auc = (
            f"AUC {c['auc']:.3f} [{c['auc_low']:.3f}-{c['auc_high']:.3f}]"
            if "auc" in c
            else "AUC -"
        )
        sens = "-" if c["sensitivity"] is None else f"{c['sensitivity']:.2f}"
        spec = "-" if c["specificity"] is None else f"{c['specificity']:.2f}"
        print(
            f"  {c['class']:26s} pos {c['positives']:4d}  {auc:28s} "
            f"sens {sens} spec {spec} F1 {c['f1']:.2f}"
        )
    print(f"metrics, ROC and confusion plots, predictions.csv written to {args.out}")
    return 0


def _add_analyze(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ct", required=True, type=Path, help="CT volume file or DICOM folder")
    seg = parser.add_mutually_exclusive_group(required=True)
    seg.add_argument("--seg", type=Path, help="organ label map on the CT's grid")
    seg.add_argument("--seg-model", type=Path, help="nnU-Net v2 model folder to segment with")
    parser.add_argument(
        "--seg-labels", type=Path, help="label table of --seg (default: SEG's name with .json)"
    )
    parser.add_argument("--out", required=True, type=Path, help="results folder")
    _add_model_options(parser)
    parser.add_argument("--no-scene", action="store_true", help="skip the Slicer scene")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    """--bundle, --explain, --organs and --device: what analyzes a CT (analyze and review)."""
    parser.add_argument(
        "--bundle", required=True, type=Path, action="append",
        help="model bundle (folder or zip) or a folder of bundles; repeat for more organs",
    )  # fmt: skip
    parser.add_argument(
        "--explain", choices=("occlusion", "hirescam", "none"), default="occlusion",
        help="heatmap method (default occlusion)",
    )  # fmt: skip
    parser.add_argument("--organs", help="comma-separated organs (default: every bundle's)")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")


def _organs(args: argparse.Namespace) -> list[str]:
    return [o.strip() for o in args.organs.split(",") if o.strip()] if args.organs else []


def _run_analyze(args: argparse.Namespace) -> int:
    from .analyzejob import AnalysisRunner, AnalyzeConfig
    from .progress import console_progress

    config = AnalyzeConfig(
        ct=str(args.ct), out=str(args.out), bundles=[str(b) for b in args.bundle],
        seg=str(args.seg or ""), seg_labels=str(args.seg_labels or ""),
        seg_model=str(args.seg_model or ""), explain=args.explain,
        organs=_organs(args), device=args.device, scene=not args.no_scene,
    )  # fmt: skip
    analysis = AnalysisRunner().run(config, console_progress("analyze")).analysis
    for organ in analysis.organs:
        if not organ.scores:
            print(f"  {organ.key:18s} {organ.status}: {organ.message}")
            continue
        flagged = ", ".join(organ.flagged) or "no finding above threshold"
        top = organ.abnormal[0]
        print(f"  {organ.key:18s} {flagged:40s} (top {top.cls} {top.probability:.2f})")
    print(f"scores.json, heatmaps, overview.png and scene.mrb written to {args.out}")
    return 0


def _add_review(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--ct", type=Path, help="a CT volume file or DICOM folder to read")
    what.add_argument(
        "--cases", type=Path,
        help="predictions CSV of jmid evaluate: read its cases and review its errors",
    )  # fmt: skip
    _add_model_options(parser)
    parser.add_argument("--seg", type=Path, help="organ label map of --ct (else --seg-model)")
    parser.add_argument("--seg-labels", type=Path, help="label table of --seg")
    parser.add_argument("--seg-model", type=Path, help="nnU-Net v2 model folder to segment with")
    parser.add_argument("--data-root", type=Path, help="the cases' folder (images/, segs/)")
    parser.add_argument(
        "--feedback", type=Path, help="marks CSV (default: feedback.csv beside --cases)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 serves the "
        "network, without a login)",
    )  # fmt: skip
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080)")


def _run_review(args: argparse.Namespace) -> int:
    from .webreview import ReviewOptions, serve

    options = ReviewOptions(
        bundles=[str(b) for b in args.bundle], ct=str(args.ct or ""), seg=str(args.seg or ""),
        seg_labels=str(args.seg_labels or ""), seg_model=str(args.seg_model or ""),
        cases=str(args.cases or ""), data_root=str(args.data_root or ""),
        feedback=str(args.feedback or ""), explain=args.explain, device=args.device,
        organs=_organs(args),
    )  # fmt: skip
    serve(options, args.host, args.port)
    return 0
