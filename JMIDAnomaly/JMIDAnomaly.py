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

# These need no torch: safe to import before the dependencies are installed.
from JMIDAnomalyLib.inference.methods import EXPLAIN_METHODS
from JMIDAnomalyLib.review.controller import ReadingController
from JMIDAnomalyLib.review.queue import OUTCOME_CHOICES
from JMIDAnomalyLib.review.reading import ReadingLogic
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


@parameterNodeWrapper
class JMIDAnomalyParameterNode:
    """Parameters of the module, bound to the GUI by ``connectGui``: the CT, its organ
    segmentation (or segModelPath, an nnU-Net v2 folder, segments it), the model bundle(s),
    organs ("" = every bundle's), heatmap method, device, overlay opacity; and the error-analysis
    inputs (predictions CSV, data root) and the marks file."""

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    segModelPath: pathlib.Path
    bundlePath: pathlib.Path
    organs: str = ""
    explain: Annotated[str, Choice(list(EXPLAIN_METHODS))] = EXPLAIN_METHODS[0]
    device: Annotated[str, Choice(["auto", "cuda", "cpu", "mps"])] = "auto"
    heatmapOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    predictionsPath: pathlib.Path
    dataRoot: pathlib.Path
    feedbackPath: pathlib.Path


def _given(path) -> bool:
    return path is not None and str(path) not in ("", ".")


class JMIDAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = self.controller = self._parameterNode = self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/JMIDAnomaly.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = JMIDAnomalyLogic()
        # The reading and error-analysis flow (shared with the browser review); this Widget
        # is its view (show_* and set_running below).
        self.controller = ReadingController(self.logic, view=self)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for widget, signal, slot in (
            (self.ui.applyButton, "clicked(bool)", self.onApplyButton),
            (self.ui.cancelButton, "clicked(bool)", self.controller.cancel),
            (self.ui.scoresTableView, "clicked(QModelIndex)", self.onScoreRowClicked),
            (self.ui.heatmapComboBox, "currentIndexChanged(int)", self.onHeatmapChosen),
            (self.ui.heatmapOpacitySlider, "valueChanged(double)", self.logic.set_heatmap_opacity),
            (self.ui.loadReviewButton, "clicked(bool)", self.onLoadReview),
            (self.ui.reviewOrganComboBox, "activated(int)", self.onReviewFilter),
            (self.ui.reviewClassComboBox, "activated(int)", self.onReviewFilter),
            (self.ui.reviewOutcomeComboBox, "activated(int)", self.onReviewFilter),
            (self.ui.reviewThresholdSlider, "valueChanged(double)", self.onReviewFilter),
        ):
            widget.connect(signal, slot)
        self.ui.reviewOutcomeComboBox.addItems(list(OUTCOME_CHOICES))
        # Buttons and their keys, as in the browser review: N/P step, A/L/M mark.
        self._shortcuts = []
        for button, key, action in (
            (self.ui.nextButton, "N", lambda: self.onReviewStep(1)),
            (self.ui.previousButton, "P", lambda: self.onReviewStep(-1)),
            (self.ui.agreeButton, "A", lambda: self.onMark("agree")),
            (self.ui.labelWrongButton, "L", lambda: self.onMark("label_wrong")),
            (self.ui.modelWrongButton, "M", lambda: self.onMark("model_wrong")),
        ):
            button.connect("clicked(bool)", lambda _=False, act=action: act())
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
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if not self._parameterNode.inputVolume and firstVolumeNode:
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
        organs = p and (p.inputSegmentation or _given(p.segModelPath))
        ready = bool(p and p.inputVolume and _given(p.bundlePath) and organs)
        self.ui.applyButton.enabled = ready and not self.logic.busy
        self.ui.applyButton.toolTip = (
            _("Segment, score and explain the CT in the background")
            if ready
            else _("Select a CT, a segmentation (or an nnU-Net model) and a model bundle")
        )

    def _dependenciesReady(self) -> bool:
        missing = self.logic.missingDependencies()
        if not missing:
            return True
        question = _(
            "JMID Anomaly needs these Python packages:\n\n{m}\n\nInstall them now? (torch "
            "comes through the PyTorch extension; this can take minutes.)"
        )
        if not slicer.util.confirmOkCancelDisplay(question.format(m="\n".join(missing))):
            return False
        with self._errors(_("Installing packages failed.")):
            self.logic.installDependencies()
            return True
        return False

    def onApplyButton(self) -> None:
        if not self._dependenciesReady():
            return
        p = self._parameterNode
        with self._errors(_("Failed to start the analysis.")):
            organs = [o.strip() for o in (p.organs or "").split(",") if o.strip()]
            model = str(p.segModelPath) if _given(p.segModelPath) else ""
            inputs = (p.inputVolume, [str(p.bundlePath)], p.inputSegmentation, model, organs)
            report = self.ui.reportTextEdit.toPlainText()
            self.controller.analyze(*inputs, p.explain, p.device, report)

    def onTimer(self) -> None:
        self.controller.process_events()
        if not self.logic.busy:
            self._timer.stop()

    def onScoreRowClicked(self, index) -> None:
        if not self.controller.nodes or not index.isValid():
            return
        proxy = self.ui.scoresTableView.sortFilterProxyModel()  # the view may be sorted
        row = proxy.mapToSource(index).row() if proxy else index.row()
        with slicer.util.tryWithErrorDisplay(_("Failed to show the organ.")):
            key = self.controller.select_row(row)
            index = self.ui.heatmapComboBox.findText(key)
            self.ui.heatmapComboBox.setCurrentIndex(max(index, 0))

    def onHeatmapChosen(self, index: int) -> None:
        key = self.ui.heatmapComboBox.currentText if index > 0 else None
        self.controller.show_heatmap(key, self._parameterNode.heatmapOpacity)

    def show_log(self, message: str) -> None:
        self.ui.logTextEdit.appendPlainText(message)

    def show_progress(self, fraction: float, message: str) -> None:
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = message

    def show_error(self, message: str) -> None:
        slicer.util.errorDisplay(message)

    def set_running(self, running: bool, status: str) -> None:
        self.ui.cancelButton.enabled = running
        self.ui.statusLabel.text = status
        if running:
            self.ui.progressBar.value = 0
            self._timer.start()
        self._checkCanApply()

    def show_results(self, nodes) -> None:
        self.ui.scoresTableView.setMRMLTableNode(nodes.scores if nodes else None)
        wasBlocked = self.ui.heatmapComboBox.blockSignals(True)
        self.ui.heatmapComboBox.clear()
        self.ui.heatmapComboBox.addItems(["(none)", *(nodes.heatmaps if nodes else [])])
        self.ui.heatmapComboBox.blockSignals(wasBlocked)
        self.ui.reportLabel.text = nodes.report.GetText() if nodes and nodes.report else ""
        self.ui.resultsCollapsibleButton.collapsed = nodes is None

    def show_review_item(self, item: dict) -> None:
        self.ui.reviewItemLabel.text = item["summary"]
        self.ui.evidenceLabel.text = item["evidence"]
        self.ui.commentLineEdit.text = item["comment"]

    def _errors(self, message: str):
        return slicer.util.tryWithErrorDisplay(message, waitCursor=True)

    def onLoadReview(self) -> None:
        p = self._parameterNode
        with self._errors(_("Failed to load the predictions.")):
            bundles = [str(p.bundlePath)] if _given(p.bundlePath) else []
            review = self.controller.open_review(
                p.predictionsPath, p.dataRoot, p.feedbackPath, bundles, p.explain
            )
            for combo, values in (
                (self.ui.reviewOrganComboBox, review.queue.organs),
                (self.ui.reviewClassComboBox, review.queue.classes),
            ):
                combo.clear()
                combo.addItems([_("(any)"), *values])
            self.onReviewFilter()

    def onReviewFilter(self, *_args) -> None:
        organ, cls = self.ui.reviewOrganComboBox, self.ui.reviewClassComboBox
        if self.controller.review is not None:
            with self._errors(_("Failed to load the case.")):
                self.controller.review_filter(
                    organ.currentText if organ.currentIndex > 0 else None,
                    cls.currentText if cls.currentIndex > 0 else None,
                    self.ui.reviewOutcomeComboBox.currentText,
                    self.ui.reviewThresholdSlider.value,
                )

    def onReviewStep(self, delta: int) -> None:
        if self.controller.review is not None:
            with self._errors(_("Failed to load the case.")):
                self.controller.review_step(delta)

    def onMark(self, verdict: str) -> None:
        review = self.controller.review
        if review is not None and review.queue.current is not None:
            with self._errors(_("Failed to save the mark.")):
                self.controller.mark(verdict, self.ui.commentLineEdit.text)


