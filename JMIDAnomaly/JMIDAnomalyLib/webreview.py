"""``jmid review``: reading and error analysis in a browser, served by trame-slicer.

The browser front end of the same Logic the JMIDAnomaly module uses: :class:`reading.ReadingLogic`
(analysis in the background worker, results into the MRML scene, score rows, overlays) and
:class:`review.ReviewSession` (false positives and negatives, marks saved after every click).
trame-slicer renders Slicer's own slice views (``vtkMRMLSliceLogic`` and displayable managers
from ``slicer-core``) offscreen on the server and streams them to the page; nothing here
reimplements an analysis, a table or an overlay.

The server binds 127.0.0.1 unless another host is asked for: reports and images are patient
data, and the page has no login.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .review import OUTCOME_CHOICES

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
POLL_SECONDS = 0.1
LOG_LINES = 200


@dataclass
class ReviewOptions:
    """What ``jmid review`` was asked to open (paths as given on the command line)."""

    bundles: list[str]
    ct: str = ""  # one CT to read
    seg: str = ""  # its organ label map (else the analysis segments with ``seg_model``)
    seg_labels: str = ""  # the label table of ``seg``
    seg_model: str = ""
    cases: str = ""  # a predictions CSV: its cases to read and its errors to review
    data_root: str = ""  # where the cases' CTs and segmentations are (images/, segs/)
    feedback: str = ""  # default: feedback.csv beside the predictions CSV
    explain: str = "occlusion"
    device: str = "auto"
    organs: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Clear messages for what cannot work, before the server starts."""
        from .analysis import find_bundles

        if not self.bundles:
            raise InputError("--bundle", "give at least one model bundle")
        find_bundles(self.bundles, weights=False)  # names a missing or broken bundle
        if bool(self.ct) == bool(self.cases):
            raise InputError("jmid review", "give either --ct CT or --cases PREDICTIONS_CSV")
        for path, what in ((self.ct, "CT"), (self.seg, "organ label map"),
                           (self.cases, "predictions CSV")):  # fmt: skip
            if path and not Path(path).exists():
                raise InputError(path, f"the {what} does not exist")
        if self.seg:
            from .cropjob import label_table

            label_table(self.seg, self.seg_labels)  # names a missing table
        if self.cases and not (self.data_root and Path(self.data_root).is_dir()):
            problem = "--cases needs the data root of its cases (images/, segs/)"
            raise InputError(self.data_root or "--data-root", problem)
        if self.cases and not self.feedback:
            self.feedback = str(Path(self.cases).with_name("feedback.csv"))


