"""The demo's held-out test set: a share of the patients never trained on, nor used to choose
thresholds or calibration, and what the bundle does on them.

:func:`split_test_set` draws whole patients (every exam of a patient is on one side),
stratified on the reports' labels as the training folds are. After
training, :func:`evaluate_test_set` runs the bundle on the test cases (AUC with 95% CI,
sensitivity and specificity at the stored thresholds, calibration error), measured against the
planted findings rather than the reports (:func:`planted_labels`), and counts, per case,
whether what is flagged is what was planted.
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from JMIDAnomalyLib.common.organs import ORGAN_CLASSES

#: The parts the patients are split into for the test set (its share is a whole number of parts).
TEST_SPLIT_PARTS = 25


def split_test_set(
    truth: list[dict],
    fraction: float,
    seed: int,
    labels_dir: Path,
    organs: Sequence[str],
) -> list[str]:
    """The test cases: about ``fraction`` of the cases, whole patients (all of a patient's
    exams on one side; at least one patient when > 0), drawn with ``seed``; sorted case ids.

    Stratified as the training folds are (scikit-learn's StratifiedGroupKFold, grouped by
    patient) on each case's combination of the classes its reports state for ``organs`` (the
    label tables in ``labels_dir``: what a site has, not the planted findings): the patients
    are split into :data:`TEST_SPLIT_PARTS` parts of about the same case mix and
    ``round(fraction x parts)`` of them, drawn at random (the splitter fills its first parts
    with the rarest groups first), are held out. So the test set's prevalences are the
    training cases' (a plain draw of 36% of the demo's 731 patients left 17.5% of the test
    cases with a mass against 14.6% of the training cases), and its calibration error
    measures the models rather than the draw."""
    if fraction <= 0:
        return []
    from sklearn.model_selection import StratifiedGroupKFold

    strata = _report_strata(truth, labels_dir, organs)
    cases = [r["case_id"] for r in truth]
    groups = [r["patient_id"] for r in truth]
    largest = max(Counter(strata).values())
    parts = min(TEST_SPLIT_PARTS, len(set(groups)), largest)
    if parts < 2:
        return sorted(cases)
    held = max(1, min(parts, round(fraction * parts)))
    splitter = StratifiedGroupKFold(n_splits=parts, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # strata rarer than the parts are spread as far as they go
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        split = list(splitter.split(np.zeros(len(cases)), strata, groups))
    chosen = np.random.default_rng([seed, 2022]).permutation(parts)[:held]
    return sorted(cases[i] for k in chosen for i in split[k][1])


def _report_strata(truth: list[dict], labels_dir: Path, organs: Sequence[str]) -> list[str]:
    """Per case of ``truth``, the reports' classes in ``organs`` as one stratum ("organ:class"
    joined; "" for none and for cases without a label row)."""
    from JMIDAnomalyLib.training.data import read_organ_labels

    stated: dict[str, set[str]] = {r["case_id"]: set() for r in truth}
    for organ in organs:
        classes = [c for c in ORGAN_CLASSES[organ] if c != "nofinding"]
        for row in read_organ_labels(labels_dir, organ):
            if row["case_id"] in stated:
                stated[row["case_id"]].update(f"{organ}:{c}" for c in classes if row[c] == "1")
    return ["+".join(sorted(stated[r["case_id"]])) for r in truth]


def evaluate_test_set(
    out: Path, organ: str, bundle: Path, test_cases: list[str], truth: list[dict]
) -> dict:
    """The bundle on the test cases into ``out/evaluation/<organ>/test``: the metrics table,
    and per case whether the flagged classes are the planted ones."""
    from JMIDAnomalyLib.models.bundle import load_bundle
    from JMIDAnomalyLib.training.evaluation import evaluate_bundle

    folder = out / "evaluation" / organ / "test"
    labels = planted_labels(out / "labels", organ, test_cases, truth, folder / "planted")
    summary = evaluate_bundle(
        bundle, labels, out / "cohort", out / "crop_cache", folder, cases=test_cases
    )
    thresholds = load_bundle(bundle, weights=False).thresholds
    flagged: dict[tuple[str, str], set[str]] = {}
    planted: dict[tuple[str, str], set[str]] = {}  # the labels are the planted findings
    with (folder / "predictions.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            key = (row["case_id"], row["side"])
            flagged.setdefault(key, set())
            planted.setdefault(key, set())
            if row["class"] == "nofinding":
                continue
            if float(row["probability"]) >= thresholds[row["class"]]:
                flagged[key].add(row["class"])
            if row["label"] == "1":
                planted[key].add(row["class"])
    positives = [k for k in flagged if planted[k]]
    normals = [k for k in flagged if not planted[k]]
    return {
        "metrics": summary["classes"],
        "outside_training_data": summary.get("outside_training_data"),
        "cases": len(flagged),
        "exact": sum(flagged[k] == planted[k] for k in flagged),
        "positives": len(positives),
        "positives_found": sum(planted[k] <= flagged[k] for k in positives),
        "normals": len(normals),
        "normals_flagged": sum(bool(flagged[k]) for k in normals),
    }


def planted_labels(
    labels_dir: Path, organ: str, cases: list[str], truth: list[dict], out: Path
) -> Path:
    """A labels folder for the test cases whose class columns are the planted findings, the
    demo's reference standard (the reports leave some out: label noise is for training):
    ``out/<organ>.csv``, the report labels' rows with each class 1 where it was planted."""
    from JMIDAnomalyLib.common.atomic import atomic_output
    from JMIDAnomalyLib.training.data import read_organ_labels

    classes = [c for c in ORGAN_CLASSES[organ] if c != "nofinding"]
    planted = {
        (r["case_id"], f["side"] or "", f["cls"]): f
        for r in truth
        for f in r["findings"]
        if f["organ"] == organ
    }
    wanted = set(cases)
    rows = [r for r in read_organ_labels(labels_dir, organ) if r["case_id"] in wanted]
    for row in rows:
        found = [planted.get((row["case_id"], row["side"], c)) for c in classes]
        for cls, finding in zip(classes, found, strict=True):
            row[cls] = str(int(finding is not None))
        row["nofinding"] = str(int(not any(found)))
        row["evidence"] = "; ".join(
            f"planted {f['cls']} {f['size_mm']:.0f} mm" if f["size_mm"] else f"planted {f['cls']}"
            for f in found
            if f
        )
    out.mkdir(parents=True, exist_ok=True)
    with (
        atomic_output(out / f"{organ}.csv") as tmp,
        tmp.open("w", encoding="utf-8", newline="") as f,
    ):
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["case_id"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def metrics_lines(title: str, metrics: list[dict], ece_title: str, ece_cell) -> list[str]:
    """A metrics table of ``jmid demo``'s summary: per class with positives, AUC (95% CI),
    sensitivity, specificity and a calibration column (``ece_cell(entry)``)."""
    width = len(ece_title)
    lines = [
        "",
        title,
        f"  {'class':26s} {'positives':>9s} {'AUC (95% CI)':>22s} {'sens':>5s} {'spec':>5s} "
        f"{ece_title}",
    ]
    for m in metrics:
        if not m["positives"]:
            continue
        auc = f"{m['auc']:.3f} ({m['auc_low']:.2f}-{m['auc_high']:.2f})" if "auc" in m else "-"
        sens = "-" if m["sensitivity"] is None else f"{m['sensitivity']:.2f}"
        spec = "-" if m["specificity"] is None else f"{m['specificity']:.2f}"
        cells = f"{m['class']:26s} {m['positives']:9d} {auc:>22s} {sens:>5s} {spec:>5s}"
        lines.append(f"  {cells} {ece_cell(m) if 'ece' in m else '-':>{width}s}")
    return lines


def test_set_table(organ: str, test: dict, where: str = "the held-out test set") -> list[str]:
    """The summary lines of a test-set evaluation (``jmid demo``'s table) on ``where``."""
    from JMIDAnomalyLib.training.evaluation import outside_lines

    title = (
        f"{organ} ensemble on {where} ({test['cases']} cases, never trained on; "
        "labels: the planted findings):"
    )
    # Beside each ECE, the ECE a perfectly calibrated model would show on this test set.
    lines = metrics_lines(
        title,
        test["metrics"],
        "ECE (if calibrated)",
        lambda m: f"{m['ece']:.3f} ({m['ece_if_calibrated']:.3f})",
    )
    lines.append(
        f"  flagged for exactly the planted classes: {test['exact']} of {test['cases']}; "
        f"with a planted finding, flagged for it: {test['positives_found']} of "
        f"{test['positives']}; without, flagged for anything: {test['normals_flagged']} of "
        f"{test['normals']}"
    )
    return lines + outside_lines(test)
