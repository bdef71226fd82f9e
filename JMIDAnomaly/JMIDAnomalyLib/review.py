"""Error analysis: step through a model's false positives and negatives, mark each one.

- :class:`ReviewQueue` reads an evaluation's predictions CSV (``evaluation.COLUMNS``) and
  selects items by organ, class, outcome (FP, FN, TP, TN) and threshold, the most confident
  first (largest distance between probability and threshold).
- :class:`FeedbackLog` keeps the reader's marks (agree / label wrong / model wrong, with a
  comment) in a CSV rewritten atomically after every mark: a crash or a kill between two marks
  loses nothing, and reopening the file continues where the reader stopped.
- :class:`ReviewSession` ties them to :class:`reading.ReadingLogic`: each step loads the case's
  CT and segmentation from the data root (``images/``, ``segs/``, ``labels.json``, the layout
  of ``jmid evaluate --data`` and the demo cohort) and its heatmap for the item's class —
  from the heatmap cache when it was computed before, else through the worker.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, atomic_output
from .organs import organ_key

VERDICTS = ("agree", "label_wrong", "model_wrong")
OUTCOMES = ("FP", "FN", "TP", "TN")
#: the outcome filters both review front ends offer (label -> outcomes)
OUTCOME_CHOICES = {"false positives and negatives": ("FP", "FN"), "false positives": ("FP",),
                   "false negatives": ("FN",), "true positives": ("TP",),
                   "true negatives": ("TN",)}  # fmt: skip
FEEDBACK_COLUMNS = ["case_id", "patient_id", "organ", "side", "class", "probability", "label",
                    "threshold", "outcome", "verdict", "comment", "marked_at"]  # fmt: skip


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
        return (self.case_id, self.organ, self.side, self.cls)

    @property
    def organ_key(self) -> str:
        return organ_key(self.organ, self.side)

    def outcome(self, threshold: float) -> str:
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

    def __init__(self, predictions_csv: str | os.PathLike,
                 thresholds: dict[str, dict[str, float]] | None = None) -> None:  # fmt: skip
        from .evaluation import COLUMNS

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
            self.all.append(ReviewItem(row["case_id"], row["patient_id"], row["organ"],
                                       row["side"], row["class"], probability, label,
                                       row["fold"], row["evidence"]))  # fmt: skip
        self.items: list[ReviewItem] = []
        self.index = 0
        self.threshold_override: float | None = None

    @property
    def organs(self) -> list[str]:
        return sorted({i.organ for i in self.all})

    @property
    def classes(self) -> list[str]:
        return sorted({i.cls for i in self.all})

    @property
    def cases(self) -> list[str]:
        return sorted({i.case_id for i in self.all})

    def threshold(self, item: ReviewItem) -> float:
        """The threshold ``item`` is judged at (the override, else its bundle's, else 0.5)."""
        if self.threshold_override is not None:
            return self.threshold_override
        return self.thresholds.get(item.organ, {}).get(item.cls, 0.5)

    def select(self, organ: str | None = None, cls: str | None = None, outcomes=("FP", "FN"),
               threshold: float | None = None) -> list[ReviewItem]:  # fmt: skip
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
        return self.items[self.index] if self.items else None

    def step(self, delta: int) -> ReviewItem | None:
        """Move ``delta`` items (clamped at both ends); returns the new current item."""
        if self.items:
            self.index = min(max(self.index + delta, 0), len(self.items) - 1)
        return self.current


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
        return self.rows.get(item.key)

    def mark(self, item: ReviewItem, verdict: str, comment: str = "",
             threshold: float = 0.5) -> dict:  # fmt: skip
        """Record a verdict and rewrite the file atomically (temporary file, fsync, rename)."""
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}; use {VERDICTS}")
        row = {"case_id": item.case_id, "patient_id": item.patient_id, "organ": item.organ,
               "side": item.side, "class": item.cls, "probability": f"{item.probability:.5f}",
               "label": str(item.label), "threshold": f"{threshold:.5f}",
               "outcome": item.outcome(threshold), "verdict": verdict,
               "comment": comment.replace("\r", " ").strip(),
               "marked_at": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
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


def case_files(data_root: str | os.PathLike, case_id: str) -> tuple[Path, Path, Path]:
    """(CT, organ label map, label table) of a case under a data root, or a clear error."""
    root = Path(data_root)
    ct, seg, table = (root / "images" / f"{case_id}.nii.gz", root / "segs" / f"{case_id}.nii.gz",
                      root / "labels.json")  # fmt: skip
    for path, what in ((ct, "CT"), (seg, "organ label map"), (table, "label table")):
        if not path.is_file():
            raise InputError(path, f"the {what} of case {case_id} is missing under the data root")
    return ct, seg, table


def load_case(scene, data_root: str | os.PathLike, case_id: str):
    """A data-root case's CT and organ segmentation as nodes of ``scene``: (volume, segmentation).
    The nodes are named after the case id (the data root's pseudonymous file name)."""
    from . import mrml
    from .imageio import read_ct, read_label_map
    from .labelmaps import read_label_names, select_organs

    ct_path, seg_path, table = case_files(data_root, case_id)
    ct = read_ct(ct_path)
    volume = mrml.image_to_volume_node(ct, scene, case_id)
    label_map, names = select_organs(read_label_map(seg_path, reference=ct),
                                     read_label_names(table))  # fmt: skip
    segmentation = mrml.label_map_to_segmentation_node(
        label_map, names, scene, f"{case_id} organs", volume
    )
    return volume, segmentation


class ReviewSession:
    """Error analysis in an MRML scene: one review item at a time, with its heatmap.

    Args:
        reading: the :class:`reading.ReadingLogic` that runs analyses and loads results.
        predictions_csv / data_root: the evaluation's predictions and the cases' data root.
        feedback_csv: where the marks go (created or continued).
        bundles: the model bundles (their thresholds judge FP/FN; they make the heatmaps).
        heatmap_cache: results folders per item (default ``<feedback>_heatmaps/`` beside the
            feedback file), so revisiting an item needs no new analysis.
        explain: heatmap method.
    """

    def __init__(self, reading, predictions_csv, data_root, feedback_csv, bundles,
                 heatmap_cache=None, explain: str = "occlusion") -> None:  # fmt: skip
        from .analysis import find_bundles

        self.reading = reading
        self.bundles = [str(b) for b in bundles]
        loaded = find_bundles(self.bundles, weights=False)  # thresholds only: the worker
        # loads the weights; loading them here too would stall the GUI for nothing
        self.queue = ReviewQueue(predictions_csv, {o: b.thresholds for o, b in loaded.items()})
        self.data_root = Path(data_root)
        self.feedback = FeedbackLog(feedback_csv)
        feedback = Path(feedback_csv)
        self.cache = Path(heatmap_cache or feedback.with_name(f"{feedback.stem}_heatmaps"))
        self.explain = explain
        self.nodes = None  # scenes.CaseNodes of the item on show
        self.job: str | None = None  # the analysis running for it
        self._shown: list = []

    def show_current(self) -> str | None:
        """Load the current item's case into the scene. Returns the worker job computing its
        heatmap, or None when it came from the cache (or there is no item)."""
        self.clear()
        item = self.queue.current
        if item is None:
            return None
        volume, segmentation = load_case(self.reading.scene, self.data_root, item.case_id)
        self._shown = [volume, segmentation]
        folder = self.cache / f"{item.case_id}_{item.organ_key}_{item.cls}"
        if (folder / "scores.json").is_file():
            self.take(self.reading.load_results(folder, volume, segmentation, item.evidence))
            return None
        self.job = self.reading.start_analysis(
            volume, self.bundles, segmentation, organs=[item.organ], explain=self.explain,
            explain_class=item.cls, report_text=item.evidence, out=str(folder),
        )  # fmt: skip
        return self.job

    def handle(self, event) -> bool:
        """Take the result of the current item's analysis (from ``process_events``/``wait``);
        True when ``event`` was it."""
        if event.job != self.job or event.kind not in ("result", "error", "cancelled"):
            return False
        self.job = None
        if event.kind == "result":
            self.take(event.data["nodes"])
        return True

    def take(self, nodes) -> None:
        """Show ``nodes`` (the current item's results): its heatmap on, the views centred where
        the model looked."""
        self.nodes = nodes
        self._shown += [nodes.scores, nodes.report, *nodes.heatmaps.values()]
        key = self.queue.current.organ_key
        self.reading.centre_on_finding(nodes, key)
        self.reading.show_heatmap(nodes, key if key in nodes.heatmaps else None)

    def step(self, delta: int) -> str | None:
        """Go ``delta`` items forward (negative: back) and show that item."""
        self.queue.step(delta)
        return self.show_current()

    def filter(self, organ: str | None = None, cls: str | None = None,
               outcomes: str | tuple = "false positives and negatives",
               threshold: float | None = None) -> str | None:  # fmt: skip
        """Select the items to review (``outcomes``: an :data:`OUTCOME_CHOICES` label or a tuple
        of outcomes; ``threshold`` 0 or None: each bundle's) and show the first."""
        if isinstance(outcomes, str):
            if outcomes not in OUTCOME_CHOICES:
                choices = list(OUTCOME_CHOICES)
                raise ValueError(f"unknown outcome filter {outcomes!r}; use {choices}")
            outcomes = OUTCOME_CHOICES[outcomes]
        self.queue.select(organ or None, cls or None, outcomes, threshold or None)
        return self.show_current()

    def describe(self) -> dict:
        """What a front end shows of the current item: ``summary`` (one line), ``evidence`` (the
        report sentence), ``verdict`` and ``comment`` of an earlier mark, ``position``/``total``."""
        item = self.queue.current
        if item is None:
            return {"summary": "No case matches the filters.", "evidence": "", "verdict": "",
                    "comment": "", "position": 0, "total": 0}  # fmt: skip
        threshold = self.queue.threshold(item)
        mark = self.feedback.get(item) or {}
        position, total = self.queue.index + 1, len(self.queue.items)
        summary = (
            f"{position} / {total}: {item.case_id} {item.organ_key} {item.cls}: probability "
            f"{item.probability:.2f} (threshold {threshold:.2f}), report label {item.label} -> "
            f"{item.outcome(threshold)}" + (f" [{mark['verdict']}]" if mark else "")
        )
        return {"summary": summary, "evidence": item.evidence or "(no report sentence)",
                "verdict": mark.get("verdict", ""), "comment": mark.get("comment", ""),
                "position": position, "total": total}  # fmt: skip

    def mark(self, verdict: str, comment: str = "") -> dict:
        """Record the reader's verdict on the current item (saved at once)."""
        item = self.queue.current
        if item is None:
            raise ValueError("no item to mark")
        return self.feedback.mark(item, verdict, comment, self.queue.threshold(item))

    def clear(self) -> None:
        """Remove the nodes of the item on show (and stop its analysis)."""
        if self.job is not None:
            self.reading.cancel()
            self.job = None
        for node in self._shown:
            if node is not None and node.GetScene() is not None:
                self.reading.scene.RemoveNode(node)
        self._shown, self.nodes = [], None