class ReviewApp:
    """The trame application: one MRML scene, one worker, one reader.

    Args:
        options: what to open.
        server: a trame server (default: a new one).
    """

    def __init__(self, options: ReviewOptions, server=None) -> None:
        from trame.app import get_server
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

        from .reading import ReadingLogic
        from .review import ReviewSession

        options.check()
        self.options = options
        self.server = server or get_server(None, client_type="vue3")
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layout = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        axial, coronal, sagittal = (ViewLayoutDefinition.axial_view(),
                                    ViewLayoutDefinition.coronal_view(),
                                    ViewLayoutDefinition.sagittal_view())  # fmt: skip
        self.layout.register_layout_dict({"Reading": Layout(LayoutDirection.Horizontal, [
            axial, Layout(LayoutDirection.Vertical, [coronal, sagittal])])})  # fmt: skip
        self.layout.set_layout("Reading")
        self.reading = ReadingLogic(self.slicer.scene)
        self.review = (
            ReviewSession(self.reading, options.cases, options.data_root, options.feedback,
                          options.bundles, explain=options.explain)  # fmt: skip
            if options.cases else None
        )  # fmt: skip
        self.volume = self.segmentation = None
        self.nodes = None  # scenes.CaseNodes on show
        self.job: str | None = None
        self._case_nodes: list = []
        self._init_state()
        from .webreview_ui import build_ui

        self.ui = build_ui(self)
        self.server.controller.on_server_ready.add(self._on_ready)
        self.server.controller.on_server_exited.add(lambda **_: self.reading.shutdown())
        self.state.change("heatmap", "overlay", "opacity")(self._on_overlay_change)
        self.state.change("review_organ", "review_class", "review_outcome", "review_threshold")(
            self._on_review_filter
        )

    @property
    def state(self):
        return self.server.state

    def _init_state(self) -> None:
        s = self.state
        s.trame__title = "JMID Anomaly review"
        queue = self.review.queue if self.review else None
        s.cases = queue.cases if queue else []
        s.case_name = ""
        s.volume_loaded = False
        s.running = False
        s.progress = 0
        s.status = "Choose a case." if self.options.cases else "Loading the CT..."
        s.error = ""
        s.log = []
        s.scores = []
        s.selected_row = -1
        s.heatmaps = []
        s.heatmap = None
        s.overlay = True
        s.opacity = 0.5
        s.report = ""
        s.review_organs = ["(any)", *queue.organs] if queue else []
        s.review_classes = ["(any)", *queue.classes] if queue else []
        s.review_outcomes = list(OUTCOME_CHOICES)
        s.review_organ, s.review_class = "(any)", "(any)"
        s.review_outcome = "false positives and negatives"
        s.review_threshold = 0.0
        s.review_active = False
        s.review_item = {"summary": "Press Next to start.", "evidence": "", "verdict": "",
                         "comment": "", "position": 0, "total": 0}  # fmt: skip
        s.comment = ""
        s.marks = len(self.review.feedback) if self.review else 0

    # -- lifecycle ----------------------------------------------------------------------------

    def _on_ready(self, **_) -> None:
        if self.options.ct:
            with self.state:
                self._guarded(self._open_ct)
        asyncio.get_event_loop().create_task(self._poll())

    async def _poll(self) -> None:
        """Hand the worker's events to the Logic every 100 ms: the page never waits on it."""
        while True:
            events = self.reading.process_events()
            if events:
                with self.state:
                    for event in events:
                        self._guarded(self._on_event, event)
            await asyncio.sleep(POLL_SECONDS)

    def guarded(self, action):
        """``action`` as a page callback: its errors become the page's error message."""
        return lambda *args: self._guarded(action, *args)

    def _guarded(self, action, *args) -> None:
        """Run a UI action; a bad input or a failed step is a message on the page."""
        try:
            self.state.error = ""
            action(*args)
        except (InputError, ValueError, OSError, IndexError, RuntimeError) as exc:
            logger.warning("%s", exc)
            self.state.error = str(exc)
            self.state.status = "Failed."

    # -- cases --------------------------------------------------------------------------------

    def _clear_case(self) -> None:
        if self.review is not None:
            self.review.clear()
        if self.job is not None:
            self.reading.cancel()
            self.job = None
        for node in (*self._case_nodes, *self._result_nodes()):
            if node is not None and node.GetScene() is not None:
                self.slicer.scene.RemoveNode(node)
        self._case_nodes, self.nodes, self.volume, self.segmentation = [], None, None, None
        self._show_results(None)

    def _result_nodes(self) -> list:
        if self.nodes is None or (self.review and self.nodes is self.review.nodes):
            return []
        return [self.nodes.scores, self.nodes.report, *self.nodes.heatmaps.values()]

    def _open_ct(self) -> None:
        from . import mrml
        from .cropjob import label_table
        from .imageio import read_ct, volume_stem
        from .scenes import import_segmentation_for_volume

        self._clear_case()
        name = volume_stem(self.options.ct)
        self.volume = mrml.image_to_volume_node(read_ct(self.options.ct), self.slicer.scene, name)
        if self.options.seg:
            table = label_table(self.options.seg, self.options.seg_labels)
            self.segmentation = import_segmentation_for_volume(self.volume, self.options.seg, table)
        self._case_nodes = [self.volume, self.segmentation]
        self._show_volume(name)

    def open_case(self, case_id: str) -> None:
        """Load a case of the predictions CSV (its CT and organs from the data root)."""
        from .review import load_case

        self._clear_case()
        self.state.review_active = False
        self.volume, self.segmentation = load_case(
            self.slicer.scene, self.options.data_root, case_id
        )
        self._case_nodes = [self.volume, self.segmentation]
        self._show_volume(case_id)

    def _show_volume(self, name: str) -> None:
        self.slicer.display_manager.show_volume_in_slice_background(self.volume)
        self.slicer.display_manager.show_volume_in_slice_foreground(None)
        self.slicer.display_manager.reset_views()
        self.state.update({"volume_loaded": True, "case_name": name,
                           "status": f"{name} loaded: press Analyze."})  # fmt: skip

    # -- analysis -----------------------------------------------------------------------------

    def analyze(self) -> None:
        if self.volume is None or self.reading.busy:
            return
        self._show_results(None)
        self.job = self.reading.start_analysis(
            self.volume, self.options.bundles, self.segmentation, self.options.seg_model,
            self.options.organs, self.options.explain, self.options.device,
        )  # fmt: skip
        self._set_running(True, "Analysis queued...")

    def cancel(self) -> None:
        self.reading.cancel()

    def _set_running(self, running: bool, status: str) -> None:
        self.state.update({"running": running, "status": status})
        if running:
            self.state.progress = 0

    def _on_event(self, event) -> None:
        if event.kind in ("log", "progress", "error"):  # the page's log: all the worker said
            self.state.log = [*self.state.log, event.message][-LOG_LINES:]
        if event.kind == "progress":
            self.state.progress = round(100 * event.data["fraction"])
            self.state.status = event.message
        elif event.kind in ("result", "error", "cancelled"):
            if self.review is not None and self.review.handle(event):
                if event.kind == "result":
                    self._show_results(self.review.nodes)
            elif event.job == self.job:
                self.job = None
                if event.kind == "result":
                    self._show_results(event.data["nodes"])
            if event.kind == "error":
                self.state.error = f"Analysis failed: {event.message}"
            status = {"result": "Done.", "cancelled": "Cancelled."}.get(event.kind, "Failed.")
            self._set_running(self.reading.busy, status)

    def _show_results(self, nodes) -> None:
        from .organs import organ_key
        from .scenes import score_rows

        self.nodes = nodes
        shown = self._shown_heatmap()
        rows = score_rows(nodes.scores) if nodes is not None else []
        self.state.update({
            "scores": [{"organ": organ_key(r["organ"], r["side"]), "class": r["class"],
                        "probability": round(r["probability"], 3),
                        "threshold": round(r["threshold"], 3), "flag": r["flag"]} for r in rows],
            "selected_row": -1, "heatmaps": list(nodes.heatmaps) if nodes else [],
            "heatmap": shown, "overlay": True,
            "report": nodes.report.GetText() if nodes and nodes.report else "",
        })  # fmt: skip

    def _shown_heatmap(self) -> str | None:
        """The organ key whose heatmap the views show (the Logic picked it)."""
        if self.nodes is None:
            return None
        composite = self.slicer.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        shown = composite.GetForegroundVolumeID() if composite else None
        return next((k for k, n in self.nodes.heatmaps.items() if n.GetID() == shown), None)

    def select_row(self, row: int) -> None:
        """A score row was clicked: centre the views on its organ and show its heatmap."""
        if self.nodes is None:
            return
        key = self.reading.select_score_row(self.nodes, int(row))
        shown = key if key in self.nodes.heatmaps else None
        self.state.update({"selected_row": int(row), "heatmap": shown, "overlay": True,
                           "status": f"Centred on {key}."})  # fmt: skip
        self.reading.set_heatmap_opacity(self.state.opacity)

    def _on_overlay_change(self, heatmap=None, overlay=True, opacity=0.5, **_) -> None:
        if self.nodes is not None:
            key = heatmap if overlay and heatmap in self.nodes.heatmaps else None
            self.reading.show_heatmap(self.nodes, key, float(opacity))

    # -- error analysis -----------------------------------------------------------------------

    def _on_review_filter(self, **_) -> None:
        if self.state.review_active:
            self._guarded(self._review_filter)

    def _review_filter(self) -> None:
        s = self.state
        self._clear_case()
        pick = {"(any)": None}
        job = self.review.filter(pick.get(s.review_organ, s.review_organ),
                                 pick.get(s.review_class, s.review_class), s.review_outcome,
                                 float(s.review_threshold or 0))  # fmt: skip
        self._review_item_shown(job)

    def review_step(self, delta: int) -> None:
        """Previous (-1) or next (+1) item; the first press starts the review."""
        if not self.state.review_active:
            self.state.update({"review_active": True, "case_choice": None})
            self._review_filter()
            return
        self._clear_case()
        self._review_item_shown(self.review.step(int(delta)))

    def _review_item_shown(self, job) -> None:
        shown = self.review.describe()
        item = self.review.queue.current
        self.state.update({"review_item": shown, "comment": shown["comment"],
                           "case_name": item.case_id if item else ""})  # fmt: skip
        if job is not None:
            self._set_running(True, "Computing the heatmap...")
        elif self.review.nodes is not None:
            self._show_results(self.review.nodes)
            self.state.status = "Heatmap from the cache."
        self.state.volume_loaded = False  # Analyze reads cases opened from the list

    def mark(self, verdict: str) -> None:
        """Save the reader's verdict on the current item (the CSV is rewritten at once)."""
        if self.review is None or self.review.queue.current is None:
            raise ValueError("no review item to mark: press Next first")
        self.review.mark(verdict, self.state.comment or "")
        saved = f"Saved: {verdict} ({self.review.feedback.path.name})."
        self.state.update({"review_item": self.review.describe(),
                           "marks": len(self.review.feedback), "status": saved})  # fmt: skip


def serve(options: ReviewOptions, host: str = DEFAULT_HOST, port: int = 8080) -> None:
    """Run the review server until interrupted."""
    # trame must not parse jmid's own command line (it has --host/--port/--data of its own).
    os.environ.setdefault("TRAME_ARGS", "")
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        # No screen (a server): render offscreen through EGL instead of failing over from X.
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    for name in ("trame", "trame_client", "trame_server", "trame_rca", "wslink", "aiohttp"):
        logging.getLogger(name).setLevel(logging.WARNING)  # their INFO is a debug trace
    app = ReviewApp(options)
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: anyone who reaches this port sees the cases (no login)",
                       host)  # fmt: skip
    app.server.start(host=host, port=port, open_browser=False, timeout=0)
