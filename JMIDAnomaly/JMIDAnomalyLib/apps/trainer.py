"""The JMIDTrainer module's Logic, Qt-free: the researchers' jobs as library calls.

Each method runs the same function and configuration object as the matching ``jmid``
subcommand (labels, crop cache, train, evaluate): the commands call these methods, never the
other way round. JMIDTrainer's Logic in Slicer is this class plus Slicer's module Logic base,
and runs any ``jmid`` command line through :func:`JMIDAnomalyLib.apps.cli.main.main`.
"""

from __future__ import annotations

import os
from pathlib import Path

from JMIDAnomalyLib.common.progress import Progress


class TrainerLogic:
    """Label import, crop cache, training and evaluation (see the module docstring)."""

    def import_labels(
        self,
        reports: str | os.PathLike,
        out: str | os.PathLike,
        uncertain: str = "positive",
        unmentioned: str = "normal",
        taxonomy: str | None = None,
        crosscheck: bool = True,
        progress: Progress | None = None,
    ) -> dict:
        """``jmid labels``: per-organ label files from reports; returns the summary."""
        from JMIDAnomalyLib.labels.labeling import LabelOptions, label_reports

        options = LabelOptions(
            uncertain=uncertain, unmentioned=unmentioned, taxonomy=taxonomy, crosscheck=crosscheck
        )
        return label_reports(reports, out, options, progress=progress)

    def explain_labels(
        self,
        reports: str | os.PathLike,
        case_id: str,
        uncertain: str = "positive",
        unmentioned: str = "normal",
        taxonomy: str | None = None,
    ) -> list[str]:
        """``jmid labels --explain CASE``: why each label of one case was set."""
        from JMIDAnomalyLib.labels.labeling import LabelOptions, explain

        options = LabelOptions(uncertain=uncertain, unmentioned=unmentioned, taxonomy=taxonomy)
        return explain(reports, case_id, options)

    def build_crop_cache(self, config, progress: Progress | None = None) -> dict:
        """Crop every labelled case of ``config`` (a
        :class:`~JMIDAnomalyLib.training.config.TrainConfig` or its
        file) into the crop cache training reads; returns the sample summary."""
        from JMIDAnomalyLib.training.data import load_samples

        _, summary = load_samples(self._config(config), progress)
        return summary

    def train(self, config, resume: bool = False, progress: Progress | None = None) -> Path:
        """``jmid train``: the k-fold ensemble; returns the bundle folder."""
        from JMIDAnomalyLib.training.job import train

        return train(self._config(config), resume, progress)

    def evaluate(
        self,
        bundle: str | os.PathLike,
        out: str | os.PathLike,
        oof: str | os.PathLike | None = None,
        labels: str | os.PathLike | None = None,
        data: str | os.PathLike | None = None,
        crops: str | os.PathLike | None = None,
        device: str = "auto",
    ) -> dict:
        """``jmid evaluate``: out-of-fold (``oof``) or held-out (``labels`` + ``data``, run on
        ``device``)."""
        from JMIDAnomalyLib.common.errors import JMIDError
        from JMIDAnomalyLib.training.evaluation import evaluate_bundle, evaluate_oof

        if oof:
            return evaluate_oof(bundle, oof, out)
        if labels and data:
            crop_cache = crops or Path(out) / "crop_cache"
            return evaluate_bundle(bundle, labels, data, crop_cache, out, device)
        raise JMIDError("give the out-of-fold predictions, or labels and data of a held-out set")

    def recalibrate(
        self,
        bundle: str | os.PathLike,
        out: str | os.PathLike,
        labels: str | os.PathLike,
        data: str | os.PathLike,
        crops: str | os.PathLike | None = None,
        device: str = "auto",
        min_cases: int | None = None,
    ) -> dict:
        """``jmid calibrate``: the bundle's calibration and thresholds fitted again on a site's
        labelled cases, into a new bundle ``out``."""
        from JMIDAnomalyLib.training.recalibration import MIN_CASES, recalibrate

        crop_cache = crops or Path(out).parent / f"{Path(out).name}_crop_cache"
        minimum = MIN_CASES if min_cases is None else min_cases  # 0 is refused, not defaulted
        return recalibrate(bundle, labels, data, crop_cache, out, device, minimum)

    @staticmethod
    def _config(config):
        from JMIDAnomalyLib.training.config import TrainConfig

        return config if isinstance(config, TrainConfig) else TrainConfig.load(config)
