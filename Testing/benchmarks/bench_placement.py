"""Heatmap placement on the demo's held-out cases: how far each heatmap lies from the finding
planted there.

For every focal liver finding planted in a held-out case of a ``jmid demo`` run (the bundle
never saw these cases), the case is analyzed with the demo bundle, explaining the planted class
with occlusion, and the distance from the centroid of the heatmap's top 5 % to the finding's
centre is printed (target: <= 10 mm), with the class probability and the bundle's threshold.

Usage: .venv/bin/python Testing/benchmarks/bench_placement.py --demo jmid-demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "JMIDAnomaly"))

import numpy as np  # noqa: E402
from JMIDAnomalyLib.imaging.geometry import Grid, hot_spot_lps  # noqa: E402
from JMIDAnomalyLib.imaging.label_tables import read_label_names  # noqa: E402
from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map  # noqa: E402
from JMIDAnomalyLib.inference.predictor import AnomalyPredictor  # noqa: E402

DIFFUSE = {"fatty_liver", "deformation"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a jmid demo output folder")
    args = parser.parse_args()
    demo = args.demo
    config = json.loads((demo / "training" / "liver" / "config.json").read_text())
    truth = {t["case_id"]: t for t in json.loads((demo / "cohort" / "truth.json").read_text())}
    names = read_label_names(demo / "cohort" / "labels.json")
    predictor = AnomalyPredictor([demo / "training" / "liver" / "bundle"], device="cpu")
    within = total = 0
    for case in config["exclude_cases"]:
        ct = read_ct(demo / "cohort" / "images" / f"{case}.nii.gz")
        seg = read_label_map(demo / "cohort" / "segs" / f"{case}.nii.gz", reference=ct)
        for finding in truth[case]["findings"]:
            if finding["organ"] != "liver" or finding["cls"] in DIFFUSE:
                continue
            analysis = predictor.analyze(
                ct, seg, names, organs=["liver"], explain_class=finding["cls"]
            )
            liver = analysis.organs[0]
            total += 1
            if liver.heatmap is None:  # e.g. a liver cut off by the CT's z range: not analyzed
                print(f"{case} {finding['cls']:14s} liver {liver.status}: {liver.message}")
                continue
            spot = hot_spot_lps(liver.heatmap, Grid.from_image(ct))
            score = next(s for s in liver.scores if s.cls == finding["cls"])
            distance = (
                np.linalg.norm(np.asarray(spot) - finding["centre_lps"])
                if spot is not None
                else np.inf
            )
            within += distance <= 10.0
            print(
                f"{case} {finding['cls']:14s} {finding['size_mm']:5.1f} mm  heatmap "
                f"{distance:6.1f} mm from it  p {score.probability:.2f} "
                f"(threshold {score.threshold:.2f})"
            )
    print(f"{within} of {total} planted focal findings with the heatmap within 10 mm")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
