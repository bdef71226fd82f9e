"""The reading and error-analysis flow, once, for every front end.

The Slicer module's Widget and the browser page (``jmid review``) both drive one
:class:`ReadingController`: it starts analyses, turns the worker's events into calls on the
front end's :class:`ReadingView`, keeps the results on show, and runs the error-analysis steps.
A front end only binds its widgets to these calls and implements the view.

Importing this module needs no torch (the Slicer module imports it before its dependencies are
installed).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.inference.methods import OCCLUSION
from JMIDAnomalyLib.review.error_analysis import ReviewSession, load_case
from JMIDAnomalyLib.review.reading import ReadingLogic
from JMIDAnomalyLib.scene.cases import CaseNodes
from JMIDAnomalyLib.worker.protocol import CANCELLED, ERROR, LOG, PROGRESS, RESULT, WorkerEvent

#: What the status line says when a job ends, by the event that ended it.
END_STATUS = {RESULT: "Done.", CANCELLED: "Cancelled.", ERROR: "Failed."}


class ReadingView(Protocol):
    """What a front end shows. The controller calls these; each front end implements them with
    its own widgets (Qt in Slicer, trame state in the browser)."""

    def show_log(self, message: str) -> None:
        """A line of the worker's log."""

    def show_progress(self, fraction: float, message: str) -> None:
        """The running job's progress (0..1) and what it is doing."""

    def show_results(self, nodes: CaseNodes | None) -> None:
        """The results on show (scores table, heatmaps, report); None clears them."""

    def show_review_item(self, item: dict) -> None:
        """The current error-analysis item (:meth:`ReviewSession.describe`)."""

    def show_error(self, message: str) -> None:
        """A failed analysis."""

    def set_running(self, running: bool, status: str) -> None:
        """Whether a job runs now, and the status line."""


