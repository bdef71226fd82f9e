"""JMID Anomaly: abdominal organ anomaly detection on CT (3D Slicer GUI module).

The module stays thin: the Widget binds the GUI to a parameter node, the Logic calls the core
library ``JMIDAnomalyLib`` (plain Python, tested outside Slicer).
"""

import logging
import pathlib

import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
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
    labelMapPath - an organ label map file on the CT's grid.
    labelTablePath - its label table (value -> name JSON, or an nnU-Net dataset.json).
    organsOnly - keep only the seven abdominal organs.
    outputSegmentation - the segmentation node created by Apply.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    labelMapPath: pathlib.Path
    labelTablePath: pathlib.Path
    organsOnly: bool = True
    outputSegmentation: vtkMRMLSegmentationNode


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
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

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
        ready = bool(
            self._parameterNode
            and self._parameterNode.inputVolume
            and str(self._parameterNode.labelMapPath) not in ("", ".")
        )
        self.ui.applyButton.enabled = ready
        self.ui.applyButton.toolTip = (
            _("Load the organ segmentation")
            if ready
            else _("Select a CT volume and a label map file")
        )

    def onApplyButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(
            _("Failed to load the segmentation."), waitCursor=True
        ):
            p = self._parameterNode
            table = p.labelTablePath if str(p.labelTablePath) not in ("", ".") else None
            p.outputSegmentation = self.logic.importSegmentation(
                p.inputVolume, p.labelMapPath, table, p.organsOnly
            )
            self.ui.statusLabel.text = _("Loaded {count} segments.").format(
                count=p.outputSegmentation.GetSegmentation().GetNumberOfSegments()
            )


#
# JMIDAnomalyLogic
#


class JMIDAnomalyLogic(ScriptedLoadableModuleLogic):
    """Calls the core library; raises on error and never shows dialogs."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return JMIDAnomalyParameterNode(super().getParameterNode())

    def importSegmentation(self, volumeNode, labelMapPath, labelTablePath=None, organsOnly=True):
        """Load an organ label map file as a segmentation of ``volumeNode``.

        Returns:
            the new vtkMRMLSegmentationNode, with named and coloured organ segments.
        """
        from JMIDAnomalyLib.scenes import import_segmentation_for_volume

        if not volumeNode:
            raise ValueError("Input CT volume is not selected")
        segmentation = import_segmentation_for_volume(
            volumeNode, labelMapPath, labelTablePath, organsOnly
        )
        segmentation.CreateClosedSurfaceRepresentation()
        logging.info(
            "JMIDAnomaly: loaded %d segments", segmentation.GetSegmentation().GetNumberOfSegments()
        )
        return segmentation


#
# JMIDAnomalyTest
#


class JMIDAnomalyTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer on the real example CT (downloaded once into the cache)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ImportSegmentation()

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
