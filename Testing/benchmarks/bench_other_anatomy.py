"""A demo bundle on anatomy it never saw: held-out figures on cases made from another patient.

The demo's cohort is made from one real CT, so its held-out test set shares that anatomy. This
builds cases from the example DICOM series instead (another patient: contrast-enhanced,
0.98 x 0.98 x 2 mm, 20 slices of the upper abdomen), with TotalSegmentator's organ map of it,
both from the TotalSegmentator source distribution (``jmid cohort --source-ct --source-seg
--source-enhanced``), runs the demo's liver bundle on them and prints the same table as the
demo's held-out test set, against the planted findings, beside the demo's own test figures.

Usage: .venv/bin/python Testing/benchmarks/bench_other_anatomy.py --demo jmid-demo
       [--cases 100] [--seed 7] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "JMIDAnomaly"))

from JMIDAnomalyLib.demo.cohort import build_cohort  # noqa: E402
from JMIDAnomalyLib.demo.holdout import evaluate_test_set, test_set_table  # noqa: E402
from JMIDAnomalyLib.demo.reference_data import fetch_reference_data  # noqa: E402
from JMIDAnomalyLib.labels.labeling import label_reports  # noqa: E402

FOCAL = ("cyst", "fatty_liver", "SOL", "calcification")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="a finished jmid demo folder")
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7, help="the cohort's seed")
    parser.add_argument("--work", type=Path, default=Path("bench-other-anatomy"))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    bundle = args.demo / "training" / "liver" / "bundle"
    if not (bundle / "bundle.json").exists():
        parser.error(f"{bundle}: no liver bundle; run jmid demo --out {args.demo} first")

    data = fetch_reference_data()
    cohort = args.work / "cohort"
    summary_file = cohort / "cohort.json"
    previous = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    start = time.perf_counter()
    if (previous.get("cases"), previous.get("seed")) != (args.cases, args.seed):
        build_cohort(
            cohort,
            args.cases,
            args.seed,
            source=(str(data.dicom_dir), str(data.dicom_seg), ""),
            source_enhanced=True,
        )
    built = time.perf_counter() - start
    label_reports(cohort / "reports.csv", args.work / "labels")
    truth = json.loads((cohort / "truth.json").read_text())
    start = time.perf_counter()
    result = evaluate_test_set(args.work, "liver", bundle, [t["case_id"] for t in truth], truth)
    scored = time.perf_counter() - start
    own_file = args.demo / "evaluation" / "liver" / "test" / "metrics.json"
    own = json.loads(own_file.read_text())["classes"] if own_file.exists() else []

    figures = {
        "cases": result["cases"],
        "cohort_s": round(built, 1),
        "crop_and_score_s": round(scored, 1),
        "exact": result["exact"],
        "positives": result["positives"],
        "positives_found": result["positives_found"],
        "normals": result["normals"],
        "normals_flagged": result["normals_flagged"],
        "classes": {
            m["class"]: {
                k: m.get(k)
                for k in (
                    "positives",
                    "auc",
                    "auc_low",
                    "auc_high",
                    "sensitivity",
                    "specificity",
                    "ece",
                )
            }
            for m in result["metrics"]
            if m["class"] in FOCAL
        },
        "demo_test_auc": {m["class"]: m.get("auc") for m in own if m["class"] in FOCAL},
    }
    if args.json:
        print(json.dumps(figures, indent=1))
        return 0
    print(
        f"cohort of {args.cases} cases from the example DICOM series in {built:.0f} s; "
        f"cropped and scored in {scored:.0f} s"
    )
    print(
        "\n".join(test_set_table("liver", result)).replace(
            "held-out test set", "cases of another patient"
        )
    )
    print("\nAUC, another patient against the demo's own test set:")
    for cls in FOCAL:
        other = figures["classes"].get(cls, {}).get("auc")
        mine = figures["demo_test_auc"].get(cls)
        cells = [f"{v:.3f}" if v is not None else "-" for v in (other, mine)]
        print(f"  {cls:14s} {cells[0]:>6s} against {cells[1]:>6s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