class _NoView:
    """A view that shows nothing (scripts, self-tests)."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class ReadingController:
    """One reader's session: reading a case, and stepping through a model's mistakes.

    Args:
        reading: the :class:`ReadingLogic` (worker, scene) the session runs on.
        view: the front end (default: none, for scripts).
    """

    def __init__(self, reading: ReadingLogic, view: ReadingView | None = None) -> None:
        self.reading = reading
        self.view: ReadingView = view or _NoView()
        self.review: ReviewSession | None = None
        self.nodes: CaseNodes | None = None  # the results on show
        self.job: str | None = None  # the reading analysis running
        self._loaded: list = []  # nodes this controller loaded (cases it opened)
        self._own_results = False  # the results on show belong to such a case

    @property
    def scene(self):
        """The MRML scene the session shows its nodes in."""
        return self.reading.scene

    # -- reading ------------------------------------------------------------------------------

    def analyze(
        self,
        volume,
        bundles: Sequence[str | os.PathLike],
        segmentation=None,
        seg_model: str = "",
        organs: Sequence[str] = (),
        explain: str = OCCLUSION,
        device: str = "auto",
        report_text: str = "",
    ) -> str:
        """Queue the analysis of ``volume`` (see :meth:`ReadingLogic.start_analysis`); returns
        its job id. Its results replace those on show when they arrive."""
        self.show(None)
        self._own_results = volume in self._loaded  # results of a case we opened: ours to remove
        self.job = self.reading.start_analysis(
            volume,
            [str(b) for b in bundles],
            segmentation,
            seg_model,
            organs,
            explain,
            device,
            report_text,
        )
        self.view.set_running(True, "Analysis queued...")
        return self.job

    def cancel(self) -> None:
        """Stop whatever runs (the worker's process tree is killed)."""
        self.reading.cancel()

    def process_events(self) -> list[WorkerEvent]:
        """Handle what the worker reported since the last call; never waits (front ends call
        it from a timer or an event loop)."""
        events = self.reading.process_events()
        for event in events:
            self.handle(event)
        return events

    def wait(self, job: str, timeout: float | None = None) -> WorkerEvent:
        """Block until ``job`` ends and handle its events (scripts and self-tests)."""
        event = self.reading.wait(job, timeout, on_event=self._handle_progress)
        self.handle(event)
        return event

    def handle(self, event: WorkerEvent) -> None:
        """Show one worker event: log and progress lines, then the end of a job."""
        self._handle_progress(event)
        if not event.ended:
            return
        if self.review is not None and self.review.handle(event):
            if event.kind == RESULT:
                self.show(self.review.nodes)
        elif event.job == self.job:
            self.job = None
            if event.kind == RESULT:
                self.show(event.data["nodes"])
        if event.kind == ERROR:
            self.view.show_error(f"Analysis failed: {event.message}")
        self.view.set_running(self.reading.busy, END_STATUS.get(event.kind, "Failed."))

    def _handle_progress(self, event: WorkerEvent) -> None:
        if event.kind == LOG:
            self.view.show_log(event.message)
        elif event.kind == PROGRESS:
            self.view.show_progress(float(event.data["fraction"]), event.message)

    def show(self, nodes: CaseNodes | None) -> None:
        """Put ``nodes`` on show (None: nothing)."""
        self.nodes = nodes
        self.view.show_results(nodes)

    def select_row(self, row: int) -> str | None:
        """A score row was chosen: centre the views where the model looked in its organ and
        show its heatmap. Returns the organ key (None when nothing is on show)."""
        if self.nodes is None:
            return None
        return self.reading.select_score_row(self.nodes, int(row))

    def show_heatmap(self, key: str | None, opacity: float | None = None) -> None:
        """Show organ ``key``'s heatmap over the CT (None: no overlay)."""
        if self.nodes is not None:
            self.reading.show_heatmap(
                self.nodes, key if key in self.nodes.heatmaps else None, opacity
            )

    def shown_heatmap(self) -> str | None:
        """The organ key whose heatmap the slice views show."""
        if self.nodes is None:
            return None
        composite = self.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        shown = composite.GetForegroundVolumeID() if composite else None
        return next((k for k, n in self.nodes.heatmaps.items() if n.GetID() == shown), None)

    # -- cases the session opens itself (the browser; Slicer's user loads volumes) -----------

    def open_file(self, ct: str | os.PathLike, seg: str = "", seg_labels: str = ""):
        """Load a CT file (and its organ label map) as the case to read: (volume, segmentation)."""
        from JMIDAnomalyLib.imaging.volumes import read_ct, volume_stem
        from JMIDAnomalyLib.scene import mrml
        from JMIDAnomalyLib.scene.cases import import_segmentation_for_volume

        self.clear_case()
        volume = mrml.image_to_volume_node(read_ct(ct), self.scene, volume_stem(ct))
        segmentation = None
        if seg:
            segmentation = import_segmentation_for_volume(volume, seg, seg_labels or None)
        self._loaded = [volume, segmentation]
        return volume, segmentation

    def open_case(self, case_id: str):
        """Load a case of the review's data root: (volume, segmentation)."""
        if self.review is None:
            raise InputError("case", "no predictions are loaded to choose a case from")
        self.clear_case()
        volume, segmentation = load_case(self.scene, self.review.data_root, case_id)
        self._loaded = [volume, segmentation]
        return volume, segmentation

    def clear_case(self) -> None:
        """Remove what is on show: the review item, a running analysis, the opened case."""
        if self.review is not None:
            self.review.clear()
        if self.job is not None:
            self.reading.cancel()
            self.job = None
        results = []
        theirs = self.review is not None and self.nodes is self.review.nodes
        if self.nodes is not None and self._own_results and not theirs:
            results = [self.nodes.scores, self.nodes.report, *self.nodes.heatmaps.values()]
        for node in (*self._loaded, *results):
            if node is not None and node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self._loaded = []
        self.show(None)

    # -- error analysis -----------------------------------------------------------------------

    def open_review(
        self,
        predictions_csv: str | os.PathLike,
        data_root: str | os.PathLike,
        feedback_csv: str | os.PathLike,
        bundles: Sequence[str | os.PathLike],
        explain: str = OCCLUSION,
    ) -> ReviewSession:
        """Start an error-analysis session (:class:`ReviewSession`) on a predictions CSV."""
        given = {
            "predictions CSV": predictions_csv,
            "data root": data_root,
            "feedback CSV": feedback_csv,
        }
        for what, path in given.items():
            if path is None or str(path) in ("", "."):
                raise InputError(what, f"select the {what}")
        if not bundles:
            raise InputError("model bundle", "select the model bundle")
        if self.review is not None:
            self.review.clear()
        self.review = ReviewSession(
            self.reading,
            predictions_csv,
            Path(data_root),
            feedback_csv,
            [str(b) for b in bundles],
            explain=explain,
        )
        return self.review

    def review_filter(
        self,
        organ: str | None = None,
        cls: str | None = None,
        outcomes: str | tuple = "false positives and negatives",
        threshold: float | None = None,
    ) -> str | None:
        """Select the items to review (see :meth:`ReviewSession.filter`) and show the first;
        returns the worker job computing its heatmap, if one is needed."""
        self.clear_case()
        return self._item_shown(self._session().filter(organ, cls, outcomes, threshold))

    def review_step(self, delta: int) -> str | None:
        """Show the item ``delta`` places on (negative: back)."""
        self.clear_case()
        return self._item_shown(self._session().step(int(delta)))

    def mark(self, verdict: str, comment: str = "") -> dict:
        """Record the reader's verdict on the current item (saved at once); returns the row."""
        session = self._session()
        if session.queue.current is None:
            raise InputError("mark", "no review item to mark: press Next first")
        row = session.mark(verdict, comment)
        self.view.show_review_item(session.describe())
        return row

    def _session(self) -> ReviewSession:
        if self.review is None:
            raise InputError("error analysis", "load the predictions first")
        return self.review

    def _item_shown(self, job: str | None) -> str | None:
        session = self._session()
        self.view.show_review_item(session.describe())
        if job is not None:
            self.view.set_running(True, "Computing the heatmap...")
        elif session.nodes is not None:
            self.show(session.nodes)
            self.view.set_running(self.reading.busy, "Heatmap from the cache.")
        return job
