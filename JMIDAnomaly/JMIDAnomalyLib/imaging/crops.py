"""Organ crops for the classifier: per organ and side, masked or boxed, windowed, resampled.

Fast path (all organs of a 512x512x300 CT in about a second on one core):
1. one pass over the label map finds every organ's bounding box (``scipy.ndimage.find_objects``);
2. everything else works on the organ's sub-box only: the CT and mask are resampled onto the
   target grid through the physical space (SimpleITK), the mask is dilated there by the margin
   (in mm), the HU window maps to -1..1 and voxels outside the dilated mask become air (-1).

The published scripts dilated the full-volume mask with a ball and then resized the whole crop;
``Testing/benchmarks/bench_crops.py`` compares both.

Crops lie on LPS-aligned grids (:func:`~JMIDAnomalyLib.geometry.axis_aligned_grid`), so the
model sees the anatomy the same way up whatever the CT's stored orientation. Every crop carries a
:class:`~JMIDAnomalyLib.geometry.CropRecord`, so a map computed on it goes back into the CT
exactly (:func:`~JMIDAnomalyLib.geometry.map_to_source`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from JMIDAnomalyLib.common.errors import InputError, check_known_keys
from JMIDAnomalyLib.common.organs import ORGANS, SIDED_ORGANS, TOTALSEGMENTATOR_ORGANS, organ_key
from JMIDAnomalyLib.imaging.geometry import (
    CropRecord,
    Grid,
    axis_aligned_grid,
    crop_index_region,
    resample_to_grid,
)

logger = logging.getLogger(__name__)

#: Volumes below these (ml) are implausible for an adult organ: a segmentation fragment.
MIN_VOLUME_ML = {
    "liver": 200.0, "gallbladder": 2.0, "pancreas": 5.0, "spleen": 10.0,
    "kidney": 20.0, "adrenal": 0.5, "esophagus": 2.0,
}  # fmt: skip  # a table

STATUS_OK, STATUS_PARTIAL = "ok", "partial"
STATUS_ABSENT, STATUS_TOO_SMALL = "absent", "too_small"
#: ``CropConfig.fill_hu`` that fills with the median of the organ's kept voxels.
FILL_MEDIAN = "median"


@dataclass(frozen=True)
class CropConfig:
    """How organs are cropped (part of the model bundle's preprocessing).

    Attributes:
        mode: ``mask`` (organ mask dilated by ``margin_mm``, the rest set to air) or ``box``
            (the bounding box grown by ``margin_mm``).
        margin_mm: dilation / box margin in mm. In ``mask`` mode a negative margin erodes: the
            crop keeps the organ's interior only, without its border and its neighbours.
        fill_hu: in ``mask`` mode, what the voxels outside the mask become (HU); None: air
            (the window's low end, as published). A tissue value hides the organ's outline;
            ``"median"``, the kept voxels' median, hides it whatever the organ's attenuation
            (a fatty liver framed by a normal liver's value shows its outline as air would).
        hu_window: (low, high) HU mapped to -1..1.
        grid_zyx: target array shape (z, y, x); the crop's physical extent is kept.
        samples: 2.5D samples per crop.
        slices_per_sample: adjacent slices per sample (the encoder's input channels).
    """

    mode: str = "mask"
    margin_mm: float = 3.0
    fill_hu: float | str | None = None
    hu_window: tuple[float, float] = (-200.0, 400.0)
    grid_zyx: tuple[int, int, int] = (64, 256, 256)
    samples: int = 32
    slices_per_sample: int = 5

    def __post_init__(self) -> None:
        if self.mode not in ("mask", "box"):
            raise InputError("crop mode", f"must be 'mask' or 'box', not '{self.mode}'")
        if self.hu_window[1] <= self.hu_window[0]:
            raise InputError("hu_window", f"low must be below high, got {self.hu_window}")
        if min(self.grid_zyx) < 1 or (self.margin_mm < 0 and self.mode == "box"):
            raise InputError("crop grid", f"bad grid {self.grid_zyx} or margin {self.margin_mm}")
        if self.fill_hu is not None and self.mode != "mask":
            raise InputError("fill_hu", "only a mask-mode crop has voxels outside the mask")
        if isinstance(self.fill_hu, str) and self.fill_hu != FILL_MEDIAN:
            raise InputError("fill_hu", f"must be HU or '{FILL_MEDIAN}', not '{self.fill_hu}'")
        if self.slices_per_sample > self.grid_zyx[0] or self.samples < 1:
            raise InputError("2.5D layout", "more slices per sample than the grid has slices")

    @classmethod
    def preset(cls, name: str) -> CropConfig:
        """``published`` (64x256x256, 32 samples x 5 slices) or ``demo`` (small, CPU-fast)."""
        presets = {
            "published": cls(),
            "demo": cls(grid_zyx=(40, 64, 64), samples=8, slices_per_sample=5),
        }
        if name not in presets:
            raise InputError("preset", f"unknown preset '{name}' (one of {', '.join(presets)})")
        return presets[name]

    def to_dict(self) -> dict:
        """The settings as JSON-ready values (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> CropConfig:
        """Settings from a mapping (a bundle's ``preprocessing``); unknown keys are refused."""
        check_known_keys(data, cls, "crop config")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


@dataclass
class OrganCrop:
    """One organ (and side) cropped from a CT.

    Attributes:
        organ, side: e.g. ("kidney", "left"); side is None for unsided organs.
        status: ``ok``, ``partial`` (touches the volume border), ``absent`` or ``too_small``.
        volume_ml: the organ's volume in the source segmentation.
        image: windowed CT on the crop grid, float32 in -1..1, shape ``grid_zyx``; None when
            there is no crop.
        mask: the organ mask on the crop grid (uint8, undilated), same shape.
        record: where the crop came from (source grid, crop grid, index box).
    """

    organ: str
    side: str | None
    status: str
    volume_ml: float = 0.0
    image: np.ndarray | None = None
    mask: np.ndarray | None = None
    record: CropRecord | None = None
    message: str = ""

    @property
    def key(self) -> str:
        """``liver``, ``kidney_left``...: the organ and side as one key."""
        return organ_key(self.organ, self.side)

    def summary(self) -> dict:
        """Status, volume, message and crop record as JSON-ready values (no arrays)."""
        out = {
            "organ": self.organ,
            "side": self.side,
            "status": self.status,
            "volume_ml": round(self.volume_ml, 2),
            "message": self.message,
        }
        if self.record is not None:
            out["record"] = self.record.to_dict()
        return out


@dataclass(frozen=True)
class OrganTarget:
    """An organ (and side) and the label values that make it in a label map."""

    organ: str
    side: str | None
    labels: tuple[int, ...] = field(default_factory=tuple)


def organ_targets(
    names: Mapping[int, str],
    organs: tuple[str, ...] = ORGANS,
    structure_map: Mapping[str, tuple[str, str | None]] = TOTALSEGMENTATOR_ORGANS,
) -> list[OrganTarget]:
    """Which label values make each requested organ (and side), from a label table.

    A sided organ whose structures have no side (a plain "kidney" label) is split later by the
    physical left/right of its connected parts; here it is returned with side None.
    """
    by_organ: dict[tuple[str, str | None], list[int]] = {}
    for value, name in names.items():
        organ_side = structure_map.get(name) or ((name, None) if name in ORGANS else None)
        if organ_side and organ_side[0] in organs:
            by_organ.setdefault(organ_side, []).append(int(value))
    targets = []
    for organ in organs:
        sides = ("left", "right") if organ in SIDED_ORGANS else (None,)
        for side in sides:
            labels = (
                by_organ.get((organ, side)) or (by_organ.get((organ, None)) if side else None) or []
            )
            targets.append(OrganTarget(organ, side, tuple(sorted(labels))))
    return targets


def _side_mask(mask: np.ndarray, offset_kji, grid: Grid, side: str) -> np.ndarray:
    """Keep the voxels of a both-sides mask on one side of the patient (LPS x > 0 is left)."""
    kji = np.argwhere(mask)
    points = grid.index_to_physical((kji + offset_kji)[:, ::-1])
    # The body's midline: the middle of this organ pair's extent along LPS x.
    midline = 0.5 * (points[:, 0].min() + points[:, 0].max())
    keep = points[:, 0] > midline if side == "left" else points[:, 0] <= midline
    out = np.zeros_like(mask)
    out[tuple(kji[keep].T)] = 1
    return out


def crop_organs(
    ct: sitk.Image,
    label_map: sitk.Image,
    names: Mapping[int, str],
    organs: tuple[str, ...] = ORGANS,
    config: CropConfig | None = None,
    structure_map: Mapping[str, tuple[str, str | None]] = TOTALSEGMENTATOR_ORGANS,
) -> list[OrganCrop]:
    """Crop each requested organ (per side) from a CT and its label map.

    Args:
        ct: the CT in HU (any direction matrix).
        label_map: organ labels on the CT's grid.
        names: label value -> structure name (e.g. TotalSegmentator's ``kidney_left``).
        organs: organs to crop.
        config: crop parameters (default: the published preset).

    Returns:
        One :class:`OrganCrop` per organ and side, in organ order; absent or implausibly small
        organs come back with that status and no arrays.
    """
    config = config or CropConfig()
    grid = Grid.from_image(ct)
    if Grid.from_image(label_map).difference(grid) is not None:
        raise InputError("label map", "does not lie on the CT's grid")
    targets = organ_targets(names, organs, structure_map)
    organ_index, label_sets = _index_label_sets(sitk.GetArrayViewFromImage(label_map), targets)
    boxes = ndimage.find_objects(organ_index, max_label=len(label_sets))
    crops = []
    for target in targets:
        crop = OrganCrop(target.organ, target.side, STATUS_ABSENT)
        crops.append(crop)
        index = label_sets.index(target.labels) + 1 if target.labels else 0
        box = boxes[index - 1] if index else None
        if box is None:
            crop.message = "not in the segmentation"
            continue
        shared = sum(t.labels == target.labels for t in targets) > 1
        found = _organ_mask(organ_index, box, index, grid, target.side if shared else None)
        if found is None:
            crop.message = f"no {target.side} part in the segmentation"
            continue
        _crop_one(crop, ct, grid, *found, config)
    return crops


def _index_label_sets(labels: np.ndarray, targets: list[OrganTarget]):
    """One index per distinct label set (both sides of a single "kidney" label share one).

    Returns:
        ((z, y, x) uint8 array of set indices, 0 elsewhere; the label sets in index order).
    """
    label_sets = list(dict.fromkeys(t.labels for t in targets if t.labels))
    lut = np.zeros(int(labels.max()) + 1 if labels.size else 1, dtype=np.uint8)
    for index, label_set in enumerate(label_sets, start=1):
        for value in label_set:
            if value < lut.size:
                lut[value] = index
    return lut[labels], label_sets


def _organ_mask(organ_index, box, index: int, grid: Grid, split_side: str | None):
    """The organ's mask in its bounding box: (lower, upper (i, j, k) inclusive, (z, y, x) mask);
    with ``split_side`` only that side of a both-sides label (None when it has none)."""
    lower = np.array([box[2].start, box[1].start, box[0].start])
    upper = np.array([box[2].stop - 1, box[1].stop - 1, box[0].stop - 1])
    sub_mask = (organ_index[box] == index).astype(np.uint8)
    if split_side:  # one label for both sides: split by physical side
        sub_mask = _side_mask(sub_mask, lower[::-1], grid, split_side)
        if not sub_mask.any():
            return None
        kji = np.argwhere(sub_mask)
        lower, upper = lower + kji.min(0)[::-1], lower + kji.max(0)[::-1]
        sub_mask = sub_mask[
            tuple(slice(a, b + 1) for a, b in zip(kji.min(0), kji.max(0), strict=True))
        ]
    return lower, upper, sub_mask


def _crop_one(crop, ct, grid: Grid, lower, upper, sub_mask, config: CropConfig) -> None:
    """Check the organ's volume, then crop it (status ``too_small``, ``ok`` or ``partial``)."""
    crop.volume_ml = float(sub_mask.sum()) * float(np.prod(grid.spacing)) / 1000.0
    if crop.volume_ml < MIN_VOLUME_ML.get(crop.organ, 0.0):
        crop.status = STATUS_TOO_SMALL
        crop.message = f"{crop.volume_ml:.1f} ml is implausibly small for the {crop.organ}"
        return
    size = np.asarray(grid.size)
    # The box holds the whole organ; a negative (eroding) margin only shrinks what is kept.
    margin_vox = np.ceil(max(config.margin_mm, 0.0) / np.asarray(grid.spacing)).astype(int)
    touches = bool(np.any(lower == 0) or np.any(upper == size - 1))
    lo = np.maximum(lower - margin_vox, 0)
    hi = np.minimum(upper + margin_vox, size - 1)
    _fill_crop(crop, ct, sub_mask, lower, lo, hi, config)
    crop.status = STATUS_PARTIAL if touches else STATUS_OK
    if touches:
        crop.message = "touches the border of the CT: the organ may be cut off"


def _fill_crop(crop, ct, sub_mask, mask_lower, lo, hi, config: CropConfig) -> None:
    """Resample the CT sub-box and the organ mask onto the target grid; window; mask."""
    region, record = crop_index_region(ct, lo, hi)
    source = record.crop
    mask_box = np.zeros(source.shape_zyx, dtype=np.uint8)
    offset = (mask_lower - lo)[::-1]
    mask_box[
        offset[0] : offset[0] + sub_mask.shape[0],
        offset[1] : offset[1] + sub_mask.shape[1],
        offset[2] : offset[2] + sub_mask.shape[2],
    ] = sub_mask
    target = axis_aligned_grid(source, (config.grid_zyx[2], config.grid_zyx[1], config.grid_zyx[0]))
    image = sitk.GetArrayFromImage(
        resample_to_grid(sitk.Cast(region, sitk.sitkFloat32), target, "linear")
    )
    mask = _resample_mask(mask_box, source, target)
    low, high = config.hu_window
    windowed = np.clip((image - low) / (high - low) * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)
    if config.mode == "mask":
        # Grow (or shrink) on the coarser of the two grids (fewer voxels), then to the target.
        if np.prod(source.size) < np.prod(target.size):
            kept = _resample_mask(_grow(mask_box, config.margin_mm, source), source, target)
        else:
            kept = _grow(mask, config.margin_mm, target)
        windowed[kept == 0] = _fill_value(config, windowed, kept, mask)
    crop.image = windowed
    crop.mask = mask
    crop.record = record.with_crop_grid(target)


def fill_hu_arg(text: str) -> float | str:
    """A command line's fill value: HU, or ``median`` (the organ's own median); anything else
    is refused with the values it may take (argparse prints the message as it is)."""
    if text == FILL_MEDIAN:
        return FILL_MEDIAN
    try:
        return float(text)
    except ValueError:
        from argparse import ArgumentTypeError

        raise ArgumentTypeError(f"must be HU or '{FILL_MEDIAN}', not '{text}'") from None


def _fill_value(config: CropConfig, windowed, kept, mask) -> float:
    """The windowed value outside the kept region: air, a fixed HU, or the kept voxels' median
    (the organ's whole mask where erosion kept nothing; the median commutes with the window)."""
    if config.fill_hu == FILL_MEDIAN:
        inside = windowed[kept != 0] if kept.any() else windowed[mask != 0]
        return float(np.median(inside)) if inside.size else -1.0
    low, high = config.hu_window
    fill = -1.0 if config.fill_hu is None else (config.fill_hu - low) / (high - low) * 2 - 1
    return float(np.clip(fill, -1.0, 1.0))


def _resample_mask(mask: np.ndarray, source: Grid, target: Grid) -> np.ndarray:
    image = source.image_from_array(mask.astype(np.float32))
    return (sitk.GetArrayFromImage(resample_to_grid(image, target, "linear")) >= 0.5).astype(
        np.uint8
    )


def _grow(mask: np.ndarray, margin_mm: float, grid: Grid) -> np.ndarray:
    """Grow a (z, y, x) mask by ``margin_mm`` along each axis, or shrink it when the margin is
    negative (separable maximum / minimum filter: a box-shaped structuring element of
    +/- margin, fast on any grid)."""
    radius = np.floor(abs(margin_mm) / np.asarray(grid.spacing)[::-1] + 0.5).astype(int)
    if not radius.any():
        return mask
    size = tuple(2 * radius + 1)
    if margin_mm < 0:
        return ndimage.minimum_filter(mask, size=size, mode="constant", cval=0)
    return ndimage.maximum_filter(mask, size=size)


def sample_indices(depth: int, samples: int, slices: int) -> np.ndarray:
    """Slice indices of the 2.5D samples: (samples, slices), centres spread evenly over depth."""
    half = slices // 2
    centres = np.linspace(half, depth - 1 - (slices - 1 - half), samples).round().astype(int)
    return centres[:, None] + np.arange(-half, slices - half)[None, :]
