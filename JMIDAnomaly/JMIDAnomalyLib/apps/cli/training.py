"""``jmid train``, ``jmid evaluate`` and ``jmid calibrate``: the model commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from JMIDAnomalyLib.apps.cli.options import Command
from JMIDAnomalyLib.common.errors import JMIDError


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, type=Path, help="training configuration (JSON or YAML)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run in the same --out"
    )


def _run_train(args: argparse.Namespace) -> int:
    from JMIDAnomalyLib.apps.trainer import TrainerLogic
    from JMIDAnomalyLib.common.progress import console_progress

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
    parser.add_argument("--device", default="auto", help="held-out set: auto, cuda, mps or cpu")


def _run_evaluate(args: argparse.Namespace) -> int:
    from JMIDAnomalyLib.apps.trainer import TrainerLogic
    from JMIDAnomalyLib.training.evaluation import outside_lines

    if not args.oof and not (args.labels and args.data):
        raise JMIDError("give --oof FILE, or --labels DIR and --data DIR for a held-out set")
    summary = TrainerLogic().evaluate(
        args.bundle, args.out, args.oof, args.labels, args.data, args.crops, args.device
    )
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
    for line in outside_lines(summary):  # a held-out set, by a bundle with a domain
        print(line)
    print(f"metrics, ROC and confusion plots, predictions.csv written to {args.out}")
    return 0


def _add_calibrate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, type=Path, help="model bundle folder or zip")
    parser.add_argument(
        "--out", required=True, type=Path, help="the new bundle's folder (the given one is kept)"
    )
    parser.add_argument(
        "--labels", required=True, type=Path, help="labels folder (jmid labels) of your cases"
    )
    parser.add_argument(
        "--data", required=True, type=Path, help="their data root: images/, segs/, labels.json"
    )
    parser.add_argument("--crops", type=Path, help="crop cache folder (default <out>_crop_cache)")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    parser.add_argument(
        "--min-cases",
        type=int,
        help="positives and negatives a class needs to be fitted again (default 10)",
    )


def _run_calibrate(args: argparse.Namespace) -> int:
    from JMIDAnomalyLib.apps.trainer import TrainerLogic

    summary = TrainerLogic().recalibrate(
        args.bundle, args.out, args.labels, args.data, args.crops, args.device, args.min_cases
    )
    print(f"{summary['organ']}: calibration and thresholds fitted on {summary['cases']} cases")
    for cls, (before, after) in summary["thresholds"].items():
        print(f"  {cls:26s} threshold {before:.3f} -> {after:.3f}")
    if summary["kept"]:
        print(f"  kept as they were (too few positives or negatives): {', '.join(summary['kept'])}")
    print(f"model bundle written to {args.out} (and {args.out.with_suffix('.zip').name})")
    return 0


COMMANDS: dict[str, Command] = {
    "train": ("train an organ's k-fold ensemble into a model bundle", _add_train, _run_train),
    "evaluate": ("metrics, ROC and confusion plots of a bundle", _add_evaluate, _run_evaluate),
    "calibrate": (
        "fit a bundle's calibration and thresholds again on your own labelled cases",
        _add_calibrate,
        _run_calibrate,
    ),
}
