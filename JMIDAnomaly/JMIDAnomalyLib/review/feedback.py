"""The reader's marks on review items: agree / label wrong / model wrong, with a comment.

:class:`FeedbackLog` keeps them in a CSV rewritten atomically after every mark (temporary file,
fsync, rename): a crash or a kill between two marks loses nothing, and reopening the file
continues where the reader stopped.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.review.queue import ReviewItem

VERDICTS = ("agree", "label_wrong", "model_wrong")
FEEDBACK_COLUMNS = [
    "case_id",
    "patient_id",
    "organ",
    "side",
    "class",
    "probability",
    "label",
    "threshold",
    "outcome",
    "verdict",
    "comment",
    "marked_at",
]


class FeedbackLog:
    """The reader's marks, one row per item (a new mark of the same item replaces the old)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.rows: dict[tuple[str, str, str, str], dict] = {}
        if self.path.exists():
            try:
                with self.path.open(encoding="utf-8", newline="") as f:
                    rows = list(csv.DictReader(f))
            except (OSError, UnicodeDecodeError) as exc:
                raise InputError(self.path, f"cannot be read as a feedback CSV ({exc})") from None
            for row in rows:
                if set(FEEDBACK_COLUMNS) - set(row):
                    raise InputError(self.path, f"not a feedback CSV: expected {FEEDBACK_COLUMNS}")
                self.rows[(row["case_id"], row["organ"], row["side"], row["class"])] = row

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, item: ReviewItem) -> dict | None:
        """The mark of ``item``, or None when it has none yet."""
        return self.rows.get(item.key)

    def mark(
        self, item: ReviewItem, verdict: str, comment: str = "", threshold: float = 0.5
    ) -> dict:
        """Record a verdict and rewrite the file atomically (temporary file, fsync, rename)."""
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}; use {VERDICTS}")
        row = {
            "case_id": item.case_id,
            "patient_id": item.patient_id,
            "organ": item.organ,
            "side": item.side,
            "class": item.cls,
            "probability": f"{item.probability:.5f}",
            "label": str(item.label),
            "threshold": f"{threshold:.5f}",
            "outcome": item.outcome(threshold),
            "verdict": verdict,
            "comment": comment.replace("\r", " ").strip(),
            "marked_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.rows[item.key] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.path) as tmp:
            with tmp.open("w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FEEDBACK_COLUMNS)
                writer.writeheader()
                writer.writerows(self.rows.values())
                f.flush()
                os.fsync(f.fileno())
        return row
