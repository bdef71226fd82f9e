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
    from .trainconfig import TrainConfig
    from .trainjob import train

    bundle = train(TrainConfig.load(args.config), args.resume, progress=console_progress("train"))
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
    from .evaluation import evaluate_bundle, evaluate_oof

    if args.oof:
        summary = evaluate_oof(args.bundle, args.oof, args.out)
    elif args.labels and args.data:
        crops = args.crops or args.out / "crop_cache"
        summary = evaluate_bundle(args.bundle, args.labels, args.data, crops, args.out)
    else:
        raise JMIDError("give --oof FILE, or --labels DIR and --data DIR for a held-out set")
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
