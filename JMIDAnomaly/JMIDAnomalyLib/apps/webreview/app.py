"""``jmid review``: reading and error analysis in a browser, served by trame-slicer.

The browser front end of the same controller the JMIDAnomaly module drives:
:class:`~JMIDAnomalyLib.review.controller.ReadingController` over
:class:`~JMIDAnomalyLib.review.reading.ReadingLogic` (analysis in the background worker, results
into the MRML scene, score rows, overlays) and
:class:`~JMIDAnomalyLib.review.error_analysis.ReviewSession` (false positives and negatives,
marks saved after every click).
trame-slicer renders Slicer's own slice views (``vtkMRMLSliceLogic`` and displayable managers
from ``slicer-core``) offscreen on the server and streams them to the page; nothing here
reimplements an analysis, a table or an overlay.

The server binds 127.0.0.1 unless another host is asked for, and serves nothing without
sign-in (:mod:`.access`): reports and images are patient data. Case ids and report text travel
over the websocket only, never in URLs.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.inference.methods import OCCLUSION
from JMIDAnomalyLib.review.queue import OUTCOME_CHOICES

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
    explain: str = OCCLUSION
    device: str = "auto"
    organs: list[str] = field(default_factory=list)
    users: str = ""  # users file (name:scrypt hash lines); else a token is printed
    reader: str = ""  # the reader marks record under token sign-in (default: login name)
    certfile: str = ""  # TLS certificate and key
    keyfile: str = ""

    def check(self) -> None:
        """Clear messages for what cannot work, before the server starts."""
        from JMIDAnomalyLib.inference.predictor import find_bundles

        if not self.bundles:
            raise InputError("--bundle", "give at least one model bundle")
        find_bundles(self.bundles, weights=False)  # names a missing or broken bundle
        if bool(self.ct) == bool(self.cases):
            raise InputError("jmid review", "give either --ct CT or --cases PREDICTIONS_CSV")
        for path, what in (
            (self.ct, "CT"),
            (self.seg, "organ label map"),
            (self.cases, "predictions CSV"),
        ):
            if path and not Path(path).exists():
                raise InputError(path, f"the {what} does not exist")
        if self.seg:
            from JMIDAnomalyLib.imaging.label_tables import segmentation_label_names

            segmentation_label_names(self.seg, self.seg_labels)  # names a missing table
        if self.cases and not (self.data_root and Path(self.data_root).is_dir()):
            problem = "--cases needs the data root of its cases (images/, segs/)"
            raise InputError(self.data_root or "--data-root", problem)
        if self.cases and not self.feedback:
            self.feedback = str(Path(self.cases).with_name("feedback.csv"))


class ReviewApp:
    """The trame application: one MRML scene, one worker, one reader.

    The page's widgets are bound to a :class:`~JMIDAnomalyLib.review.controller.ReadingController`
    (the flow the Slicer module drives too); this class is its :class:`ReadingView`, writing what
    the controller shows into the trame state.

    Args:
        options: what to open.
        server: a trame server (default: a new one).
    """

    def __init__(self, options: ReviewOptions, server=None) -> None:
        from trame.app import get_server
        from trame_slicer.core import SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        from JMIDAnomalyLib.apps.webreview.page import build_ui
        from JMIDAnomalyLib.review.controller import ReadingController
        from JMIDAnomalyLib.review.reading import ReadingLogic

        options.check()
        self.options = options
        self.server = server or get_server(None, client_type="vue3")
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layout = _reading_layout(self.slicer, self.server)
        self.controller = ReadingController(ReadingLogic(self.slicer.scene), view=self)
        self.review = None
        if options.cases:
            self.review = self.controller.open_review(
                options.cases, options.data_root, options.feedback, options.bundles, options.explain
            )
        self.volume = self.segmentation = None
        self._init_state()
        self.ui = build_ui(self)
        self.server.controller.on_server_ready.add(self._on_ready)
        self.server.controller.on_server_exited.add(lambda **_: self.controller.reading.shutdown())
        self.state.change("heatmap", "overlay", "opacity")(self._on_overlay_change)
        self.state.change("review_organ", "review_class", "review_outcome", "review_threshold")(
            self._on_review_filter
        )

    @property
    def state(self):
        """The trame state shared with the page."""
        return self.server.state

    def _init_state(self) -> None:
        queue = self.review.queue if self.review else None
        self.state.update(
            {
                "trame__title": "JMID Anomaly review",
                "cases": queue.cases if queue else [],
                "case_name": "",
                "volume_loaded": False,
                "running": False,
                "progress": 0,
                "status": "Choose a case." if self.options.cases else "Loading the CT...",
                "error": "",
                "log": [],
                "scores": [],
                "domain_note": "",
                "selected_row": -1,
                "heatmaps": [],
                "heatmap": None,
                "overlay": True,
                "opacity": 0.5,
                "report": "",
                "review_organs": ["(any)", *queue.organs] if queue else [],
                "review_classes": ["(any)", *queue.classes] if queue else [],
                "review_outcomes": list(OUTCOME_CHOICES),
                "review_organ": "(any)",
                "review_class": "(any)",
                "review_outcome": "false positives and negatives",
                "review_threshold": 0.0,
                "review_active": False,
                "comment": "",
                "review_item": {
                    "summary": "Press Next to start.",
                    "evidence": "",
                    "verdict": "",
                    "comment": "",
                    "position": 0,
                    "total": 0,
                },
                "marks": len(self.review.feedback) if self.review else 0,
            }
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def _on_ready(self, **_) -> None:
        if self.options.ct:
            with self.state:
                self._guarded(self._open_ct)
        asyncio.get_event_loop().create_task(self._poll())

    async def _poll(self) -> None:
        """Hand the worker's events to the controller every 100 ms: the page never waits."""
        while True:
            with self.state:
                self._guarded(self.controller.process_events)
            await asyncio.sleep(POLL_SECONDS)

    def guarded(self, action):
        """``action`` as a page callback: its errors become the page's error message."""

        def run(*args) -> None:
            self.state.error = ""
            self._guarded(action, *args)

        return run

    def _guarded(self, action, *args) -> None:
        """Run a UI action; a bad input or a failed step is a message on the page."""
        try:
            action(*args)
        except (InputError, ValueError, OSError, IndexError, RuntimeError) as exc:
            logger.warning("%s", exc)
            self.state.update({"error": str(exc), "status": "Failed."})

    # -- the page's actions -------------------------------------------------------------------

    def _open_ct(self) -> None:
        self.volume, self.segmentation = self.controller.open_file(
            self.options.ct, self.options.seg, self.options.seg_labels
        )
        self._show_volume(self.volume.GetName())

    def open_case(self, case_id: str) -> None:
        """Load a case of the predictions CSV (its CT and organs from the data root)."""
        self.state.update({"review_active": False, "error": ""})
        self.volume, self.segmentation = self.controller.open_case(case_id)
        self._show_volume(case_id)

    def _show_volume(self, name: str) -> None:
        self.slicer.display_manager.show_volume_in_slice_background(self.volume)
        self.slicer.display_manager.show_volume_in_slice_foreground(None)
        self.slicer.display_manager.reset_views()
        self.state.update(
            {"volume_loaded": True, "case_name": name, "status": f"{name} loaded: press Analyze."}
        )

    def analyze(self) -> None:
        """Analyze the open case in the worker."""
        if self.volume is None or self.controller.reading.busy:
            return
        o = self.options
        self.controller.analyze(
            self.volume, o.bundles, self.segmentation, o.seg_model, o.organs, o.explain, o.device
        )

    def cancel(self) -> None:
        """Stop the running analysis."""
        self.controller.cancel()

    def select_row(self, row: int) -> None:
        """A score row was clicked: centre the views on its organ and show its heatmap."""
        key = self.controller.select_row(int(row))
        if key is None:
            return
        shown = key if key in self.controller.nodes.heatmaps else None
        self.state.update(
            {
                "selected_row": int(row),
                "heatmap": shown,
                "overlay": True,
                "status": f"Centred on {key}.",
            }
        )
        self.controller.reading.set_heatmap_opacity(self.state.opacity)

    def _on_overlay_change(self, heatmap=None, overlay=True, opacity=0.5, **_) -> None:
        self.controller.show_heatmap(heatmap if overlay else None, float(opacity))

    def _on_review_filter(self, **_) -> None:
        if self.state.review_active:
            self._guarded(self._review_filter)

    def _review_filter(self) -> None:
        s = self.state
        pick = {"(any)": None}
        self.volume = None
        self.controller.review_filter(
            pick.get(s.review_organ, s.review_organ),
            pick.get(s.review_class, s.review_class),
            s.review_outcome,
            float(s.review_threshold or 0),
        )

    def review_step(self, delta: int) -> None:
        """Previous (-1) or next (+1) item; the first press starts the review."""
        if not self.state.review_active:
            self.state.update({"review_active": True, "case_choice": None})
            self._review_filter()
            return
        self.volume = None
        self.controller.review_step(int(delta))

    def set_reader(self, reader: str) -> None:
        """The signed-in reader whose page connected: their marks, recorded under their name."""
        if self.review is not None:
            self.review.feedback.reader = reader
            self.state.update({"marks": len(self.review.feedback)})
        self.state.update({"reader": reader})

    def mark(self, verdict: str) -> None:
        """Save the reader's verdict on the current item (the store is written at once)."""
        self.controller.mark(verdict, self.state.comment or "")
        saved = f"Saved: {verdict} ({self.review.feedback.path.name})."
        self.state.update({"marks": len(self.review.feedback), "status": saved})

    # -- ReadingView: what the controller shows -----------------------------------------------

    def _log(self, line: str) -> None:
        self.state.log = [*self.state.log, line][-LOG_LINES:]

    def show_log(self, message: str) -> None:
        """A worker log line into the page's log panel."""
        self._log(message)

    def show_progress(self, fraction: float, message: str) -> None:
        """The progress bar and status line (and the log panel)."""
        self._log(message)
        self.state.update({"progress": round(100 * fraction), "status": message})

    def show_error(self, message: str) -> None:
        """A failed analysis: the page's error box (and the log panel)."""
        self._log(message)
        self.state.error = message

    def set_running(self, running: bool, status: str) -> None:
        """The Analyze/Cancel buttons, progress bar and status line."""
        self.state.update({"running": running, "status": status})
        if running:
            self.state.progress = 0

    def show_results(self, nodes) -> None:
        """The scores table, heatmap choices and report of ``nodes`` (None: empty)."""
        from JMIDAnomalyLib.common.organs import organ_key
        from JMIDAnomalyLib.scene.cases import score_rows

        rows = score_rows(nodes.scores) if nodes is not None else []
        notes = {organ_key(r["organ"], r["side"]): r["note"] for r in rows if r["note"]}
        self.state.update(
            {
                "domain_note": "; ".join(f"{organ}: {note}" for organ, note in notes.items()),
                "scores": [
                    {
                        "organ": organ_key(r["organ"], r["side"]),
                        "class": r["class"],
                        "probability": round(r["probability"], 3),
                        "threshold": round(r["threshold"], 3),
                        "flag": r["flag"],
                    }
                    for r in rows
                ],
                "selected_row": -1,
                "heatmaps": list(nodes.heatmaps) if nodes else [],
                "heatmap": self.controller.shown_heatmap(),
                "overlay": True,
                "report": nodes.report.GetText() if nodes and nodes.report else "",
            }
        )

    def show_review_item(self, item: dict) -> None:
        """The error-analysis panel: the item, its report sentence, an earlier mark."""
        current = self.review.queue.current if self.review else None
        self.state.update(
            {
                "review_item": item,
                "comment": item["comment"],
                "case_name": current.case_id if current else "",
                "volume_loaded": False,
            }
        )


def _reading_layout(slicer_app, server):
    """Axial view on the left, coronal over sagittal on the right."""
    from trame_slicer.core import LayoutManager
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    layout = LayoutManager(slicer_app.scene, slicer_app.view_manager, server)
    axial, coronal, sagittal = (
        ViewLayoutDefinition.axial_view(),
        ViewLayoutDefinition.coronal_view(),
        ViewLayoutDefinition.sagittal_view(),
    )
    layout.register_layout_dict(
        {
            "Reading": Layout(
                LayoutDirection.Horizontal,
                [axial, Layout(LayoutDirection.Vertical, [coronal, sagittal])],
            )
        }
    )
    layout.set_layout("Reading")
    return layout
