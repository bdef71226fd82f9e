"""Organ cropping speed on a full-size CT: ours against the published scripts' method.

Builds a 512x512x300 CT at 0.7x0.7x1.0 mm by resampling the real example CT (and its label
map), then crops all seven organs (both sides of kidneys and adrenals) with the published
preset (64x256x256, mask mode) on one core, and with the naive method of the published scripts:
full-volume binary dilation of each organ mask with a ball, then a resize of the whole crop.

Usage: .venv/bin/python Testing/benchmarks/bench_crops.py
Target: < 3 s for all organs on one core.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "JMIDAnomaly"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from JMIDAnomalyLib.demo.reference_data import fetch_reference_data  # noqa: E402
from JMIDAnomalyLib.imaging.crops import CropConfig, crop_organs, organ_targets  # noqa: E402
from JMIDAnomalyLib.imaging.geometry import Grid, resample_to_grid  # noqa: E402
from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map  # noqa: E402
from scipy import ndimage  # noqa: E402


def full_size_case(size_xyz=(512, 512, 300), spacing_mm=(0.7, 0.7, 1.0)):
    """The example CT and its label map resampled to ``size_xyz`` voxels of ``spacing_mm``
    about the same centre, and the label names."""
    data = fetch_reference_data()
    ct = read_ct(data.ct)
    seg = read_label_map(data.ct_seg, ct)
    grid = Grid.from_image(ct)
    # Same centre, 512x512x300 voxels at 0.7x0.7x1.0 mm.
    centre = grid.index_to_physical([(np.asarray(grid.size) - 1) / 2])[0]
    size, spacing = np.array(size_xyz), np.array(spacing_mm)
    origin = centre - grid.direction_matrix @ (spacing * (size - 1) / 2)
    big = Grid(tuple(size.tolist()), tuple(spacing.tolist()), tuple(origin), grid.direction)
    big_ct = sitk.Cast(resample_to_grid(ct, big, "linear", -1024), sitk.sitkInt16)
    big_seg = resample_to_grid(seg, big, "nearest", 0)
    return big_ct, big_seg, data.label_names()


def naive_crops(ct: sitk.Image, seg: sitk.Image, names, config: CropConfig):
    """The published scripts' way: whole-volume dilation with a ball, crop, resize the crop."""
    ct_array = sitk.GetArrayViewFromImage(ct).astype(np.float32)
    labels = sitk.GetArrayViewFromImage(seg)
    ball = ndimage.generate_binary_structure(3, 1)
    low, high = config.hu_window
    out = []
    for target in organ_targets(names):
        if not target.labels:
            continue
        mask = np.isin(labels, target.labels)
        if not mask.any():
            continue
        dilated = ndimage.binary_dilation(mask, structure=ball)
        box = ndimage.find_objects(dilated.astype(np.uint8))[0]
        crop = np.where(dilated[box], ct_array[box], -1024.0)
        zoom = np.asarray(config.grid_zyx) / np.asarray(crop.shape)
        resized = ndimage.zoom(crop, zoom, order=1)
        out.append(np.clip((resized - low) / (high - low) * 2 - 1, -1, 1))
    return out


def main() -> int:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    t = time.perf_counter()
    ct, seg, names = full_size_case()
    print(f"built a {ct.GetSize()} CT at {ct.GetSpacing()} mm in {time.perf_counter() - t:.1f} s")
    config = CropConfig.preset("published")
    crop_organs(ct, seg, names, config=config)  # warm-up (imports, allocator)
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        crops = crop_organs(ct, seg, names, config=config)
        runs.append(time.perf_counter() - t)
    ours = min(runs)
    made = [c.key for c in crops if c.image is not None]
    t = time.perf_counter()
    naive = naive_crops(ct, seg, names, config)
    naive_s = time.perf_counter() - t
    print(f"organs cropped: {len(made)} ({', '.join(made)}), grid {config.grid_zyx}")
    print(f"ours:  {ours:.2f} s (best of 3: {', '.join(f'{r:.2f}' for r in runs)})")
    print(
        f"naive: {naive_s:.2f} s for {len(naive)} organs (full-volume ball dilation + crop resize)"
    )
    verdict = "met" if ours < 3 else "NOT met"
    print(f"ratio: {naive_s / ours:.1f}x faster; target < 3 s on one core: {verdict}")
    return 0 if ours < 3 else 1


if __name__ == "__main__":
    sys.exit(main())
