"""JMIDAnomalyLib: the core library of the JMID Anomaly 3D Slicer extension.

Plain Python, importable and tested outside Slicer. It never imports Qt, CTK or the Slicer
application singletons; MRML is reached through MRML classes with an explicit scene. The
subpackages follow the pipeline; each imports only from the ones listed after it (an
import-linter contract in ``pyproject.toml`` enforces it, and no subpackage has an import
cycle):

``apps``
    The programs: the ``jmid`` command line (:mod:`.apps.cli`, one module per command group),
    the browser review (:mod:`.apps.webreview`), the JMIDTrainer module's Logic
    (:mod:`.apps.trainer`) and the Slicer dependency installer (:mod:`.apps.dependencies`).
``demo``
    The built-in demo data and the demo job: cohort building from a real CT, planted findings,
    deformation, report writing, contact sheet, the example-data download, ``run_demo``.
``review``
    The reading and error-analysis flow both front ends drive: :mod:`.review.controller`
    (events in, view calls out), :mod:`.review.reading` (analyses of scene volumes through the
    worker), :mod:`.review.error_analysis` with its :mod:`.review.queue` and
    :mod:`.review.feedback`.
``worker``
    The background analysis process (``python -m JMIDAnomalyLib.worker``), its non-blocking
    client and the protocol between them, defined once.
``inference`` | ``training``
    Analysing CTs with bundles (predictor, explanations, the analyze job, overview PNG) | making
    bundles (configuration, data, folds, trainer, the train job, evaluation).
``models`` | ``segmentation`` | ``labels`` | ``scene``
    Classifiers (registry with per-model metadata, the 2.5D MIL and 3D families, model input,
    ensemble prediction, the bundle) | nnU-Net organ segmentation | labels from radiology
    reports | MRML nodes and scenes built from images and results.
``imaging``
    Images with their geometry: grids, crops and mapping back, CT and label-map I/O, label
    tables, organ crops and the crop cache.
``common``
    What every layer uses: errors, atomic output, organs and their classes, progress and stop
    callables, compute devices.
"""

from __future__ import annotations

__version__ = "0.1.0"
