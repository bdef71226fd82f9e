"""Geometry: a finding planted at a known physical point comes back at the same point."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from JMIDAnomalyLib.imaging.geometry import (
    CropRecord,
    Grid,
    centroid_lps,
    crop_to_physical_box,
    map_to_source,
    resample_to_grid,
    resample_to_size,
)
from JMIDAnomalyLib.imaging.volumes import read_image, read_label_map, write_image


def _rotation(axis: str, degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return {
        "x": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]),
        "y": np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]),
        "z": np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]),
    }[axis]


# Direction matrices in ITK's LPS world; the name says where +i, +j, +k point.
ORIENTATIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "LAS": np.diag([1.0, -1.0, 1.0]),
    "oblique": _rotation("z", 23) @ _rotation("x", -17) @ _rotation("y", 9),
}
CENTER = np.array([12.3, -40.7, 101.9])  # LPS mm
RADIUS = 5.0  # a 10 mm sphere


def sphere_volume(direction: np.ndarray, spacing=(0.8, 0.9, 1.5), size=(60, 56, 40)) -> sitk.Image:
    """A float volume (-1000 outside, 1000 inside) with a 10 mm sphere at CENTER."""
    # Put CENTER near, but not at, the middle voxel so crops are off-centre.
    middle = (np.asarray(size) - 1) / 2 + np.array([3.3, -4.6, 2.2])
    origin = CENTER - direction @ (np.asarray(spacing) * middle)
    grid = Grid(tuple(size), tuple(spacing), tuple(origin), tuple(direction.ravel()))
    kji = np.indices(grid.shape_zyx).reshape(3, -1)
    points = grid.index_to_physical(kji[::-1].T)
    inside = np.linalg.norm(points - CENTER, axis=1) <= RADIUS
    array = np.where(inside, 1000.0, -1000.0).astype(np.float32).reshape(grid.shape_zyx)
    return grid.image_from_array(array)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_crop_resample_map_back_keeps_the_finding_in_place(orientation):
    image = sphere_volume(ORIENTATIONS[orientation])
    source_grid = Grid.from_image(image)
    half_voxel = min(source_grid.spacing) / 2
    source_mask = sitk.GetArrayFromImage(image) > 0
    assert np.linalg.norm(centroid_lps(source_mask, source_grid) - CENTER) < half_voxel

    crop, record = crop_to_physical_box(image, CENTER - 8, CENTER + 8, margin_mm=4)
    crop_mask = sitk.GetArrayFromImage(crop) > 0
    assert crop_mask.sum() == source_mask.sum(), "the crop must hold the whole sphere"
    assert not any(record.clipped)

    resampled = resample_to_size(crop, (24, 32, 32))
    record = record.with_crop_grid(Grid.from_image(resampled))
    resampled_mask = sitk.GetArrayFromImage(resampled) > 0
    assert np.linalg.norm(centroid_lps(resampled_mask, record.crop) - CENTER) < half_voxel

    # A map computed on the crop (here: the sphere mask itself) goes back into the source grid.
    back = map_to_source(resampled_mask.astype(np.float32), CropRecord.from_dict(record.to_dict()))
    assert back.shape == source_grid.shape_zyx
    error = np.linalg.norm(centroid_lps(back, source_grid, weights=True) - CENTER)
    assert error < half_voxel, f"{orientation}: centroid moved {error:.3f} mm"
    # And it overlaps the original sphere, not a mirrored copy of it.
    dice = 2 * np.sum((back > 0.5) & source_mask) / (np.sum(back > 0.5) + source_mask.sum())
    assert dice > 0.85


def test_resized_grid_keeps_the_physical_extent():
    grid = Grid(
        (10, 20, 30), (1.0, 2.0, 0.5), (5.0, -3.0, 7.0), tuple(ORIENTATIONS["oblique"].ravel())
    )
    resized = grid.resized((5, 40, 7))
    for g in (grid, resized):
        lower = g.index_to_physical([[-0.5, -0.5, -0.5]])
        upper = g.index_to_physical([np.asarray(g.size) - 0.5])
        np.testing.assert_allclose(lower, grid.index_to_physical([[-0.5, -0.5, -0.5]]), atol=1e-9)
        np.testing.assert_allclose(
            upper, grid.index_to_physical([np.asarray(grid.size) - 0.5]), atol=1e-9
        )
    points = np.random.default_rng(0).uniform(-50, 50, (20, 3))
    np.testing.assert_allclose(
        grid.index_to_physical(grid.physical_to_index(points)), points, atol=1e-9
    )


def test_crop_at_the_volume_border_is_clipped_and_reported():
    image = sphere_volume(np.eye(3))
    grid = Grid.from_image(image)
    corner = grid.index_to_physical([[0, 0, 0]])[0]
    _, record = crop_to_physical_box(image, corner - 20, corner + 5)
    assert record.index_lower == (0, 0, 0)
    assert all(record.clipped)


def test_resample_to_grid_matches_sitk_physical_lookup(example_ct):
    """Resampling goes through physical space: a voxel's value is the source's at that point."""
    target = Grid.from_image(example_ct).resized((40, 30, 20))
    out = resample_to_grid(example_ct, target, "nearest")
    idx = (13, 7, 11)
    point = out.TransformIndexToPhysicalPoint(idx)
    src_index = example_ct.TransformPhysicalPointToIndex(point)
    assert out[idx] == example_ct[src_index]


def test_dicom_series_and_its_nifti_share_physical_geometry(dicom_dir, reference_data, tmp_path):
    dicom = read_image(dicom_dir)
    one_file = read_image(sorted(dicom_dir.iterdir())[5])
    assert Grid.from_image(one_file).difference(Grid.from_image(dicom)) is None
    # TotalSegmentator's NIfTI label map of this series: same voxel centres, its own axis order.
    nifti = read_label_map(reference_data.dicom_seg)
    grid_d, grid_n = Grid.from_image(dicom), Grid.from_image(nifti)

    def corners(grid):
        idx = np.array(list(np.ndindex(2, 2, 2))) * (np.asarray(grid.size) - 1)
        return np.array(sorted(map(tuple, np.round(grid.index_to_physical(idx), 3))))

    np.testing.assert_allclose(corners(grid_d), corners(grid_n), atol=1e-2)
    np.testing.assert_allclose(sorted(grid_d.spacing), sorted(grid_n.spacing), atol=1e-4)
    # Writing the DICOM CT as NIfTI and reading it back keeps the geometry exactly.
    path = write_image(dicom, tmp_path / "ct.nii.gz")
    assert Grid.from_image(read_image(path)).difference(grid_d, 1e-3) is None
