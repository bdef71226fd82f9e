"""The ``jmid crop`` job: crop one case's organs and write them as volumes Slicer overlays."""

from __future__ import annotations

import json
import os
from pathlib import Path

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import ORGANS
from JMIDAnomalyLib.imaging.crops import CropConfig, OrganCrop, crop_organs
from JMIDAnomalyLib.imaging.label_tables import read_segmentation
from JMIDAnomalyLib.imaging.volumes import read_ct, write_image


def crop_case(
    ct_path: str | os.PathLike,
    seg_path: str | os.PathLike,
    out: str | os.PathLike,
    organs: tuple[str, ...] = ORGANS,
    config: CropConfig | None = None,
    labels_path: str | os.PathLike | None = None,
) -> list[OrganCrop]:
    """Crop a case and write ``<organ>[_side].nii.gz`` (windowed, -1..1, on the crop's own
    physical grid, so it overlays the CT in Slicer), ``<..>_mask.nii.gz`` and ``crops.json``."""
    unknown = [o for o in organs if o not in ORGANS]
    if unknown:
        raise InputError("--organs", f"unknown organs {unknown}; choose from {', '.join(ORGANS)}")
    ct = read_ct(ct_path)
    label_map, names = read_segmentation(seg_path, ct, labels_path, "--labels")
    crops = crop_organs(ct, label_map, names, organs, config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for crop in crops:
        if crop.image is None:
            continue
        write_image(crop.record.crop.image_from_array(crop.image), out / f"{crop.key}.nii.gz")
        write_image(crop.record.crop.image_from_array(crop.mask), out / f"{crop.key}_mask.nii.gz")
    report = {"config": (config or CropConfig()).to_dict(), "crops": [c.summary() for c in crops]}
    with atomic_output(out / "crops.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return crops
