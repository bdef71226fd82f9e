"""The JMIDTrainer module's Logic, Qt-free: the researchers' jobs as library calls.

Each method runs the same function and configuration object as the matching ``jmid``
subcommand (labels, crop cache, train, evaluate); :meth:`TrainerLogic.run` runs any ``jmid``
command line. JMIDTrainer's Logic in Slicer is this class plus Slicer's module Logic base.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

Progress = Callable[[float, str], None]


class TrainerLogic:
    """Label import, crop cache, training and evaluation (see the module docstring)."""

    def import_labels(self, reports: str | os.PathLike, out: str | os.PathLike,
                      uncertain: str = "positive", unmentioned: str = "normal",
                      taxonomy: str | None = None, crosscheck: bool = True,
                      progress: Progress | None = None) -> dict:  # fmt: skip
        """``jmid labels``: per-organ label files from reports; returns the summary."""
        from .labels.labeling import LabelOptions, label_reports

        options = LabelOptions(uncertain=uncertain, unmentioned=unmentioned, taxonomy=taxonomy,
                               crosscheck=crosscheck)  # fmt: skip
        return label_reports(reports, out, options, progress=progress)

    def build_crop_cache(self, config, progress: Progress | None = None) -> dict:
        """Crop every labelled case of ``config`` (a :class:`trainconfig.TrainConfig` or its
        file) into the crop cache training reads; returns the sample summary."""
        from .trainingdata import load_samples

        _, summary = load_samples(self._config(config), progress)
        return summary

    def train(self, config, resume: bool = False, progress: Progress | None = None) -> Path:
        """``jmid train``: the k-fold ensemble; returns the bundle folder."""
        from .trainjob import train

        return train(self._config(config), resume, progress)

    def evaluate(self, bundle: str | os.PathLike, out: str | os.PathLike,
                 oof: str | os.PathLike | None = None, labels: str | os.PathLike | None = None,
                 data: str | os.PathLike | None = None,
                 crops: str | os.PathLike | None = None) -> dict:  # fmt: skip
        """``jmid evaluate``: out-of-fold (``oof``) or held-out (``labels`` + ``data``)."""
        from .errors import JMIDError
        from .evaluation import evaluate_bundle, evaluate_oof

        if oof:
            return evaluate_oof(bundle, oof, out)
        if labels and data:
            return evaluate_bundle(bundle, labels, data, crops or Path(out) / "crop_cache", out)
        raise JMIDError("give the out-of-fold predictions, or labels and data of a held-out set")

    def run(self, arguments: Sequence[str]) -> int:
        """Any ``jmid`` command line, e.g. ``["train", "--config", "c.yaml"]``; its status."""
        from .cli import main

        return main(list(arguments))

    @staticmethod
    def _config(config):
        from .trainconfig import TrainConfig

        return config if isinstance(config, TrainConfig) else TrainConfig.load(config)