def workerPython() -> str:
    """The interpreter the background worker runs with: Slicer's ``PythonSlicer``."""
    import shutil

    return shutil.which("PythonSlicer") or sys.executable


class JMIDAnomalyLogic(ScriptedLoadableModuleLogic, ReadingLogic):
    """The core's :class:`JMIDAnomalyLib.review.reading.ReadingLogic` on ``slicer.mrmlScene``,
    plus the parameter node and dependency installation. The Widget drives it through a
    ``ReadingController`` (the flow the browser review drives too). Raises; never shows dialogs."""

    def __init__(self, scene=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        ReadingLogic.__init__(self, scene or slicer.mrmlScene, python=workerPython())

    def getParameterNode(self):
        return JMIDAnomalyParameterNode(super().getParameterNode())

    def missingDependencies(self) -> list:
        from JMIDAnomalyLib.apps.dependencies import missing_requirements

        return missing_requirements()

    def installDependencies(self) -> None:
        """torch through the PyTorch extension, the rest with Slicer's pip installer (Slicer's
        own SimpleITK and torch are never replaced)."""
        from JMIDAnomalyLib.apps.dependencies import install_dependencies

        def installTorch():
            import PyTorchUtils  # the PyTorch extension

            return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)

        try:
            import slicer.pydeps as pydeps
        except ImportError:
            pydeps = getattr(slicer, "packaging", None)
        install_dependencies(slicer.util.pip_install, pydeps, installTorch)


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
        from JMIDAnomalyLib.demo.reference_data import fetch_reference_data
        from JMIDAnomalyLib.imaging.volumes import read_ct
        from JMIDAnomalyLib.scene.cases import import_segmentation_for_volume
        from JMIDAnomalyLib.scene.mrml import image_to_volume_node, segment_names

        self.delayDisplay("Importing the example CT's organ segmentation")
        data = fetch_reference_data()
        volume = image_to_volume_node(read_ct(data.ct), slicer.mrmlScene, "Example CT")
        names = segment_names(import_segmentation_for_volume(volume, data.ct_seg, data.labels_json))
        organs = {"liver", "spleen", "kidney_left", "kidney_right", "pancreas"}
        self.assertTrue(organs <= set(names), names)
        self.assertNotIn("aorta", names)
        self.delayDisplay("Test passed")

    def test_AnalysisAndErrorAnalysis(self):
        """The reading and error-analysis flow on a small demo run, through the controller the
        Widget drives (cohort, labels, a 2-fold bundle: a few minutes on a CPU)."""
        import csv
        import tempfile

        logic = JMIDAnomalyLogic()
        if logic.missingDependencies():
            self.skipTest("install the dependencies first (Apply in the module offers it)")
        from JMIDAnomalyLib.demo.run import DemoSettings, run_demo
        from JMIDAnomalyLib.review.error_analysis import load_case

        out = pathlib.Path(tempfile.mkdtemp()) / "demo"
        self.delayDisplay("Running a small demo (cohort, labels, 2-fold training)")
        run_demo(out, DemoSettings(cases=24, seed=1, folds=2, epochs=1, holdout=1, other_cases=4))
        bundle, cohort = out / "training" / "liver" / "bundle", out / "cohort"
        volume, segmentation = load_case(
            slicer.mrmlScene, cohort, next((out / "analysis").iterdir()).name
        )
        self.delayDisplay("Analysing in the background worker")
        controller = ReadingController(logic)
        job = controller.analyze(volume, [bundle], segmentation, report_text="肝に異常なし。")
        event = controller.wait(job, timeout=600)
        self.assertEqual(event.kind, "result", event.message)
        self.assertIn("liver", controller.nodes.heatmaps)
        self.assertGreater(controller.nodes.scores.GetNumberOfRows(), 0)
        self.assertEqual(controller.select_row(0), "liver")
        self.delayDisplay("Error analysis: first mistake, marked")
        feedback = out / "feedback.csv"
        predictions = out / "evaluation" / "liver" / "predictions.csv"
        controller.open_review(predictions, cohort, feedback, [bundle])
        job = controller.review_filter(organ="liver")
        if job is not None:
            self.assertEqual(controller.wait(job, timeout=600).kind, "result")
        controller.mark("agree", "self-test")
        with feedback.open(encoding="utf-8") as f:
            self.assertEqual([r["verdict"] for r in csv.DictReader(f)], ["agree"])
        logic.shutdown()
        self.delayDisplay("Test passed")
