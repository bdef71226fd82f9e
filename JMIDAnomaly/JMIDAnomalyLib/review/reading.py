"""The reading workflow behind the JMIDAnomaly module (and the browser review): Qt-free.

:class:`ReadingLogic` takes MRML nodes, sends the analysis to the background worker
(:mod:`~JMIDAnomalyLib.worker.client`), never blocks, and puts what comes back into the scene:
the organ segmentation (when a model made it), one heatmap overlay volume per explained organ, a
scores table node and the report text. Selecting a score row centres the slice views on that
organ and shows its heatmap as the foreground layer of every slice view.

The module's Widget calls :meth:`ReadingLogic.process_events` from a timer; headless code and
tests call :meth:`ReadingLogic.wait`. Importing this module needs no torch (the Slicer module
imports it before its dependencies are installed).
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import TOTALSEGMENTATOR_ORGANS, organ_key
from JMIDAnomalyLib.inference.methods import OCCLUSION
from JMIDAnomalyLib.scene import mrml
from JMIDAnomalyLib.scene.cases import CaseNodes, add_results_to_scene
from JMIDAnomalyLib.worker.protocol import ERROR, RESULT, WorkerEvent
from JMIDAnomalyLib.worker.remote import worker_client

SLICE_VIEWS = ("Red", "Yellow", "Green")
ORGAN_FILL_OPACITY = 0.5  # Slicer's default 2D fill of segments


@dataclass
class _Job:
    volume_id: str
    segmentation_id: str | None
    report: str
    folder: Path  # the job's working folder (CT copy, segmentation copy, results)
    results: Path
    keep: bool  # the results folder was given by the caller: leave the working folder


def ensure_slice_views(scene) -> list:
    """The scene's slice nodes (Red, Yellow, Green), created when the scene has none yet — the
    Slicer application makes them itself; a bare ``vtkMRMLScene`` (tests, trame) does not."""
    from slicer import vtkMRMLSliceLogic

    nodes = []
    for name in SLICE_VIEWS:
        node = scene.GetSingletonNode(name, "vtkMRMLSliceNode")
        if node is None:
            logic = vtkMRMLSliceLogic()
            logic.SetMRMLScene(scene)
            node = logic.AddSliceNode(name)
            node.SetOrientation({"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}[name])
        nodes.append(node)
    return nodes


def _composite_nodes(scene) -> list:
    return [
        scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]


def organ_segment_names(key: str) -> list[str]:
    """Segment names an organ key (``liver``, ``kidney_left``, ``adrenal_right``) may have."""
    organ, _, side = key.partition("_")
    names = [s for s, o in TOTALSEGMENTATOR_ORGANS.items() if o == (organ, side or None)]
    return names + [key]


class ReadingLogic:
    """Analyses of volume nodes through a long-lived worker, results into ``scene``.

    Args:
        scene: the MRML scene (``slicer.mrmlScene`` in Slicer).
        python: the worker's interpreter (``PythonSlicer`` in Slicer; default this Python).
        work_dir: where CT copies and results of running jobs go (default a private temporary
            folder, removed by :meth:`shutdown`; results are deleted once loaded unless the
            caller named the results folder).
    """

    def __init__(self, scene, python: str | None = None, work_dir: str | None = None) -> None:
        self.scene = scene
        self.worker = worker_client(python)  # the shared worker behind a review gateway
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="jmid-reading-"))
        self._jobs: dict[str, _Job] = {}
        self._count = itertools.count(1)

    # -- running ------------------------------------------------------------------------------

    def start_analysis(
        self,
        volume_node,
        bundles,
        segmentation_node=None,
        seg_model: str = "",
        organs=(),
        explain: str = OCCLUSION,
        device: str = "auto",
        report_text: str = "",
        explain_class: str = "",
        out: str | None = None,
    ) -> str:
        """Queue the analysis of ``volume_node``; returns the job id at once.

        The segmentation is ``segmentation_node`` (exported on the CT's grid) or made by the
        nnU-Net model folder ``seg_model`` in the worker.
        """
        from JMIDAnomalyLib.imaging.label_tables import write_label_names
        from JMIDAnomalyLib.imaging.volumes import write_image
        from JMIDAnomalyLib.inference.analyze_job import AnalyzeConfig

        if volume_node is None:
            raise InputError("CT volume", "no CT volume is selected")
        folder = self.work_dir / f"case{next(self._count)}"
        seg = str(folder / "seg.nii.gz") if segmentation_node is not None else ""
        # The configuration checks the inputs before anything is written.
        config = AnalyzeConfig(
            ct=str(folder / "ct.nii.gz"),
            out=str(out or folder / "results"),
            bundles=[str(b) for b in bundles],
            seg=seg,
            seg_model="" if seg else str(seg_model),
            explain=explain,
            explain_class=explain_class,
            organs=list(organs),
            device=device,
            scene=False,
        )
        folder.mkdir(parents=True)
        write_image(mrml.volume_node_to_image(volume_node), config.ct)
        if seg:
            label_map, names = mrml.segmentation_node_to_label_map(segmentation_node, volume_node)
            write_image(label_map, seg)
            write_label_names(names, folder / "seg.json")
        job = self.worker.analyze(config)
        self._jobs[job] = _Job(
            volume_node.GetID(),
            segmentation_node.GetID() if segmentation_node is not None else None,
            report_text,
            folder,
            Path(config.out),
            out is not None,
        )
        return job

    def process_events(self) -> list[WorkerEvent]:
        """Handle what the worker reported since the last call (never waits). A ``result``
        event gets the created
        :class:`~JMIDAnomalyLib.scene.cases.CaseNodes` in ``event.data["nodes"]``."""
        events = self.worker.poll()
        for event in events:
            self._finish(event)
        return events

    def wait(self, job: str, timeout: float | None = None, on_event=None) -> WorkerEvent:
        """Block until ``job`` ends (scripts and tests); results are loaded as by
        :meth:`process_events`."""
        event = self.worker.wait(job, timeout, on_event)
        self._finish(event)
        return event

    def cancel(self) -> None:
        """Stop the running analysis: kills the worker's process tree."""
        self.worker.cancel()

    @property
    def busy(self) -> bool:
        """Whether the worker has a job."""
        return self.worker.busy

    def shutdown(self) -> None:
        """Stop the worker and remove the temporary files."""
        self.worker.close()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _finish(self, event: WorkerEvent) -> None:
        if not event.ended or event.job not in self._jobs:
            return
        job = self._jobs.pop(event.job)
        try:
            if event.kind == RESULT:
                volume = self.scene.GetNodeByID(job.volume_id)
                if volume is None:
                    event.kind, event.data["message"] = ERROR, "the CT was removed meanwhile"
                    return
                segmentation = (
                    self.scene.GetNodeByID(job.segmentation_id) if job.segmentation_id else None
                )
                event.data["nodes"] = self.load_results(
                    job.results, volume, segmentation, job.report
                )
        finally:
            for copy in ("ct.nii.gz", "seg.nii.gz"):
                (job.folder / copy).unlink(missing_ok=True)
            if not job.keep:
                shutil.rmtree(job.folder, ignore_errors=True)

    # -- results into the scene ---------------------------------------------------------------

    def load_results(
        self, folder, volume_node, segmentation_node=None, report_text: str = ""
    ) -> CaseNodes:
        """Put a results folder (``jmid analyze`` layout) of ``volume_node`` into the scene.

        Creates ``<CT> organs`` (unless ``segmentation_node`` is given), ``<CT> heatmap <organ>``
        overlay volumes, the ``<CT> scores`` table and, with a report, the ``<CT> report`` text
        node; shows the first flagged organ's heatmap (else the first heatmap).
        """
        from JMIDAnomalyLib.imaging.label_tables import read_label_names, select_organs
        from JMIDAnomalyLib.imaging.volumes import read_image, read_label_map

        folder = Path(folder)
        scores_path = folder / "scores.json"
        if not scores_path.is_file():
            raise InputError(folder, "not an analysis results folder: scores.json is missing")
        scores = json.loads(scores_path.read_text(encoding="utf-8"))
        label_map = names = None
        if segmentation_node is None:
            ct = mrml.volume_node_to_image(volume_node)
            label_map = read_label_map(folder / "seg.nii.gz", reference=ct)
            label_map, names = select_organs(label_map, read_label_names(folder / "seg.json"))
        heatmaps = {
            organ_key(organ["organ"], organ.get("side")): read_image(folder / organ["heatmap"])
            for organ in scores["organs"]
            if organ.get("heatmap")
        }
        nodes = add_results_to_scene(
            self.scene,
            volume_node,
            heatmaps,
            scores["organs"],
            label_map,
            names,
            segmentation_node,
            report_text,
        )
        flagged = [
            organ_key(o["organ"], o.get("side")) for o in scores["organs"] if o.get("flagged")
        ]
        first = next((k for k in flagged if k in nodes.heatmaps), next(iter(nodes.heatmaps), None))
        self.show_heatmap(nodes, first)
        return nodes

    def show_heatmap(self, nodes: CaseNodes, key: str | None, opacity: float | None = None) -> None:
        """Show the CT in every slice view with ``key``'s heatmap as the foreground overlay
        (None: no overlay); ``opacity`` 0..1 (default: keep the current one, 0.5 if none).
        While a heatmap is shown the organs are drawn as outlines, without fill."""
        ensure_slice_views(self.scene)
        heatmap = nodes.heatmaps.get(key) if key else None
        display = nodes.segmentation.GetDisplayNode() if nodes.segmentation else None
        if display is not None:  # organ outlines only while a heatmap is on: both stay visible
            display.SetOpacity2DFill(0.0 if heatmap else ORGAN_FILL_OPACITY)
        for composite in _composite_nodes(self.scene):
            composite.SetBackgroundVolumeID(nodes.volume.GetID())
            composite.SetForegroundVolumeID(heatmap.GetID() if heatmap else None)
            if opacity is not None:
                composite.SetForegroundOpacity(opacity)
            elif heatmap and composite.GetForegroundOpacity() == 0:
                composite.SetForegroundOpacity(0.5)

    def set_heatmap_opacity(self, opacity: float) -> None:
        """Foreground opacity of every slice view (0..1)."""
        for composite in _composite_nodes(self.scene):
            composite.SetForegroundOpacity(float(opacity))

    def select_score_row(self, nodes: CaseNodes, row: int) -> str:
        """The organ of scores-table ``row``: centres the slice views where the model looked in
        it (:meth:`centre_on_finding`) and shows its heatmap. Returns the organ key
        (``liver``, ``kidney_left``...)."""
        table = nodes.scores.GetTable()
        if not 0 <= row < table.GetNumberOfRows():
            raise IndexError(f"row {row} is not in the scores table")
        organ = table.GetValueByName(row, "organ").ToString()
        side = table.GetValueByName(row, "side").ToString()
        key = organ_key(organ, side)
        self.centre_on_finding(nodes, key)
        self.show_heatmap(nodes, key if key in nodes.heatmaps else None)
        return key

    def centre_on_finding(self, nodes: CaseNodes, key: str) -> tuple[float, float, float] | None:
        """Centre every slice view where the model looked in the organ: the centroid of the top 5 %
        of its heatmap (:func:`~JMIDAnomalyLib.imaging.geometry.hot_spot_lps`); the organ's
        centre when it has no heatmap or the heatmap is empty. Returns the point (RAS, mm) or
        None."""
        import SimpleITK as sitk
        from slicer import vtkMRMLSliceNode

        from JMIDAnomalyLib.imaging.geometry import Grid, hot_spot_lps

        heatmap = nodes.heatmaps.get(key)
        if heatmap is None:
            return self.centre_on_organ(nodes, key)
        image = mrml.volume_node_to_image(heatmap)
        lps = hot_spot_lps(sitk.GetArrayViewFromImage(image), Grid.from_image(image))
        if lps is None:
            return self.centre_on_organ(nodes, key)
        ras = (-float(lps[0]), -float(lps[1]), float(lps[2]))
        ensure_slice_views(self.scene)
        vtkMRMLSliceNode.JumpAllSlices(self.scene, *ras, vtkMRMLSliceNode.CenteredJumpSlice)
        return ras

    def centre_on_organ(self, nodes: CaseNodes, key: str) -> tuple[float, float, float] | None:
        """Centre every slice view on the organ's segment; returns its centre (RAS, mm), or
        None when the segmentation has no such segment."""
        from slicer import vtkMRMLSliceNode

        if nodes.segmentation is None:
            return None
        segmentation = nodes.segmentation.GetSegmentation()
        for name in organ_segment_names(key):
            segment_id = segmentation.GetSegmentIdBySegmentName(name)
            if segment_id:
                break
        else:
            return None
        centre = nodes.segmentation.GetSegmentCenterRAS(segment_id)
        if centre is None:
            return None
        ensure_slice_views(self.scene)
        vtkMRMLSliceNode.JumpAllSlices(self.scene, *centre, vtkMRMLSliceNode.CenteredJumpSlice)
        return tuple(float(c) for c in centre)
