"""How well two kinds of planted lesion could be told apart if their location were known.

A ceiling for error analysis: for every planted lesion of the two classes (default: a liver
mass, SOL, against a liver cyst) in a cohort made by ``jmid cohort`` or ``jmid demo``, six
measurements are taken from the CT inside the lesion's voxels in ``findings/`` (an oracle no
model has: the models see only the organ crop and a label per case): the mean attenuation of
its core, that less the organ's median (the organ without its focal lesions), its one-voxel rim
less the organ's median, the mean gradient magnitude across its edge, its log volume and its
core's standard deviation. A logistic regression on them (scikit-learn, cross-validated by
patient) gives each lesion a probability, and the AUC of the two classes is printed overall and
for lesions in a fatty organ (or, outside the liver, an enlarged one: the organ has a diffuse
finding too), in a normal one and under 15 mm across.

With ``--predictions`` (the ``predictions.csv`` that ``jmid evaluate`` writes for a bundle on
the same cohort) the bundle's own figure is printed beside it: the first class's score, cases
with that lesion against cases with only the second kind.

Usage: .venv/bin/python Testing/benchmarks/bench_lesion_oracle.py --cohort COHORT_DIR
       [--organ liver] [--classes SOL cyst] [--predictions predictions.csv] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "JMIDAnomaly"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from JMIDAnomalyLib.common.organs import TOTALSEGMENTATOR_ORGANS  # noqa: E402
from JMIDAnomalyLib.imaging.label_tables import read_label_names  # noqa: E402
from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map  # noqa: E402
from scipy import ndimage  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.model_selection import GroupKFold, cross_val_predict  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

FEATURES = ("core HU", "core - organ", "rim - organ", "edge gradient", "log volume", "core SD")
DIFFUSE = {"fatty_liver", "deformation"}


def lesion_features(ct: np.ndarray, lesion: np.ndarray, organ: np.ndarray) -> list[float]:
    """The six measurements of one lesion (masks on the CT's (z, y, x) grid)."""
    median = float(np.median(ct[organ]))
    eroded = ndimage.binary_erosion(lesion)
    core = eroded if eroded.sum() >= 2 else lesion
    rim = ndimage.binary_dilation(lesion) & ~lesion & organ
    edge = ndimage.binary_dilation(lesion) & ~eroded
    gradient = ndimage.gaussian_gradient_magnitude(ct, 0.7)
    return [
        float(ct[core].mean()),
        float(ct[core].mean()) - median,
        float(ct[rim].mean()) - median if rim.any() else 0.0,
        float(gradient[edge].mean()),
        float(np.log(lesion.sum())),
        float(ct[core].std()),
    ]


def measure(cohort: Path, organ: str, classes: tuple[str, str]) -> dict:
    """Features, classes and groups of every lesion of ``classes`` in ``organ``."""
    names = read_label_names(cohort / "labels.json")
    values = [v for v, s in names.items() if TOTALSEGMENTATOR_ORGANS.get(s, ("",))[0] == organ]
    rows: dict[str, list] = {"x": [], "y": [], "patient": [], "fatty": [], "small": []}
    for record in json.loads((cohort / "truth.json").read_text(encoding="utf-8")):
        found = [f for f in record["findings"] if f["organ"] == organ]
        lesions = [f for f in found if f["cls"] in classes]
        if not lesions:
            continue
        case = record["case_id"]
        image = read_ct(cohort / "images" / f"{case}.nii.gz")
        ct = sitk.GetArrayFromImage(image).astype(np.float64)
        seg = sitk.GetArrayFromImage(read_label_map(cohort / "segs" / f"{case}.nii.gz", image))
        marks = sitk.GetArrayFromImage(
            read_label_map(cohort / "findings" / f"{case}.nii.gz", image)
        )
        focal = [f["label"] for f in found if f["cls"] not in DIFFUSE]
        organ_mask = np.isin(seg, values) & ~np.isin(marks, focal)
        for finding in lesions:
            lesion = marks == finding["label"]
            if not lesion.any() or not organ_mask.any():
                continue
            rows["x"].append(lesion_features(ct, lesion, organ_mask))
            rows["y"].append(finding["cls"] == classes[0])
            rows["patient"].append(record["patient_id"])
            rows["fatty"].append(any(f["cls"] in DIFFUSE for f in found))
            rows["small"].append(finding["size_mm"] < 15)
    return {k: np.asarray(v) for k, v in rows.items()}


def auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else None


def bundle_figure(predictions: Path, truth: Path, organ: str, classes: tuple[str, str]):
    """The bundle's score for the first class: cases with it against cases with only the
    second (None when either group is empty)."""
    kinds = {
        r["case_id"]: {f["cls"] for f in r["findings"] if f["organ"] == organ}
        for r in json.loads(truth.read_text(encoding="utf-8"))
    }
    with predictions.open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["class"] == classes[0]]
    scores = {r["case_id"]: float(r["probability"]) for r in rows}
    first = [scores[c] for c in scores if classes[0] in kinds.get(c, ())]
    second = [scores[c] for c in scores if kinds.get(c, set()) & set(classes) == {classes[1]}]
    if not first or not second:
        return None
    return auc(np.r_[np.ones(len(first)), np.zeros(len(second))], np.r_[first, second])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True, help="a jmid cohort folder")
    parser.add_argument("--organ", default="liver")
    parser.add_argument("--classes", nargs=2, default=("SOL", "cyst"), metavar=("A", "B"))
    parser.add_argument("--predictions", type=Path, help="jmid evaluate's predictions.csv")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    classes = tuple(args.classes)
    for needed in ("truth.json", "labels.json", "images", "segs", "findings"):
        if not (args.cohort / needed).exists():
            parser.error(f"{args.cohort}: no {needed}; give a folder written by jmid cohort")
    data = measure(args.cohort, args.organ, classes)
    y = data["y"]
    if not 0 < y.sum() < len(y) or len(set(data["patient"])) < 5:
        parser.error(f"{args.cohort}: too few {classes[0]} and {classes[1]} lesions to compare")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    p = cross_val_predict(
        model, data["x"], y, cv=GroupKFold(5), groups=data["patient"], method="predict_proba"
    )[:, 1]
    groups = {
        "all": np.ones(len(y), bool),
        "in a fatty organ": data["fatty"],
        "in a normal organ": ~data["fatty"],
        "under 15 mm": data["small"],
    }
    result = {
        "classes": list(classes),
        "lesions": {c: int((y == (i == 0)).sum()) for i, c in enumerate(classes)},
        "oracle_auc": {k: auc(y[m], p[m]) for k, m in groups.items()},
        "lesions_in_group": {k: int(m.sum()) for k, m in groups.items()},
        "single_feature_auc": {
            name: max(auc(y, data["x"][:, j]), 1 - auc(y, data["x"][:, j]))
            for j, name in enumerate(FEATURES)
        },
    }
    if args.predictions:
        truth = args.cohort / "truth.json"
        result["bundle_case_auc"] = bundle_figure(args.predictions, truth, args.organ, classes)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    a, b = classes
    print(
        f"{args.organ}: {a} ({result['lesions'][a]} lesions) against {b} ({result['lesions'][b]})"
    )
    print("  oracle (the lesion's planted voxels given), cross-validated by patient:")
    for k, v in result["oracle_auc"].items():
        cell = "-" if v is None else f"{v:.3f}"
        print(f"    {k:20s} {result['lesions_in_group'][k]:4d} lesions  AUC {cell}")
    for name, v in result["single_feature_auc"].items():
        print(f"    one measurement: {name:14s} AUC {v:.3f}")
    if "bundle_case_auc" in result:
        v = result["bundle_case_auc"]
        cell = "-" if v is None else f"{v:.3f}"
        print(f"  the bundle's {a} score, cases with {a} against cases with only {b}: {cell}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
