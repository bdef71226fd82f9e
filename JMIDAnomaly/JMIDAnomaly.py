"""JMID Anomaly: abdominal organ anomaly detection on CT (3D Slicer GUI module).

The module stays thin: the Widget binds the GUI to a parameter node, the Logic calls the core
library ``JMIDAnomalyLib`` (plain Python, tested outside Slicer).
"""

import pathlib
import sys
from typing import Annotated

import qt
import slicer
import vtk
from JMIDAnomalyLib.reading import ReadingLogic  # needs no torch: safe before installing it
from JMIDAnomalyLib.review import OUTCOME_CHOICES
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#
# JMIDAnomaly
#


class JMIDAnomaly(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("JMID Anomaly")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["JMID Anomaly developers"]
        self.parent.helpText = _(
            "Per-organ abnormality scores and heatmaps for abdominal CT, from models trained on "
            "radiology reports. Load a CT, choose its organ segmentation, and apply."
        )
        self.parent.acknowledgementText = _(
            "Reference design: Sato et al., annotation-free multi-organ anomaly detection in "
            "abdominal CT using free-text radiology reports."
        )


#
# JMIDAnomalyParameterNode
#


@parameterNodeWrapper
class JMIDAnomalyParameterNode:
    """Parameters of the module, bound to the GUI by ``connectGui``.

    inputVolume - the CT to analyse.
    inputSegmentation - its organ segmentation; when empty, segModelPath segments the CT.
    segModelPath - an nnU-Net v2 model folder.
    bundlePath - model bundle (folder or zip) or a folder of bundles.
    organs - comma-separated organs ("" = every bundle's).
    explain - heatmap method. device - auto, cuda, cpu or mps.
    heatmapOpacity - foreground opacity of the heatmap overlay.
    predictionsPath, dataRoot, feedbackPath - error analysis inputs and the marks file.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    segModelPath: pathlib.Path
    bundlePath: pathlib.Path
    organs: str = ""
    explain: Annotated[str, Choice(["occlusion", "hirescam", "none"])] = "occlusion"
    device: Annotated[str, Choice(["auto", "cuda", "cpu", "mps"])] = "auto"
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    predictionsPath: pathlib.Path
    dataRoot: pathlib.Path
    feedbackPath: pathlib.Path


def _given(path) -> bool:
    return path is not None and str(path) not in ("", ".")


#
# JMIDAnomalyWidget
#


class JMIDAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._nodes = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/JMIDAnomaly.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = JMIDAnomalyLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.scoresTableView.connect("clicked(QModelIndex)", self.onScoreRowClicked)
        self.ui.heatmapComboBox.connect("currentIndexChanged(int)", self.onHeatmapChosen)
        self.ui.heatmapOpacitySlider.connect("valueChanged(double)", self.logic.set_heatmap_opacity)
        self.ui.loadReviewButton.connect("clicked(bool)", self.onLoadReview)
        for combo in (self.ui.reviewOrganComboBox, self.ui.reviewClassComboBox,
                      self.ui.reviewOutcomeComboBox):  # fmt: skip
            combo.connect("activated(int)", self.onReviewFilter)
        self.ui.reviewOutcomeComboBox.addItems(list(OUTCOME_CHOICES))
        self.ui.reviewThresholdSlider.connect("valueChanged(double)", self.onReviewFilter)
        self.ui.previousButton.connect("clicked(bool)", lambda: self.onReviewStep(-1))
        self.ui.nextButton.connect("clicked(bool)", lambda: self.onReviewStep(1))
        for button, verdict in ((self.ui.agreeButton, "agree"),
                                (self.ui.labelWrongButton, "label_wrong"),
                                (self.ui.modelWrongButton, "model_wrong")):  # fmt: skip
            button.connect("clicked(bool)", lambda _=False, v=verdict: self.onMark(v))
        self._shortcuts = []
        for key, action in (("N", lambda: self.onReviewStep(1)),
                            ("P", lambda: self.onReviewStep(-1)),
                            ("A", lambda: self.onMark("agree")),
                            ("L", lambda: self.onMark("label_wrong")),
                            ("M", lambda: self.onMark("model_wrong"))):  # fmt: skip
            shortcut = qt.QShortcut(qt.QKeySequence(key), uiWidget)
            shortcut.setContext(qt.Qt.WidgetWithChildrenShortcut)
            shortcut.connect("activated()", action)
            self._shortcuts.append(shortcut)
        # The worker is polled from the GUI thread's event loop: nothing ever blocks it.
        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onTimer)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self._timer.stop()
        if self.logic:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply
            )

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: JMIDAnomalyParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply
            )
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        ready = bool(
            p and p.inputVolume and _given(p.bundlePath)
            and (p.inputSegmentation or _given(p.segModelPath))
        )  # fmt: skip
        self.ui.applyButton.enabled = ready and self._job is None
        self.ui.applyButton.toolTip = (
            _("Segment, score and explain the CT in the background")
            if ready
            else _("Select a CT, a segmentation (or an nnU-Net model) and a model bundle")
        )

    # -- analysis -----------------------------------------------------------------------------

    def _dependenciesReady(self) -> bool:
        missing = self.logic.missingDependencies()
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
            _("JMID Anomaly needs these Python packages, which are not installed yet:\n\n{m}\n\n"
              "Install them now? (torch comes through the PyTorch extension; this can take "
              "several minutes.)").format(m="\n".join(missing))
        ):  # fmt: skip
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing packages failed."), waitCursor=True):
            self.logic.installDependencies()
            return True
        return False

    def onApplyButton(self) -> None:
        if not self._dependenciesReady():
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the analysis."), waitCursor=True):
            self._job = self.logic.startAnalysisFromParameters(
                self._parameterNode, self.ui.reportTextEdit.toPlainText()
            )
            self._setRunning(True, _("Starting the worker..."))

    def onCancelButton(self) -> None:
        self.logic.cancel()
        review = self.logic.review
        if review is not None:
            review.job = None
        self._setRunning(False, _("Cancelled."))

    def _setRunning(self, running: bool, status: str) -> None:
        self._job = self._job if running else None
        self.ui.cancelButton.enabled = running
        self.ui.statusLabel.text = status
        if running:
            self.ui.progressBar.value = 0
            self._timer.start()
        self._checkCanApply()

    def onTimer(self) -> None:
        for event in self.logic.process_events():
            if event.kind == "log":
                self.ui.logTextEdit.appendPlainText(event.message)
            elif event.kind == "progress":
                self.ui.progressBar.value = int(100 * event.data["fraction"])
                self.ui.statusLabel.text = event.message
            elif event.kind in ("result", "error", "cancelled"):
                review = self.logic.review
                if review is not None and review.handle(event) and event.kind == "result":
                    self._showResults(review.nodes)
                elif event.job == self._job and event.kind == "result":
                    self._showResults(event.data["nodes"])
                if event.kind == "error":
                    slicer.util.errorDisplay(_("Analysis failed: {m}").format(m=event.message))
                self._setRunning(False, _("Done.") if event.kind == "result" else event.message)
        if not self.logic.busy:
            self._timer.stop()

    def _showResults(self, nodes) -> None:
        self._nodes = nodes
        self.ui.scoresTableView.setMRMLTableNode(nodes.scores)
        self.ui.heatmapComboBox.blockSignals(True)
        self.ui.heatmapComboBox.clear()
        self.ui.heatmapComboBox.addItems(["(none)", *nodes.heatmaps])
        self.ui.heatmapComboBox.blockSignals(False)
        self.ui.reportLabel.text = nodes.report.GetText() if nodes.report else ""
        self.ui.resultsCollapsibleButton.collapsed = False

    def onScoreRowClicked(self, index) -> None:
        if not self._nodes or not index.isValid():
            return
        proxy = self.ui.scoresTableView.sortFilterProxyModel()  # the view may be sorted
        row = proxy.mapToSource(index).row() if proxy else index.row()
        with slicer.util.tryWithErrorDisplay(_("Failed to show the organ.")):
            key = self.logic.select_score_row(self._nodes, row)
            index = self.ui.heatmapComboBox.findText(key)
            self.ui.heatmapComboBox.setCurrentIndex(max(index, 0))

    def onHeatmapChosen(self, index: int) -> None:
        if self._nodes:
            key = self.ui.heatmapComboBox.currentText if index > 0 else None
            self.logic.show_heatmap(self._nodes, key, self._parameterNode.heatmapOpacity)

    # -- error analysis -----------------------------------------------------------------------

    def onLoadReview(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to load the predictions."), waitCursor=True):
            review = self.logic.openReview(p.predictionsPath, p.dataRoot, p.feedbackPath,
                                           p.bundlePath, p.explain)  # fmt: skip
            for combo, values in ((self.ui.reviewOrganComboBox, review.queue.organs),
                                  (self.ui.reviewClassComboBox, review.queue.classes)):  # fmt: skip
                combo.clear()
                combo.addItems([_("(any)"), *values])
            self.onReviewFilter()

    def onReviewFilter(self, *_args) -> None:
        review = self.logic.review
        if review is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the case."), waitCursor=True):
            organ = self.ui.reviewOrganComboBox
            cls = self.ui.reviewClassComboBox
            job = review.filter(
                organ.currentText if organ.currentIndex > 0 else None,
                cls.currentText if cls.currentIndex > 0 else None,
                self.ui.reviewOutcomeComboBox.currentText,
                self.ui.reviewThresholdSlider.value,
            )
            self._reviewItemShown(job)

    def onReviewStep(self, delta: int) -> None:
        review = self.logic.review
        if review is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to load the case."), waitCursor=True):
            self._reviewItemShown(review.step(delta))

    def _reviewItemShown(self, job) -> None:
        review = self.logic.review
        self._showReviewItem()
        if job is not None:
            self._setRunning(True, _("Computing the heatmap..."))
        elif review.nodes is not None:
            self._showResults(review.nodes)

    def _showReviewItem(self) -> None:
        shown = self.logic.review.describe()
        self.ui.reviewItemLabel.text = shown["summary"]
        self.ui.evidenceLabel.text = shown["evidence"]
        self.ui.commentLineEdit.text = shown["comment"]

    def onMark(self, verdict: str) -> None:
        review = self.logic.review
        if review is None or review.queue.current is None:
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to save the mark."), waitCursor=True):
            review.mark(verdict, self.ui.commentLineEdit.text)
            self._showReviewItem()


#
# JMIDAnomalyLogic
#


def workerPython() -> str:
    """The interpreter the background worker runs with: Slicer's ``PythonSlicer``."""
    import shutil

    return shutil.which("PythonSlicer") or sys.executable


class JMIDAnomalyLogic(ScriptedLoadableModuleLogic, ReadingLogic):
    """The core's :class:`JMIDAnomalyLib.reading.ReadingLogic` on ``slicer.mrmlScene``, plus the
    parameter node, dependency installation and error analysis. Raises; never shows dialogs."""

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ReadingLogic.__init__(self, scene or slicer.mrmlScene, python=workerPython())
        self.review = None

    def getParameterNode(self):
        return JMIDAnomalyParameterNode(super().getParameterNode())

    def missingDependencies(self) -> list:
        from JMIDAnomalyLib.dependencies import missing_requirements

        return missing_requirements()

    def installDependencies(self) -> None:
        """torch through the PyTorch extension, the rest with pip (Slicer's own SimpleITK and
        torch are never replaced)."""
        from JMIDAnomalyLib.dependencies import REQUIREMENTS, read_requirements

        try:
            import torch  # noqa: F401
        except ImportError:
            import PyTorchUtils

            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError("the PyTorch extension could not install PyTorch") from None
        try:
            import slicer.pydeps as pydeps
        except ImportError:
            pydeps = getattr(slicer, "packaging", None)
        if pydeps is not None and hasattr(pydeps, "pip_ensure"):
            pydeps.pip_ensure(
                pydeps.load_requirements(str(REQUIREMENTS)),
                skip_packages=["SimpleITK", "torch", "torchvision"],
                requester="JMIDAnomaly",
            )
        else:
            slicer.util.pip_install(read_requirements())

    def startAnalysisFromParameters(self, p, reportText: str = "") -> str:
        """Queue the analysis the parameter node describes; returns the worker job id."""
        organs = [o.strip() for o in (p.organs or "").split(",") if o.strip()]
        return self.start_analysis(
            p.inputVolume, [str(p.bundlePath)], p.inputSegmentation,
            str(p.segModelPath) if _given(p.segModelPath) else "", organs, p.explain, p.device,
            reportText,
        )  # fmt: skip

    def openReview(self, predictionsPath, dataRoot, feedbackPath, bundlePath,
                   explain: str = "occlusion"):  # fmt: skip
        """Start an error-analysis session (``JMIDAnomalyLib.review.ReviewSession``)."""
        from JMIDAnomalyLib.review import ReviewSession

        needed = ((predictionsPath, "predictions CSV"), (dataRoot, "data root"),
                  (feedbackPath, "feedback CSV"), (bundlePath, "model bundle"))  # fmt: skip
        for path, what in needed:
            if not _given(path):
                raise ValueError(f"Select the {what}")
        if self.review is not None:
            self.review.clear()
        self.review = ReviewSession(self, predictionsPath, dataRoot, feedbackPath,
                                    [str(bundlePath)], explain=explain)  # fmt: skip
        return self.review

    def importSegmentation(self, volumeNode, labelMapPath, labelTablePath=None, organsOnly=True):
        """Load an organ label map file as a named, coloured segmentation of ``volumeNode``."""
        from JMIDAnomalyLib.scenes import import_segmentation_for_volume

        if not volumeNode:
            raise ValueError("Input CT volume is not selected")
        return import_segmentation_for_volume(volumeNode, labelMapPath, labelTablePath, organsOnly)


#
# JMIDAnomalyTest
#


class JMIDAnomalyTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: the real example CT, and the whole reading and error-analysis flow on
    a small demo run (cohort, labels, a 2-fold bundle; a few minutes on a CPU)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ImportSegmentation()
        self.setUp()
        self.test_AnalysisAndErrorAnalysis()

    def test_ImportSegmentation(self):
        from JMIDAnomalyLib.imageio import read_ct
        from JMIDAnomalyLib.mrml import image_to_volume_node, segment_names
        from JMIDAnomalyLib.referencedata import fetch_reference_data

        self.delayDisplay("Fetching the example CT")
        data = fetch_reference_data()
        volume = image_to_volume_node(read_ct(data.ct), slicer.mrmlScene, "Example CT")
        self.delayDisplay("Importing the organ segmentation")
        segmentation = JMIDAnomalyLogic().importSegmentation(volume, data.ct_seg, data.labels_json)
        names = segment_names(segmentation)
        for organ in ("liver", "spleen", "kidney_left", "kidney_right", "pancreas"):
            self.assertIn(organ, names)
        self.assertNotIn("aorta", names)
        self.delayDisplay("Test passed")

    def test_AnalysisAndErrorAnalysis(self):
        import csv
        import tempfile

        logic = JMIDAnomalyLogic()
        if logic.missingDependencies():
            self.skipTest("install the dependencies first (Apply in the module offers it)")
        from JMIDAnomalyLib.demo import DemoSettings, run_demo
        from JMIDAnomalyLib.imageio import read_ct
        from JMIDAnomalyLib.mrml import image_to_volume_node

        out = pathlib.Path(tempfile.mkdtemp()) / "demo"
        self.delayDisplay("Running a small demo (cohort, labels, 2-fold training)")
        run_demo(out, DemoSettings(cases=24, seed=1, folds=2, epochs=1, holdout=1))
        bundle = out / "training" / "liver" / "bundle"
        case = next((out / "analysis").iterdir()).name
        cohort = out / "cohort"
        volume = image_to_volume_node(
            read_ct(cohort / "images" / f"{case}.nii.gz"), slicer.mrmlScene, case
        )
        segmentation = logic.importSegmentation(
            volume, cohort / "segs" / f"{case}.nii.gz", cohort / "labels.json"
        )
        self.delayDisplay("Analysing in the background worker")
        job = logic.start_analysis(volume, [bundle], segmentation, report_text="肝に異常なし。")
        event = logic.wait(job, timeout=600)
        self.assertEqual(event.kind, "result", event.message)
        nodes = event.data["nodes"]
        self.assertIn("liver", nodes.heatmaps)
        self.assertGreater(nodes.scores.GetNumberOfRows(), 0)
        self.assertEqual(logic.select_score_row(nodes, 0), "liver")
        self.delayDisplay("Error analysis: first mistake, marked")
        feedback = out / "feedback.csv"
        review = logic.openReview(out / "evaluation" / "liver" / "predictions.csv", cohort,
                                  feedback, bundle)  # fmt: skip
        review.queue.select(organ="liver")
        job = review.show_current()
        if job is not None:
            self.assertTrue(review.handle(logic.wait(job, timeout=600)))
        review.mark("agree", "self-test")
        with feedback.open(encoding="utf-8") as f:
            self.assertEqual([r["verdict"] for r in csv.DictReader(f)], ["agree"])
        logic.shutdown()
        self.delayDisplay("Test passed")
