"""Analyze CTs with model bundles: per-organ ensemble scores and heatmaps on the CT's grid.

:class:`AnomalyPredictor` loads the bundles once (one per organ; all folds; GPU with AMP when
available) and analyzes many cases. For each organ and side it reports, per class, the ensemble
probability (the bundle's calibration of the mean over folds), the fold spread (std), the
bundle's threshold and a flag (probability >= threshold); organs the segmentation lacks are
reported with their status. The explanation (:mod:`~JMIDAnomalyLib.inference.explain`) of the
highest-scoring abnormal class is computed on the crop and mapped back onto the CT's grid
through the crop record, so it lies on the anatomy in any orientation.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from JMIDAnomalyLib.common.devices import pick_device
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import ORGANS, organ_key
from JMIDAnomalyLib.common.progress import Progress
from JMIDAnomalyLib.imaging.crops import STATUS_OK, STATUS_PARTIAL, crop_organs
from JMIDAnomalyLib.imaging.geometry import Grid, map_to_source
from JMIDAnomalyLib.inference import explain as explainers
from JMIDAnomalyLib.inference.methods import NO_EXPLANATION, OCCLUSION, check_explain_method
from JMIDAnomalyLib.models import domain as domains
from JMIDAnomalyLib.models.bundle import Bundle, load_bundle
from JMIDAnomalyLib.models.domain import OUTSIDE, OUTSIDE_NOTE
from JMIDAnomalyLib.models.ensemble import ensemble_probabilities
from JMIDAnomalyLib.models.inputs import model_batch

logger = logging.getLogger(__name__)

NORMAL_CLASSES = ("nofinding",)


@dataclass
class ClassScore:
    """One class of one organ: the calibrated ensemble probability (the bundle's calibration of
    the mean over folds), the fold spread and values (each calibrated), the threshold, and the
    raw ensemble probability before calibration."""

    cls: str
    probability: float
    spread: float
    fold_probabilities: list[float]
    threshold: float
    raw_probability: float | None = None

    @property
    def flag(self) -> bool:
        """Whether the probability reaches the bundle's threshold."""
        return self.probability >= self.threshold

    def to_dict(self) -> dict:
        """The score as ``scores.json`` writes it."""
        return {
            "class": self.cls,
            "probability": round(self.probability, 5),
            "spread": round(self.spread, 5),
            "fold_probabilities": [round(p, 5) for p in self.fold_probabilities],
            "threshold": round(self.threshold, 5),
            "flag": self.flag,
            "raw_probability": None
            if self.raw_probability is None
            else round(self.raw_probability, 5),
        }


@dataclass
class OrganResult:
    """One organ (and side) of one case."""

    organ: str
    side: str | None
    status: str
    message: str = ""
    volume_ml: float = 0.0
    scores: list[ClassScore] = field(default_factory=list)
    explained_class: str | None = None
    heatmap: np.ndarray | None = None  # (z, y, x) on the CT grid, zero outside the organ
    domain_ratio: float | None = None  # models/domain.py; None: the bundle has no domain

    @property
    def outside_training_data(self) -> bool:
        """Whether the crop lies outside the bundle's training domain (its scores and
        thresholds may not hold there)."""
        return self.domain_ratio is not None and self.domain_ratio > OUTSIDE

    @property
    def key(self) -> str:
        """``liver``, ``kidney_left``...: the organ and side as one key."""
        return organ_key(self.organ, self.side)

    @property
    def flagged(self) -> list[str]:
        """The abnormal classes at or above their thresholds."""
        return [s.cls for s in self.scores if s.flag and s.cls not in NORMAL_CLASSES]

    @property
    def abnormal(self) -> list[ClassScore]:
        """The abnormal classes' scores, highest probability first."""
        scores = [s for s in self.scores if s.cls not in NORMAL_CLASSES]
        return sorted(scores, key=lambda s: -s.probability)

    def to_dict(self) -> dict:
        """The organ's entry of ``scores.json`` (without the heatmap file name)."""
        return {
            "organ": self.organ,
            "side": self.side,
            "status": self.status,
            "message": self.message,
            "volume_ml": round(self.volume_ml, 2),
            "flagged": self.flagged,
            "explained_class": self.explained_class,
            "domain_ratio": None if self.domain_ratio is None else round(self.domain_ratio, 3),
            "outside_training_data": self.outside_training_data,
            "note": OUTSIDE_NOTE if self.outside_training_data else "",
            "scores": [s.to_dict() for s in self.scores],
        }


