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
     "bundles": {"<organ>": {"model": str, "folds": int}},
     "organs": [{"organ": str, "side": str | null, "status": "ok" | "partial" | "absent" |
                 "too_small", "message": str, "volume_ml": float, "flagged": [class, ...],
                 "explained_class": str | null, "heatmap": "<file>" | null,
                 "scores": [{"class": str, "probability": float, "spread": float,
                             "fold_probabilities": [float], "threshold": float,
                             "flag": bool}]}]}
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import SimpleITK as sitk

from .analysis import AnomalyPredictor, CaseAnalysis
from .cropjob import default_label_table
from .errors import InputError, atomic_output
from .imageio import read_ct, read_label_map, write_image
from .labelmaps import read_label_names, write_label_names

SCORES_FORMAT = 1


def analyze_case(
    ct_path: str | os.PathLike,
    predictor: AnomalyPredictor,
    out: str | os.PathLike,
    seg_path: str | os.PathLike | None = None,
    seg_labels: str | os.PathLike | None = None,
    segmenter=None,
    explain: str = "occlusion",
    organs: tuple[str, ...] | None = None,
    scene: bool = True,
    progress: Callable[[float, str], None] | None = None,
) -> CaseAnalysis:
    """Analyze one CT and write the results folder ``out``.

    The segmentation is ``seg_path`` (with its label table ``seg_labels``, default the file
    beside it) or made by ``segmenter`` (an :class:`segmentation.OrganSegmenter`).
    """
    ct = read_ct(ct_path)
    if seg_path is not None:
        seg_path = Path(seg_path)
        table = Path(seg_labels) if seg_labels else default_label_table(seg_path)
        if not table.is_file():
            raise InputError(table, "no label table for the segmentation; pass --seg-labels")
        label_map = read_label_map(seg_path, reference=ct)
        names = read_label_names(table)
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

    analysis = predictor.analyze(ct, label_map, names, organs, explain, progress=step)
    with atomic_output(out, is_dir=True) as tmp:
        write_results(tmp, ct, analysis, predictor, Path(ct_path).name, source, scene)
    if progress:
        progress(1.0, f"results written to {out}")
    return analysis


def write_results(folder: Path, ct: sitk.Image, analysis: CaseAnalysis,
                  predictor: AnomalyPredictor, ct_name: str, source: str,
                  scene: bool = True) -> None:  # fmt: skip
    """Write every output of one analysis into ``folder`` (which exists)."""
    from .overview import render_overview

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
            o: {"model": b.meta["model"], "folds": len(b.models)}
            for o, b in predictor.bundles.items()
        },  # fmt: skip
        "organs": organs,
    }
    (folder / "scores.json").write_text(json.dumps(scores, indent=1), encoding="utf-8")
    render_overview(folder / "overview.png", ct, analysis.label_map, analysis.label_names,
                    analysis.organs)  # fmt: skip
    if scene:
        from slicer import vtkMRMLScene

        from .mrml import save_scene
        from .scenes import add_analysis_to_scene

        mrml_scene = vtkMRMLScene()
        add_analysis_to_scene(mrml_scene, ct, analysis)
        save_scene(mrml_scene, folder / "scene.mrb")
