"""Error analysis: step through a model's false positives and negatives, mark each one.

- :class:`~JMIDAnomalyLib.review.queue.ReviewQueue`: the predictions to step through;
- :class:`~JMIDAnomalyLib.review.feedback.FeedbackLog`: the reader's marks;
- :class:`ReviewSession` ties them to
:class:`~JMIDAnomalyLib.review.reading.ReadingLogic`: each step loads the case's
  CT and segmentation from the data root (``images/``, ``segs/``, ``labels.json``, the layout
  of ``jmid evaluate --data`` and the demo cohort) and its heatmap for the item's class —
  from the heatmap cache when it was computed before, else through the worker.
"""

from __future__ import annotations

import os
from pathlib import Path

from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.inference.methods import OCCLUSION
from JMIDAnomalyLib.review.feedback import FeedbackLog
from JMIDAnomalyLib.review.queue import OUTCOME_CHOICES, ReviewQueue
from JMIDAnomalyLib.worker.protocol import RESULT


def case_files(data_root: str | os.PathLike, case_id: str) -> tuple[Path, Path, Path]:
    """(CT, organ label map, label table) of a case under a data root, or a clear error."""
    root = Path(data_root)
    ct, seg, table = (
        root / "images" / f"{case_id}.nii.gz",
        root / "segs" / f"{case_id}.nii.gz",
        root / "labels.json",
    )
    for path, what in ((ct, "CT"), (seg, "organ label map"), (table, "label table")):
        if not path.is_file():
            raise InputError(path, f"the {what} of case {case_id} is missing under the data root")
    return ct, seg, table


def load_case(scene, data_root: str | os.PathLike, case_id: str):
    """A data-root case's CT and organ segmentation as nodes of ``scene``: (volume, segmentation).
    The nodes are named after the case id (the data root's pseudonymous file name)."""
    from JMIDAnomalyLib.imaging.label_tables import read_segmentation, select_organs
    from JMIDAnomalyLib.imaging.volumes import read_ct
    from JMIDAnomalyLib.scene import mrml

    ct_path, seg_path, table = case_files(data_root, case_id)
    ct = read_ct(ct_path)
    volume = mrml.image_to_volume_node(ct, scene, case_id)
    label_map, names = select_organs(*read_segmentation(seg_path, ct, table))
    segmentation = mrml.label_map_to_segmentation_node(
        label_map, names, scene, f"{case_id} organs", volume
    )
    return volume, segmentation


class ReviewSession:
    """Error analysis in an MRML scene: one review item at a time, with its heatmap.

    Args:
        reading: the :class:`~JMIDAnomalyLib.review.reading.ReadingLogic` that runs analyses
            and loads results.
        predictions_csv / data_root: the evaluation's predictions and the cases' data root.
        feedback_csv: where the marks go (created or continued).
        bundles: the model bundles (their thresholds judge FP/FN; they make the heatmaps).
        heatmap_cache: results folders per item (default ``<feedback>_heatmaps/`` beside the
            feedback file), so revisiting an item needs no new analysis.
        explain: heatmap method.
    """

    def __init__(
        self,
        reading,
        predictions_csv,
        data_root,
        feedback_csv,
        bundles,
        heatmap_cache=None,
        explain: str = OCCLUSION,
    ) -> None:
        from JMIDAnomalyLib.inference.predictor import find_bundles

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
            volume,
            self.bundles,
            segmentation,
            organs=[item.organ],
            explain=self.explain,
            explain_class=item.cls,
            report_text=item.evidence,
            out=str(folder),
        )
        return self.job

    def handle(self, event) -> bool:
        """Take the result of the current item's analysis (from ``process_events``/``wait``);
        True when ``event`` was it."""
        if event.job != self.job or not event.ended:
            return False
        self.job = None
        if event.kind == RESULT:
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

    def filter(
        self,
        organ: str | None = None,
        cls: str | None = None,
        outcomes: str | tuple = "false positives and negatives",
        threshold: float | None = None,
    ) -> str | None:
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
            return {
                "summary": "No case matches the filters.",
                "evidence": "",
                "verdict": "",
                "comment": "",
                "position": 0,
                "total": 0,
            }
        threshold = self.queue.threshold(item)
        mark = self.feedback.get(item) or {}
        position, total = self.queue.index + 1, len(self.queue.items)
        summary = (
            f"{position} / {total}: {item.case_id} {item.organ_key} {item.cls}: probability "
            f"{item.probability:.2f} (threshold {threshold:.2f}), report label {item.label} -> "
            f"{item.outcome(threshold)}" + (f" [{mark['verdict']}]" if mark else "")
        )
        return {
            "summary": summary,
            "evidence": item.evidence or "(no report sentence)",
            "verdict": mark.get("verdict", ""),
            "comment": mark.get("comment", ""),
            "position": position,
            "total": total,
        }

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
