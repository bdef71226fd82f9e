"""``jmid analyze``: one CT in, a results folder out (written whole or not at all).

    out/
      scores.json                   schema below
      seg.nii.gz, seg.json          organ label map on the CT's grid and its label table
      heatmap_<organ>[_<side>].nii.gz   explanation on the CT's grid (float32; see explain.py)
      overview.png                  axial and coronal slices with overlays and scores
      scene.mrb                     Slicer scene: CT, segmentation, heatmaps as colour overlays

``scores.json`` (format 1)::

    {"format": 1, "ct": "<file name>", "segmentation": "given" | "model",
     "explain": "occlusion" | "hirescam" | "none", "seconds": float,
     "bundles": {"<organ>": {"model": str, "folds": int, "mirrored": bool (test-time
                 mirroring: each score the mean over the crop's 8 mirror images)}},
     "organs": [{"organ": str, "side": str | null, "status": "ok" | "partial" | "absent" |
                 "too_small", "message": str, "volume_ml": float, "flagged": [class, ...],
                 "explained_class": str | null, "heatmap": "<file>" | null,
                 "domain_ratio": float | null (models/domain.py: above 1, the crop lies
                 outside the bundle's training data; null: the bundle has no domain),
                 "outside_training_data": bool, "note": str (what the viewers show then),
                 "scores": [{"class": str, "probability": float, "spread": float,
                             "fold_probabilities": [float], "threshold": float,
                             "raw_probability": float (before calibration),
                             "flag": bool}]}]}
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import SimpleITK as sitk

from JMIDAnomalyLib.common.atomic import atomic_output, check_replaceable
from JMIDAnomalyLib.common.batch import BatchSummary, CaseOutcome, attempt, run_batch
from JMIDAnomalyLib.common.errors import InputError, check_known_keys
from JMIDAnomalyLib.common.progress import Progress
from JMIDAnomalyLib.common.sharding import Shard
from JMIDAnomalyLib.imaging.label_tables import read_segmentation, write_label_names
from JMIDAnomalyLib.imaging.manifest import ManifestRow
from JMIDAnomalyLib.imaging.volumes import read_ct, write_image
from JMIDAnomalyLib.inference.dicom_export import dicom_sources, write_dicom_results
from JMIDAnomalyLib.inference.methods import OCCLUSION, check_explain_method
from JMIDAnomalyLib.inference.predictor import AnomalyPredictor, CaseAnalysis

SCORES_FORMAT = 1


@dataclass
class AnalyzeConfig:
    """One analysis job: what ``jmid analyze``, the Slicer module and the worker all run.

    Attributes:
        ct: CT file or DICOM folder. out: results folder (written whole or not at all).
        bundles: model bundles (folders, zips, or folders of bundles), one per organ.
        seg / seg_labels: an organ label map on the CT's grid and its label table (default
            the file beside it with ``.json``); or seg_model: an nnU-Net v2 model folder.
        explain: ``occlusion``, ``hirescam`` or ``none``; explain_class: the class to explain
            (default: each organ's highest-scoring abnormal class).
        organs: organs to analyze (default: every bundle's). device: ``auto``, ``cuda``,
            ``mps`` or ``cpu``. scene: also write ``scene.mrb``. dicom: also write ``dicom/``,
            the segmentation and heatmaps as DICOM SEG and Parametric Maps (a DICOM CT only;
            :mod:`~JMIDAnomalyLib.inference.dicom_export`).
    """

    ct: str
    out: str
    bundles: list[str]
    seg: str = ""
    seg_labels: str = ""
    seg_model: str = ""
    explain: str = OCCLUSION
    explain_class: str = ""
    organs: list[str] = field(default_factory=list)
    device: str = "auto"
    scene: bool = True
    dicom: bool = False

    def __post_init__(self) -> None:
        self.bundles = [str(b) for b in self.bundles]
        self.organs = [str(o) for o in self.organs]
        if not self.bundles:
            raise InputError("bundle", "no model bundle given")
        if bool(self.seg) == bool(self.seg_model):
            raise InputError("segmentation", "give either a segmentation or a segmentation model")
        check_explain_method(self.explain)

    def to_dict(self) -> dict:
        """The job as JSON-ready values (what the worker request carries)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "analysis request") -> AnalyzeConfig:
        """A job from a mapping; unknown or missing settings are an InputError naming ``source``."""
        check_known_keys(data, cls, source)
        missing = sorted(k for k in ("ct", "out", "bundles") if k not in data)
        if missing:
            raise InputError(source, f"missing analysis settings: {', '.join(missing)}")
        return cls(**data)


class AnalysisRunner:
    """Runs :class:`AnalyzeConfig` jobs, keeping predictors and segmenters loaded between them
    (keyed by bundle paths and device, and by model folder and device)."""

    def __init__(self) -> None:
        self._predictors: dict[tuple, AnomalyPredictor] = {}
        self._segmenters: dict[tuple, object] = {}

    @property
    def loaded(self) -> int:
        """How many predictors and segmenters are loaded."""
        return len(self._predictors) + len(self._segmenters)

    @staticmethod
    def _predictor_key(bundles: list[str], device: str) -> tuple:
        return tuple(str(Path(b).resolve()) for b in bundles), device

    def predictor(self, bundles: list[str], device: str) -> AnomalyPredictor:
        """The predictor of these bundles on ``device``, loaded on first use."""
        key = self._predictor_key(bundles, device)
        if key not in self._predictors:
            self._predictors[key] = AnomalyPredictor(bundles, device)
        return self._predictors[key]

    def run(self, config: AnalyzeConfig, progress: Progress | None = None) -> AnalysisRun:
        """Analyze one CT into ``config.out``."""
        start = time.perf_counter()
        reused = self._predictor_key(config.bundles, config.device) in self._predictors
        if not reused and progress:
            progress(0.0, "loading the model bundles")
        predictor = self.predictor(config.bundles, config.device)
        segmenter = None
        if config.seg_model:
            seg_key = (str(Path(config.seg_model).resolve()), config.device)
            if seg_key not in self._segmenters:
                from JMIDAnomalyLib.segmentation.nnunet import OrganSegmenter

                reused = False
                self._segmenters[seg_key] = OrganSegmenter(config.seg_model, device=config.device)
            segmenter = self._segmenters[seg_key]
        analysis = analyze_case(
            config.ct,
            predictor,
            config.out,
            config.seg or None,
            config.seg_labels or None,
            segmenter,
            config.explain,
            tuple(config.organs) or None,
            config.scene,
            progress,
            config.explain_class or None,
            dicom=config.dicom,
        )
        return AnalysisRun(analysis, config.out, time.perf_counter() - start, reused)


def analyze_dataset(
    runner: AnalysisRunner,
    rows: list[ManifestRow],
    out: str | os.PathLike,
    settings: dict,
    shard: Shard,
    progress: Progress | None = None,
) -> BatchSummary:
    """Analyze this shard's cases into ``<out>/<case_id>/``, the models loaded once.

    Args:
        runner: keeps the bundles and the segmentation model loaded between cases.
        rows: the manifest. out: the batch's folder (marked by ``analyze-batch.json``).
        settings: the :class:`AnalyzeConfig` fields other than ``ct``, ``out``, ``seg`` and
            ``seg_labels``; a row without ``seg`` is segmented with ``settings["seg_model"]``.
        shard: this process's share of the rows.

    A case whose folder holds ``scores.json`` is done (the folder is written whole or not at
    all), so a killed run resumes; a failed case is recorded and the batch goes on.
    """
    out = Path(out)
    check_replaceable(out, "analyze-batch.json")
    seg_model = settings.get("seg_model", "")
    AnalyzeConfig(ct="-", out="-", **{**settings, "seg": "-", "seg_model": ""})  # checked
    runner.predictor(settings["bundles"], settings.get("device", "auto"))  # bad bundles: stop
    with atomic_output(out / "analyze-batch.json") as tmp:
        tmp.write_text(json.dumps(settings, indent=1), encoding="utf-8")

    def is_done(row: ManifestRow) -> bool:
        return (out / row.case_id / "scores.json").is_file()

    def analyze_one(row: ManifestRow) -> CaseOutcome:
        def work() -> None:
            if row.seg:
                seg = {"seg": row.seg, "seg_labels": row.seg_labels, "seg_model": ""}
            elif seg_model:
                seg = {"seg": "", "seg_labels": "", "seg_model": seg_model}
            else:
                raise InputError(row.ct, "no segmentation in the manifest and no --seg-model")
            job = {**settings, **seg, "ct": row.ct, "out": str(out / row.case_id)}
            runner.run(AnalyzeConfig(**job))

        return attempt(row.case_id, work)

    return run_batch("analyze", rows, lambda r: r.case_id, is_done, analyze_one, shard, progress)


@dataclass
class AnalysisRun:
    """What :meth:`AnalysisRunner.run` did: the analysis, where it went, how long it took and
    whether the models were already loaded."""

    analysis: CaseAnalysis
    out: str
    seconds: float
    models_reused: bool

    def to_dict(self) -> dict:
        """What the worker reports: results folder, seconds, reuse, per-organ scores."""
        return {
            "out": str(self.out),
            "seconds": round(self.seconds, 3),
            "models_reused": self.models_reused,
            "organs": [o.to_dict() for o in self.analysis.organs],
        }


def analyze_case(
    ct_path: str | os.PathLike,
    predictor: AnomalyPredictor,
    out: str | os.PathLike,
    seg_path: str | os.PathLike | None = None,
    seg_labels: str | os.PathLike | None = None,
    segmenter=None,
    explain: str = OCCLUSION,
    organs: tuple[str, ...] | None = None,
    scene: bool = True,
    progress: Progress | None = None,
    explain_class: str | None = None,
    dicom: bool = False,
) -> CaseAnalysis:
    """Analyze one CT and write the results folder ``out`` (with ``dicom``, also ``dicom/``).

    The segmentation is ``seg_path`` (with its label table ``seg_labels``, default the file
    beside it) or made by ``segmenter`` (an
    :class:`~JMIDAnomalyLib.segmentation.nnunet.OrganSegmenter`).
    """
    check_replaceable(out, "scores.json")
    ct_files = dicom_sources(ct_path) if dicom else None  # checked before any work
    ct = read_ct(ct_path)
    if seg_path is not None:
        label_map, names = read_segmentation(seg_path, ct, seg_labels)
        source = "given"
    elif segmenter is not None:
        label_map = segmenter.segment(ct)
        names = segmenter.label_names
        source = "model"
    else:
        raise InputError("segmentation", "give a segmentation (--seg) or a model (--seg-model)")

    def step(fraction: float, message: str) -> None:
        if progress:
            progress(0.9 * fraction, message)

    analysis = predictor.analyze(ct, label_map, names, organs, explain, explain_class, step)
    with atomic_output(out, is_dir=True) as tmp:
        write_results(tmp, ct, analysis, predictor, Path(ct_path).name, source, scene)
        if ct_files:
            write_dicom_results(tmp, analysis, ct_files)
    if progress:
        progress(1.0, f"results written to {out}")
    return analysis


def write_results(
    folder: Path,
    ct: sitk.Image,
    analysis: CaseAnalysis,
    predictor: AnomalyPredictor,
    ct_name: str,
    source: str,
    scene: bool = True,
) -> None:
    """Write every output of one analysis into ``folder`` (which exists)."""
    from JMIDAnomalyLib.inference.overview import render_overview

    write_image(analysis.label_map, folder / "seg.nii.gz")
    write_label_names(analysis.label_names, folder / "seg.json")
    heatmaps = analysis.heatmap_images()
    organs = []
    for result in analysis.organs:
        entry = result.to_dict()
        entry["heatmap"] = None
        if result.key in heatmaps:
            entry["heatmap"] = f"heatmap_{result.key}.nii.gz"
            write_image(heatmaps[result.key], folder / entry["heatmap"])
        organs.append(entry)
    scores = {
        "format": SCORES_FORMAT,
        "ct": ct_name,
        "segmentation": source,
        "explain": analysis.explain,
        "seconds": round(analysis.seconds, 2),
        "bundles": {
            o: {"model": b.meta["model"], "folds": len(b.models), "mirrored": b.mirroring}
            for o, b in predictor.bundles.items()
        },
        "organs": organs,
    }
    (folder / "scores.json").write_text(json.dumps(scores, indent=1), encoding="utf-8")
    render_overview(
        folder / "overview.png", ct, analysis.label_map, analysis.label_names, analysis.organs
    )
    if scene:
        from slicer import vtkMRMLScene

        from JMIDAnomalyLib.scene.cases import add_analysis_to_scene
        from JMIDAnomalyLib.scene.mrml import save_scene

        mrml_scene = vtkMRMLScene()
        add_analysis_to_scene(mrml_scene, ct, analysis)
        save_scene(mrml_scene, folder / "scene.mrb")