@dataclass
class CaseAnalysis:
    """One CT's analysis: the organ results, its label map and table, the method, the time (s)."""

    organs: list[OrganResult]
    label_map: sitk.Image
    label_names: dict[int, str]
    explain: str
    seconds: float = 0.0

    def heatmap_images(self) -> dict[str, sitk.Image]:
        """Organ key -> heatmap as an image on the CT's grid (explained organs only)."""
        grid = Grid.from_image(self.label_map)
        return {
            o.key: grid.image_from_array(o.heatmap) for o in self.organs if o.heatmap is not None
        }

    def to_dict(self) -> dict:
        """Method, seconds and organ results as JSON-ready values."""
        return {
            "explain": self.explain,
            "seconds": round(self.seconds, 2),
            "organs": [o.to_dict() for o in self.organs],
        }


def find_bundles(
    paths: str | os.PathLike | Iterable[str | os.PathLike], weights: bool = True
) -> dict[str, Bundle]:
    """Load bundles from paths: each a bundle (folder or zip) or a folder holding bundles
    (``*/bundle.json`` or ``*.zip``). Two bundles for one organ are an error.
    ``weights=False``: metadata only (see :func:`~JMIDAnomalyLib.models.bundle.load_bundle`)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: dict[str, Bundle] = {}
    for path in map(Path, paths):
        if path.is_dir() and not (path / "bundle.json").is_file():
            members = sorted(p.parent for p in path.glob("*/bundle.json"))
            if not members:
                members = sorted(path.glob("*.zip"))
            if not members:
                raise InputError(path, "holds no model bundle (no bundle.json, no .zip)")
        else:
            members = [path]
        for member in members:
            bundle = load_bundle(member, weights)
            if bundle.organ in found:
                raise InputError(member, f"a second bundle for the {bundle.organ}")
            found[bundle.organ] = bundle
    return found


class AnomalyPredictor:
    """Bundles loaded once; :meth:`analyze` runs on many cases.

    Args:
        bundles: organ -> Bundle, or paths for :func:`find_bundles`.
        device: ``auto`` (CUDA, MPS, CPU) or a torch device name.
        amp: float16 autocast on CUDA.
        occlusion_window: occlusion window in crop voxels (z, y, x); default 1/6 of the grid
            in z and 1/8 in plane (4 x 8 x 8 on the demo grid), stride half of it, coarse to
            fine (``coarse_to_fine=False``: the fine windows everywhere in the organ).
    """

    def __init__(
        self,
        bundles,
        device: str = "auto",
        amp: bool = True,
        occlusion_window: tuple[int, int, int] | None = None,
        coarse_to_fine: bool = True,
    ) -> None:
        self.bundles = dict(bundles) if isinstance(bundles, Mapping) else find_bundles(bundles)
        if not self.bundles:
            raise InputError("bundle", "no model bundle given")
        self.device = pick_device(device)
        self.amp = amp
        self.occlusion_window = occlusion_window
        self.coarse_to_fine = coarse_to_fine
        for bundle in self.bundles.values():
            bundle.models = [m.to(self.device).eval() for m in bundle.models]

    @property
    def organs(self) -> tuple[str, ...]:
        """The organs with a bundle, in display order."""
        return tuple(o for o in ORGANS if o in self.bundles)

    def analyze(
        self,
        ct: sitk.Image,
        label_map: sitk.Image,
        label_names: Mapping[int, str],
        organs: Iterable[str] | None = None,
        explain: str = OCCLUSION,
        explain_class: str | None = None,
        progress: Progress | None = None,
    ) -> CaseAnalysis:
        """Scores (and heatmaps) for each requested organ of one CT.

        Args:
            ct: the CT in HU; label_map: organ labels on its grid; label_names: value -> name.
            organs: default every organ with a bundle; one without a bundle is an error.
            explain: ``occlusion``, ``hirescam`` or ``none``.
            explain_class: the class to explain (default: the highest-scoring abnormal one).
        """
        check_explain_method(explain)
        organs = tuple(organs) if organs else self.organs
        missing = [o for o in organs if o not in self.bundles]
        if missing:
            have = ", ".join(self.organs)
            raise InputError("bundle", f"no model for {', '.join(missing)} (models for: {have})")
        start = time.perf_counter()
        # One cropping pass over the label map per distinct crop configuration.
        groups: dict[str, list[str]] = {}
        for organ in organs:
            key = json.dumps(self.bundles[organ].meta["preprocessing"], sort_keys=True)
            groups.setdefault(key, []).append(organ)
        crops = [
            crop
            for group in groups.values()
            for crop in crop_organs(
                ct, label_map, label_names, tuple(group), self.bundles[group[0]].crop_config
            )
        ]
        crops.sort(key=lambda c: organs.index(c.organ))  # stable: sides keep their order
        results: list[OrganResult] = []
        for n, crop in enumerate(crops):
            bundle = self.bundles[crop.organ]
            if progress:
                progress(n / len(crops), f"analyzing the {crop.key}")
            result = OrganResult(crop.organ, crop.side, crop.status, crop.message, crop.volume_ml)
            results.append(result)
            if crop.status not in (STATUS_OK, STATUS_PARTIAL):
                continue
            self._score(bundle, crop, result)
            if explain != NO_EXPLANATION:
                self._explain(bundle, crop, result, explain, explain_class)
        if progress:
            progress(1.0, "analysis done")
        return CaseAnalysis(
            results, label_map, dict(label_names), explain, time.perf_counter() - start
        )

    def _score(self, bundle: Bundle, crop, result: OrganResult) -> None:
        config = bundle.crop_config
        volume = torch.from_numpy(crop.image).to(self.device)[None]
        batch = model_batch(volume, bundle.layout, config.samples, config.slices_per_sample)
        raw = ensemble_probabilities(bundle.models, [batch], amp=self.amp, mirror=bundle.mirroring)
        raw = raw[:, 0].cpu().numpy()
        if bundle.domain is not None:
            per_model = domains.features(bundle.models, [batch])
            result.domain_ratio = float(domains.ratios(bundle.domain, per_model)[0])
        folds = bundle.calibrate(raw)  # (folds, K)
        mean = bundle.calibrate(raw.mean(0))  # (K,): the calibrated ensemble
        for k, cls in enumerate(bundle.classes):
            result.scores.append(
                ClassScore(
                    cls,
                    float(mean[k]),
                    float(folds[:, k].std()),
                    [float(p) for p in folds[:, k]],
                    float(bundle.thresholds[cls]),
                    float(raw[:, k].mean()),
                )
            )

    def _explain(
        self, bundle: Bundle, crop, result: OrganResult, method: str, explain_class: str | None
    ) -> None:
        if explain_class is not None and explain_class not in bundle.classes:
            raise InputError("explain class", f"'{explain_class}' is not a {bundle.organ} class")
        cls = explain_class or result.abnormal[0].cls
        k = bundle.classes.index(cls)
        config = bundle.crop_config
        if method == OCCLUSION:
            window = self.occlusion_window or default_occlusion_window(config.grid_zyx)
            heat = explainers.occlusion(
                bundle.models,
                crop.image,
                crop.mask,
                k,
                bundle.layout,
                config.samples,
                config.slices_per_sample,
                window,
                coarse_to_fine=self.coarse_to_fine,
                device=self.device,
                amp=self.amp,
            )
        else:
            heat = explainers.hirescam(
                bundle.models,
                crop.image,
                k,
                bundle.layout,
                config.samples,
                config.slices_per_sample,
                self.device,
            )
        result.explained_class = cls
        # Only the organ: occlusion windows and CAM cells reach past its edge, and what they
        # give there is the window's score, not evidence outside the organ.
        heat = map_to_source(np.where(crop.mask > 0, heat, 0.0), crop.record, "linear", 0.0)
        organ = map_to_source(crop.mask, crop.record, "nearest", 0.0) > 0
        result.heatmap = np.where(organ, heat, 0.0).astype(np.float32)


def default_occlusion_window(grid_zyx: tuple[int, int, int]) -> tuple[int, int, int]:
    """The occlusion window (z, y, x) in crop voxels: 1/6 of the grid in z, 1/8 in plane."""
    z, y, x = grid_zyx
    return max(z // 6, 1), max(y // 8, 1), max(x // 8, 1)
