"""The main job on the built-in demo data.

Today it runs the stages that exist: fetch the real example CT, validate it, take the seven
abdominal organs from its reference label map, measure each organ in physical space, crop it
with the geometry helpers, and write a Slicer scene with the CT and the organ segmentation.
Later stages (labels from reports, training, analysis) join here as they land.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import atomic_output
from .geometry import Grid, centroid_lps, crop_to_physical_box
from .imageio import read_ct, read_label_map, write_image
from .labelmaps import select_organs
from .referencedata import fetch_reference_data

logger = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass
class OrganSummary:
    structure: str
    volume_ml: float
    centroid_lps: tuple[float, float, float]
    crop_size: tuple[int, int, int]
    touches_border: bool


@dataclass
class DemoResult:
    out: Path
    organs: list[OrganSummary] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)

    def table(self) -> str:
        lines = [
            f"{'structure':22s} {'volume ml':>10s} {'centroid LPS (mm)':>28s} "
            f"{'crop x,y,z':>14s}  border"
        ]
        for o in self.organs:
            centroid = ", ".join(f"{v:7.1f}" for v in o.centroid_lps)
            crop = ",".join(str(v) for v in o.crop_size)
            lines.append(
                f"{o.structure:22s} {o.volume_ml:10.1f} {centroid:>28s} {crop:>14s}  "
                f"{'yes' if o.touches_border else 'no'}"
            )
        return "\n".join(lines)


def _no_progress(fraction: float, message: str) -> None:
    logger.info("[%3.0f%%] %s", 100 * fraction, message)


def run_demo(out: Path, progress: Progress = _no_progress, margin_mm: float = 10.0) -> DemoResult:
    """Run the demo into ``out``; see the module docstring. Re-running overwrites its files."""
    from slicer import vtkMRMLScene

    from .mrml import save_scene
    from .scenes import add_case_to_scene

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out)
    progress(0.0, "fetching the example CT (cached after the first run)")
    data = fetch_reference_data()
    progress(0.2, "reading and validating the CT and its label map")
    ct = read_ct(data.ct)
    organs, names = select_organs(read_label_map(data.ct_seg, reference=ct), data.label_names())
    grid = Grid.from_image(ct)
    array = sitk.GetArrayViewFromImage(organs)
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    progress(0.4, "measuring and cropping each organ")
    for value, structure in names.items():
        mask = array == value
        if not mask.any():
            continue
        kji = np.argwhere(mask)
        corners = grid.index_to_physical(np.stack([kji.min(0), kji.max(0)])[:, ::-1])
        crop, record = crop_to_physical_box(ct, corners.min(0), corners.max(0), margin_mm)
        result.organs.append(
            OrganSummary(
                structure,
                float(mask.sum()) * voxel_ml,
                tuple(float(v) for v in centroid_lps(mask, grid)),
                record.crop.size,
                any(record.clipped),
            )
        )
    progress(0.6, "writing the organ label map")
    result.files["organs"] = write_image(organs, out / "organs.nii.gz")
    with atomic_output(out / "organs.json") as tmp:
        tmp.write_text(
            json.dumps({str(k): v for k, v in names.items()}, indent=1), encoding="utf-8"
        )
    result.files["labels"] = out / "organs.json"
    progress(0.8, "writing the Slicer scene")
    scene = vtkMRMLScene()
    add_case_to_scene(scene, ct, organs, names, name="Example CT")
    result.files["scene"] = save_scene(scene, out / "scene.mrb")
    progress(1.0, "done")
    return result
