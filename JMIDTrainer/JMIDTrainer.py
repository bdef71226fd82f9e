"""JMID Trainer: the headless module for label import, cropping, training and evaluation.

Hidden from the module list; it has no Widget class. Its Logic runs the same code and
configuration as the ``jmid`` command line. Run it without a main window:

    Slicer --no-main-window --python-script JMIDTrainer/JMIDTrainer.py <jmid arguments>

for example ``... JMIDTrainer.py info --ct ct.nii.gz``; Slicer exits with the job's status.
"""

import logging
import os
import sys

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
)


def _ensureCoreLibraryImportable():
    """Make JMIDAnomalyLib importable: beside us when installed, in ../JMIDAnomaly in a checkout."""
    try:
        import JMIDAnomalyLib  # noqa: F401
    except ImportError:
        here = os.path.dirname(os.path.abspath(__file__))
        sys.path.insert(0, os.path.join(os.path.dirname(here), "JMIDAnomaly"))


#
# JMIDTrainer
#


class JMIDTrainer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("JMID Trainer")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["JMID Anomaly developers"]
        self.parent.helpText = _(
            "Headless training of JMID Anomaly models: labels from reports, organ crops, k-fold "
            "training and evaluation. Same arguments as the jmid command line."
        )
        self.parent.acknowledgementText = ""
        self.parent.hidden = True


#
# JMIDTrainerLogic
#


def _trainerLogicBase():
    _ensureCoreLibraryImportable()
    from JMIDAnomalyLib.apps.trainer import TrainerLogic

    return TrainerLogic


class JMIDTrainerLogic(ScriptedLoadableModuleLogic, _trainerLogicBase()):
    """The core's ``JMIDAnomalyLib.apps.trainer.TrainerLogic`` — ``import_labels``,
    ``build_crop_cache``, ``train``, ``evaluate``, ``recalibrate`` — and ``run`` (any jmid
    command line): the same functions and configuration objects as the ``jmid`` command.
    Raises; never shows dialogs."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def run(self, arguments) -> int:
        """Run one ``jmid`` job, e.g. ``["info", "--ct", "ct.nii.gz"]``; returns its exit status."""
        from JMIDAnomalyLib.apps.cli.main import main

        status = main(list(arguments))
        logging.info(
            "JMIDTrainer: '%s' finished with status %d", arguments[0] if arguments else "", status
        )
        return status


#
# JMIDTrainerTest
#


class JMIDTrainerTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_RunJob()
        self.test_ImportLabels()
        self.test_TrainAndEvaluate()

    def test_RunJob(self):
        _ensureCoreLibraryImportable()
        from JMIDAnomalyLib.demo.reference_data import fetch_reference_data

        data = fetch_reference_data()
        logic = JMIDTrainerLogic()
        self.assertEqual(logic.run(["info", "--ct", str(data.ct)]), 0)
        self.assertEqual(logic.run(["info", "--ct", str(data.mr_small)]), 2)
        self.delayDisplay("Test passed")

    def test_ImportLabels(self):
        import tempfile
        from pathlib import Path

        reports = Path(tempfile.mkdtemp()) / "reports.csv"
        reports.write_text(
            "file_name,患者ID,所見\ncase1.nii.gz,P1,肝S6に嚢胞を認めます。脾臓に異常は認めません。\n",
            encoding="utf-8",
        )
        summary = JMIDTrainerLogic().import_labels(reports, reports.parent / "labels")
        self.assertEqual(summary["reports_labelled"], 1)
        self.assertEqual(summary["counts"]["liver"].get("cyst"), 1)
        self.delayDisplay("Test passed")

    def test_TrainAndEvaluate(self):
        """The researchers' flow on a small demo cohort: labels, crop cache, 2-fold training,
        out-of-fold evaluation, calibration fitted again on labelled cases — through the Logic,
        as a headless script would."""
        import tempfile
        from pathlib import Path

        _ensureCoreLibraryImportable()
        from JMIDAnomalyLib.demo.cohort import build_cohort
        from JMIDAnomalyLib.training.config import TrainConfig

        work = Path(tempfile.mkdtemp())
        logic = JMIDTrainerLogic()
        self.delayDisplay("Building a 16-case demo cohort")
        build_cohort(work / "cohort", cases=16, seed=3)
        logic.import_labels(work / "cohort" / "reports.csv", work / "labels")
        config = TrainConfig.for_cohort(
            work / "cohort", work / "labels", work / "training", folds=2, epochs=1
        )
        summary = logic.build_crop_cache(config)
        self.assertGreater(summary["samples"], 0)
        self.delayDisplay("Training")
        bundle = logic.train(config)
        metrics = logic.evaluate(
            bundle, work / "evaluation", oof=work / "training" / "oof_predictions.csv"
        )
        self.assertEqual(metrics["organ"], "liver")
        self.delayDisplay("Calibration fitted again on the cohort's cases")
        site = logic.recalibrate(
            bundle, work / "site_bundle", work / "labels", work / "cohort", min_cases=2
        )
        self.assertEqual(site["cases"], summary["samples"])
        self.assertTrue((work / "site_bundle" / "bundle.json").is_file())
        self.delayDisplay("Test passed")


if __name__ == "__main__":
    # Slicer --no-main-window --python-script JMIDTrainer.py <jmid arguments>
    _ensureCoreLibraryImportable()
    from JMIDAnomalyLib.apps.cli.main import main as _jmidMain

    slicer.util.exit(_jmidMain(sys.argv[1:]))
