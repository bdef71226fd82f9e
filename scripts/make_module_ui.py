"""Write JMIDAnomaly/Resources/UI/JMIDAnomaly.ui from the layout below (Qt Designer can still
open and edit the result; re-run this after changing the layout here instead)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

UI = Path(__file__).resolve().parents[1] / "JMIDAnomaly" / "Resources" / "UI" / "JMIDAnomaly.ui"
NODE_COMBOS = []  # qMRMLNodeComboBox names: connected to the scene

# (label, class, name, properties); properties: text, toolTip, parameter (SlicerParameterName),
# nodeTypes, noneEnabled, filters (ctkPathLineEdit), items, range, checked, enabled, readOnly.
SECTIONS = [
    ("inputsCollapsibleButton", "Analysis", False, [
        ("CT volume:", "qMRMLNodeComboBox", "inputVolumeSelector", {
            "nodeTypes": ["vtkMRMLScalarVolumeNode"], "parameter": "inputVolume",
            "toolTip": "The abdominal CT to analyse."}),
        ("Segmentation:", "qMRMLNodeComboBox", "inputSegmentationSelector", {
            "nodeTypes": ["vtkMRMLSegmentationNode"], "noneEnabled": True,
            "parameter": "inputSegmentation",
            "toolTip": "An organ segmentation of the CT; leave empty to run the nnU-Net model."}),
        ("nnU-Net model:", "ctkPathLineEdit", "segModelPathLineEdit", {
            "filters": "ctkPathLineEdit::Dirs", "parameter": "segModelPath",
            "toolTip": "An nnU-Net v2 model folder (dataset.json, plans.json, fold_X/), used "
                       "when no segmentation is selected."}),
        ("Model bundle:", "ctkPathLineEdit", "bundlePathLineEdit", {
            "filters": "ctkPathLineEdit::Files|ctkPathLineEdit::Dirs", "parameter": "bundlePath",
            "toolTip": "A model bundle folder or .zip (or a folder of bundles, one per organ)."}),
        ("Organs:", "QLineEdit", "organsLineEdit", {
            "parameter": "organs",
            "toolTip": "Comma-separated organs, e.g. liver,kidney; empty: every bundle's."}),
        ("Explanation:", "QComboBox", "explainComboBox", {
            "parameter": "explain", "toolTip": "Heatmap method (occlusion is the default)."}),
        ("Device:", "QComboBox", "deviceComboBox", {
            "parameter": "device", "toolTip": "auto uses a GPU when there is one."}),
        ("Report:", "QPlainTextEdit", "reportTextEdit", {
            "toolTip": "The radiology report of this exam (optional; shown with the results)."}),
        (None, "QPushButton", "applyButton", {"text": "Apply", "enabled": False}),
        (None, "QPushButton", "cancelButton", {
            "text": "Cancel", "enabled": False, "toolTip": "Stop the running analysis."}),
        (None, "QProgressBar", "progressBar", {"value": 0}),
        (None, "QLabel", "statusLabel", {"text": ""}),
        (None, "QPlainTextEdit", "logTextEdit", {"readOnly": True, "toolTip": "Worker log."}),
    ]),
    ("resultsCollapsibleButton", "Results", False, [
        (None, "qMRMLTableView", "scoresTableView", {
            "toolTip": "Scores per organ, side and class; select a row to centre the views on "
                       "the organ and show its heatmap."}),
        ("Heatmap:", "QComboBox", "heatmapComboBox", {"toolTip": "Which organ's heatmap to show."}),
        ("Opacity:", "ctkSliderWidget", "heatmapOpacitySlider", {
            "parameter": "heatmapOpacity", "range": (0.0, 1.0, 0.05),
            "toolTip": "Opacity of the heatmap overlay."}),
        ("Report:", "QLabel", "reportLabel", {"text": "", "wordWrap": True}),
    ]),
    ("reviewCollapsibleButton", "Error analysis", True, [
        ("Predictions:", "ctkPathLineEdit", "predictionsPathLineEdit", {
            "filters": "ctkPathLineEdit::Files", "parameter": "predictionsPath",
            "toolTip": "predictions.csv written by jmid evaluate."}),
        ("Data root:", "ctkPathLineEdit", "dataRootPathLineEdit", {
            "filters": "ctkPathLineEdit::Dirs", "parameter": "dataRoot",
            "toolTip": "Folder with images/, segs/ and labels.json of the evaluated cases."}),
        ("Feedback CSV:", "ctkPathLineEdit", "feedbackPathLineEdit", {
            "filters": "ctkPathLineEdit::Files", "parameter": "feedbackPath",
            "toolTip": "Your marks are saved here after every mark."}),
        (None, "QPushButton", "loadReviewButton", {"text": "Load predictions"}),
        ("Organ:", "QComboBox", "reviewOrganComboBox", {}),
        ("Class:", "QComboBox", "reviewClassComboBox", {}),
        ("Show:", "QComboBox", "reviewOutcomeComboBox", {}),
        ("Threshold:", "ctkSliderWidget", "reviewThresholdSlider", {
            "range": (0.0, 1.0, 0.01),
            "toolTip": "Decision threshold; 0 uses each bundle's own thresholds."}),
        (None, "QPushButton", "previousButton", {"text": "Previous (P)"}),
        (None, "QPushButton", "nextButton", {"text": "Next (N)"}),
        (None, "QLabel", "reviewItemLabel", {"text": "", "wordWrap": True}),
        (None, "QLabel", "evidenceLabel", {"text": "", "wordWrap": True}),
        ("Comment:", "QLineEdit", "commentLineEdit", {}),
        (None, "QPushButton", "agreeButton", {"text": "Agree (A)"}),
        (None, "QPushButton", "labelWrongButton", {"text": "Label wrong (L)"}),
        (None, "QPushButton", "modelWrongButton", {"text": "Model wrong (M)"}),
    ]),
]  # fmt: skip  # the module's layout as a table, one row per widget

CUSTOM = {
    "ctkCollapsibleButton": ("QWidget", 1),
    "ctkPathLineEdit": ("QWidget", 0),
    "ctkSliderWidget": ("QWidget", 0),
    "qMRMLNodeComboBox": ("QWidget", 0),
    "qMRMLTableView": ("QTableView", 0),
    "qMRMLWidget": ("QWidget", 1),
}


def _prop(widget, name, kind, value, stdset=True):
    p = ET.SubElement(widget, "property", {"name": name} | ({} if stdset else {"stdset": "0"}))
    if kind == "stringlist":
        lst = ET.SubElement(p, "stringlist", {"notr": "true"})
        for v in value:
            ET.SubElement(lst, "string").text = v
    else:
        ET.SubElement(p, kind).text = value


def _widget(parent, cls, name, props):
    w = ET.SubElement(parent, "widget", {"class": cls, "name": name})
    for key, value in props.items():
        if key == "parameter":
            _prop(w, "SlicerParameterName", "string", value, stdset=False)
        elif key == "nodeTypes":
            _prop(w, "nodeTypes", "stringlist", value)
            _prop(w, "addEnabled", "bool", "false")
            _prop(w, "removeEnabled", "bool", "false")
            NODE_COMBOS.append(name)
        elif key == "filters":
            _prop(w, "filters", "set", value)
        elif key == "range":
            for prop, v in zip(("minimum", "maximum", "singleStep"), value, strict=True):
                _prop(w, prop, "double", str(v))
        elif isinstance(value, bool):
            _prop(w, key, "bool", str(value).lower())
        elif isinstance(value, int):
            _prop(w, key, "number", str(value))
        else:
            _prop(w, key, "string", value)
    return w


def build() -> ET.ElementTree:
    ui = ET.Element("ui", {"version": "4.0"})
    ET.SubElement(ui, "class").text = "JMIDAnomaly"
    root = ET.SubElement(ui, "widget", {"class": "qMRMLWidget", "name": "JMIDAnomaly"})
    layout = ET.SubElement(root, "layout", {"class": "QVBoxLayout", "name": "verticalLayout"})
    for section, title, collapsed, rows in SECTIONS:
        box = _widget(
            ET.SubElement(layout, "item"),
            "ctkCollapsibleButton",
            section,
            {"text": title, "collapsed": collapsed},
        )
        form = ET.SubElement(box, "layout", {"class": "QFormLayout", "name": f"{section}Layout"})
        for row, (label, cls, name, props) in enumerate(rows):
            if label is None:
                item = ET.SubElement(form, "item", {"row": str(row), "column": "0", "colspan": "2"})
            else:
                label_item = ET.SubElement(form, "item", {"row": str(row), "column": "0"})
                _widget(label_item, "QLabel", f"{name}Label", {"text": label})
                item = ET.SubElement(form, "item", {"row": str(row), "column": "1"})
            _widget(item, cls, name, props)
    spacer = ET.SubElement(ET.SubElement(layout, "item"), "spacer", {"name": "verticalSpacer"})
    _prop(spacer, "orientation", "enum", "Qt::Vertical")
    custom = ET.SubElement(ui, "customwidgets")
    for cls, (extends, container) in CUSTOM.items():
        c = ET.SubElement(custom, "customwidget")
        ET.SubElement(c, "class").text = cls
        ET.SubElement(c, "extends").text = extends
        ET.SubElement(c, "header").text = f"{cls}.h"
        if container:
            ET.SubElement(c, "container").text = "1"
    ET.SubElement(ui, "resources")
    connections = ET.SubElement(ui, "connections")
    for name in [*NODE_COMBOS, "scoresTableView"]:
        c = ET.SubElement(connections, "connection")
        for tag, text in (
            ("sender", "JMIDAnomaly"),
            ("signal", "mrmlSceneChanged(vtkMRMLScene*)"),
            ("receiver", name),
            ("slot", "setMRMLScene(vtkMRMLScene*)"),
        ):
            ET.SubElement(c, tag).text = text
    tree = ET.ElementTree(ui)
    ET.indent(tree, " ")
    return tree


if __name__ == "__main__":
    build().write(UI, encoding="UTF-8", xml_declaration=True)
    print(f"wrote {UI}")
