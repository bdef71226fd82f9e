"""The review queue: a model's predictions as items to step through, filtered and ordered.

:class:`ReviewQueue` reads an evaluation's predictions CSV
(:data:`~JMIDAnomalyLib.training.evaluation.COLUMNS`) and selects items by organ, class, outcome
(FP, FN, TP, TN) and threshold, the most confident first (largest distance between probability
and threshold).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import organ_key

OUTCOMES = ("FP", "FN", "TP", "TN")
#: the outcome filters both review front ends offer (label -> outcomes)
OUTCOME_CHOICES = {
    "false positives and negatives": ("FP", "FN"),
    "false positives": ("FP",),
    "false negatives": ("FN",),
    "true positives": ("TP",),
    "true negatives": ("TN",),
}


@dataclass(frozen=True)
class ReviewItem:
    """One prediction: a case's probability for one class of one organ (and side)."""

    case_id: str
    patient_id: str
    organ: str
    side: str
    cls: str
    probability: float
    label: int
    fold: str
    evidence: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        """(case, organ, side, class): what identifies the item and its mark."""
        return (self.case_id, self.organ, self.side, self.cls)

    @property
    def organ_key(self) -> str:
        """``liver``, ``kidney_left``...: the organ and side as one key."""
        return organ_key(self.organ, self.side)

    def outcome(self, threshold: float) -> str:
        """``TP``, ``FP``, ``FN`` or ``TN`` at ``threshold``."""
        positive = self.probability >= threshold
        if positive:
            return "TP" if self.label else "FP"
        return "FN" if self.label else "TN"


class ReviewQueue:
    """The items of a predictions CSV, filtered and ordered for review.

    Args:
        predictions_csv: ``predictions.csv`` of ``jmid evaluate`` (or training's OOF file).
        thresholds: organ -> class -> threshold (the bundles'); others use 0.5.
    """

    def __init__(
        self,
        predictions_csv: str | os.PathLike,
        thresholds: dict[str, dict[str, float]] | None = None,
    ) -> None:
        from JMIDAnomalyLib.training.evaluation import COLUMNS

        path = Path(predictions_csv)
        try:
            with path.open(encoding="utf-8-sig", newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError as exc:
            raise InputError(path, f"cannot be read ({exc.strerror})") from None
        if not rows or set(COLUMNS) - set(rows[0]):
            raise InputError(path, f"not a predictions CSV: expected the columns {COLUMNS}")
        self.thresholds = dict(thresholds or {})
        self.all: list[ReviewItem] = []
        for line, row in enumerate(rows, start=2):
            if row["label"] == "":
                continue  # the report did not say: no outcome to review
            try:
                probability, label = float(row["probability"]), int(row["label"])
            except ValueError:
                problem = f"line {line}: probability or label is not a number"
                raise InputError(path, problem) from None
            self.all.append(
                ReviewItem(
                    row["case_id"],
                    row["patient_id"],
                    row["organ"],
                    row["side"],
                    row["class"],
                    probability,
                    label,
                    row["fold"],
                    row["evidence"],
                )
            )
        self.items: list[ReviewItem] = []
        self.index = 0
        self.threshold_override: float | None = None

    @property
    def organs(self) -> list[str]:
        """The organs in the predictions."""
        return sorted({i.organ for i in self.all})

    @property
    def classes(self) -> list[str]:
        """The classes in the predictions."""
        return sorted({i.cls for i in self.all})

    @property
    def cases(self) -> list[str]:
        """The case ids in the predictions."""
        return sorted({i.case_id for i in self.all})

    def threshold(self, item: ReviewItem) -> float:
        """The threshold ``item`` is judged at (the override, else its bundle's, else 0.5)."""
        if self.threshold_override is not None:
            return self.threshold_override
        return self.thresholds.get(item.organ, {}).get(item.cls, 0.5)

    def select(
        self,
        organ: str | None = None,
        cls: str | None = None,
        outcomes=("FP", "FN"),
        threshold: float | None = None,
    ) -> list[ReviewItem]:
        """Keep the items matching the filters (None = any), most confident first; the
        position goes back to the first item. ``threshold`` overrides the bundle's."""
        unknown = set(outcomes) - set(OUTCOMES)
        if unknown:
            raise ValueError(f"unknown outcomes {sorted(unknown)}; use {OUTCOMES}")
        self.threshold_override = threshold
        chosen = [
            item
            for item in self.all
            if (organ in (None, "", item.organ))
            and (cls in (None, "", item.cls))
            and item.outcome(self.threshold(item)) in outcomes
        ]
        chosen.sort(key=lambda i: (-abs(i.probability - self.threshold(i)), i.key))
        self.items, self.index = chosen, 0
        return chosen

    @property
    def current(self) -> ReviewItem | None:
        """The item on show, or None when no item matches the filters."""
        return self.items[self.index] if self.items else None

    def step(self, delta: int) -> ReviewItem | None:
        """Move ``delta`` items (clamped at both ends); returns the new current item."""
        if self.items:
            self.index = min(max(self.index + delta, 0), len(self.items) - 1)
        return self.current
