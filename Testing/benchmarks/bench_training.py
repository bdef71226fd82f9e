"""Training on the demo cohort (CPU, demo preset): out-of-fold AUC per liver class, time, and
training against data-loading throughput.

Builds a cohort (default the demo's size, ``DemoSettings.cases``), imports its
labels, trains the liver ensemble (the demo's folds, mil_local) and prints the out-of-fold AUC of
each liver class with at least 15 positives (target >= 0.85) and the time all folds take (target
< 0.65 s per case on 2 CPU cores: the 10 minutes the 1,000-case cohort took, 988 crops, with 8%
to spare; the demo's 1,200 cases take about 12 min), then times one epoch of data loading alone
against one epoch of training (cases/s) to show whether loading starves the model.

The defaults are the demo's training recipe (``demo.DEMO_TRAINING``: the organ's interior only,
lr 2e-3, focal loss, positives weighted; the ``mil_local`` model; the demo's folds and epochs,
``DemoSettings``) on every case (no held-out set); ``--model mil_small`` is the whole-slice
encoder and ``--published-crop --no-class-weighting --lr 3e-4 --loss bce`` the published-style
recipe, for comparison.

Usage: .venv/bin/python Testing/benchmarks/bench_training.py [--cases N] [--epochs N] [--folds K]
       [--work DIR] [--lr 2e-3] [--loss focal|bce] [--model mil_local] [--no-class-weighting]
       [--published-crop | --margin-mm -3 --fill-hu 94] [--hu-window LOW HIGH]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "JMIDAnomaly"))

import numpy as np  # noqa: E402
from JMIDAnomalyLib.demo.cohort import build_cohort  # noqa: E402
from JMIDAnomalyLib.demo.run import DEMO_TRAINING, DemoSettings  # noqa: E402
from JMIDAnomalyLib.imaging.crops import fill_hu_arg  # noqa: E402
from JMIDAnomalyLib.labels.labeling import label_reports  # noqa: E402
from JMIDAnomalyLib.training.config import TrainConfig  # noqa: E402
from JMIDAnomalyLib.training.data import load_samples  # noqa: E402
from JMIDAnomalyLib.training.job import train  # noqa: E402
from JMIDAnomalyLib.training.trainer import FoldTrainer  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=DemoSettings.cases)
    parser.add_argument("--epochs", type=int, default=DemoSettings.epochs)
    parser.add_argument("--folds", type=int, default=DemoSettings.folds)
    parser.add_argument("--work", type=Path, default=Path("bench-training"))
    demo_crop = DEMO_TRAINING["crop"]
    parser.add_argument("--lr", type=float, default=DEMO_TRAINING["lr"])
    parser.add_argument("--model", default="mil_local")
    parser.add_argument("--loss", choices=("bce", "focal"), default=DEMO_TRAINING["loss"])
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--no-class-weighting", action="store_true", help="unweighted BCE")
    parser.add_argument(
        "--published-crop",
        action="store_true",
        help="the published mask crop (dilated 3 mm, air outside)",
    )
    parser.add_argument(
        "--margin-mm",
        type=float,
        default=demo_crop["margin_mm"],
        help="crop margin (negative: the organ's interior)",
    )
    parser.add_argument(
        "--fill-hu",
        type=fill_hu_arg,
        default=demo_crop["fill_hu"],
        help="HU outside the kept region, or 'median' (the organ's own)",
    )
    parser.add_argument(
        "--hu-window",
        type=float,
        nargs=2,
        default=demo_crop.get("hu_window"),
        metavar=("LOW", "HIGH"),
        help="HU window of the crops",
    )
    args = parser.parse_args()
    work = args.work
    if not (work / "cohort" / "cohort.json").exists():
        t = time.perf_counter()
        build_cohort(work / "cohort", cases=args.cases, seed=0)
        print(f"cohort of {args.cases} cases built in {time.perf_counter() - t:.0f} s")
    label_reports(work / "cohort" / "reports.csv", work / "labels")
    crop = {} if args.published_crop else {"margin_mm": args.margin_mm, "fill_hu": args.fill_hu}
    if args.hu_window:
        crop["hu_window"] = list(args.hu_window)
    config = TrainConfig.for_cohort(
        work / "cohort",
        work / "labels",
        work / "run",
        work / "crop_cache",
        organ="liver",
        folds=args.folds,
        epochs=args.epochs,
        batch_size=8,
        lr=args.lr,
        loss=args.loss,
        model=args.model,
        augment=not args.no_augment,
        class_weighting=not args.no_class_weighting,
        tensorboard=False,
        crop=crop,
    )
    t = time.perf_counter()
    samples, _ = load_samples(config)
    print(f"{len(samples)} liver crops loaded in {time.perf_counter() - t:.0f} s (crop cache)")
    import shutil

    shutil.rmtree(config.out, ignore_errors=True)
    t = time.perf_counter()
    train(config)
    minutes = (time.perf_counter() - t) / 60
    scores, labels = defaultdict(list), defaultdict(list)
    with (Path(config.out) / "oof_predictions.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["label"] != "":
                scores[row["class"]].append(float(row["probability"]))
                labels[row["class"]].append(int(row["label"]))
    per_case = minutes * 60 / len(samples)
    took = f"{minutes:.1f} min, {per_case:.2f} s a case"
    print(f"all {args.folds} folds trained in {took} (target < 0.65 s a case)")
    ok = per_case < 0.65
    for cls in scores:
        y = np.array(labels[cls])
        if y.sum() >= 15 and cls != "nofinding":
            auc = roc_auc_score(y, scores[cls])
            ok &= auc >= 0.85
            count = int(y.sum())
            print(f"  liver {cls:14s} positives {count:3d}  OOF AUC {auc:.3f} (target >= 0.85)")
    trainer = FoldTrainer(config, 0, samples, samples[:8])
    loader = trainer._train_loader()
    t = time.perf_counter()
    for _ in loader:
        pass
    load_rate = len(samples) / (time.perf_counter() - t)
    t = time.perf_counter()
    trainer.train_epoch()
    train_rate = len(samples) / (time.perf_counter() - t)
    print(f"data loading alone: {load_rate:.0f} cases/s; training: {train_rate:.0f} cases/s")
    print("targets:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
