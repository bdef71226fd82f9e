"""Random smooth deformations of a real CT and its label map (synthetic training cases).

Used to derive many plausible cases from one real CT: the tiny nnU-Net test model and the demo
cohort. The deformation is one transform (scaling and a small rotation about the volume
centre, plus a smooth B-spline field), applied to the CT (linear) and the label map (nearest)
alike (:func:`resample`), so the labels stay on the anatomy. A z-range crop and intensity
changes (enhancement level, noise) complete a case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from JMIDAnomalyLib.imaging.geometry import Grid


@dataclass(frozen=True)
class DeformationConfig:
    """Ranges of the random deformation.

    Attributes:
        scale: isotropic scaling range.
        rotation_deg: maximum rotation about each axis.
        displacement_mm: maximum B-spline control point displacement.
        control_points: B-spline mesh size per axis.
        keep_z: fraction range of the slices kept by the z-range crop.
        enhancement: multiplier range of soft-tissue attenuation above 0 HU (contrast level).
        noise_hu: standard deviation range of added Gaussian noise.
    """

    scale: tuple[float, float] = (0.92, 1.08)
    rotation_deg: float = 4.0
    displacement_mm: float = 6.0
    control_points: int = 4
    keep_z: tuple[float, float] = (0.8, 1.0)
    enhancement: tuple[float, float] = (0.9, 1.15)
    noise_hu: tuple[float, float] = (0.0, 12.0)


def random_transform(
    image: sitk.Image, rng: np.random.Generator, config: DeformationConfig
) -> sitk.Transform:
    """Scaling + rotation about the image centre, composed with a smooth B-spline field."""
    grid = Grid.from_image(image)
    centre = grid.index_to_physical([(np.asarray(grid.size) - 1) / 2])[0]
    affine = sitk.Similarity3DTransform()
    affine.SetCenter(tuple(centre))
    affine.SetScale(float(rng.uniform(*config.scale)))
    angles = np.radians(rng.uniform(-config.rotation_deg, config.rotation_deg, 3))
    rotation = sitk.Euler3DTransform()
    rotation.SetCenter(tuple(centre))
    rotation.SetRotation(*[float(a) for a in angles])
    bspline = sitk.BSplineTransformInitializer(image, [config.control_points] * 3, 3)
    n = len(bspline.GetParameters())
    bspline.SetParameters(
        tuple(rng.uniform(-config.displacement_mm, config.displacement_mm, n).tolist())
    )
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(bspline)
    composite.AddTransform(rotation)
    composite.AddTransform(affine)
    return composite


def coarse_field(transform: sitk.Transform, reference: sitk.Image, step: int = 4) -> sitk.Image:
    """``transform``'s displacement (LPS mm) every ``step`` voxels of ``reference``, on a grid
    whose corners are the reference's corner voxels. The deformation is smooth (a few B-spline
    control points per axis, affine otherwise), so linear interpolation of it is within 0.05 mm
    of the exact field, and the composite transform is not evaluated at every voxel."""
    grid = Grid.from_image(reference)
    size = [max(2, -(-(s - 1) // step) + 1) for s in grid.size]
    spacing = [
        sp * max(s - 1, 1) / (c - 1) for sp, s, c in zip(grid.spacing, grid.size, size, strict=True)
    ]
    return sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, size, grid.origin, spacing, grid.direction
    )


#: Output slices resampled at a time: a slab's index arrays are held, not the volume's.
SLAB_SLICES = 16


class _SourceIndex:
    """The continuous (i, j, k) index in ``source`` that ``transform`` maps each voxel of
    ``reference`` to, one slab of reference slices at a time (:meth:`slab`), its displacement
    interpolated linearly from :func:`coarse_field` (along z, then in-plane)."""

    def __init__(self, transform: sitk.Transform, reference: sitk.Image, source: sitk.Image):
        grid, held = Grid.from_image(reference), Grid.from_image(source)
        to_index = np.linalg.inv(held.direction_matrix @ np.diag(held.spacing))
        # Displacement in source index units (linear maps commute with linear interpolation).
        field = coarse_field(transform, reference)  # held while its array view is read
        self.coarse = torch.from_numpy(sitk.GetArrayViewFromImage(field) @ to_index.T)
        self.step = torch.from_numpy(to_index @ grid.direction_matrix @ np.diag(grid.spacing))
        self.offset = torch.from_numpy(to_index @ (np.asarray(grid.origin) - held.origin))
        self.shape = grid.shape_zyx

    def slab(self, start: int, stop: int) -> torch.Tensor:
        """(stop - start, Y, X, 3) float64: the index of reference slices start..stop-1."""
        depth, rows, columns = self.shape
        cz = self.coarse.shape[0]
        k = torch.arange(start, stop, dtype=torch.float64)
        position = k * ((cz - 1) / max(depth - 1, 1))  # the coarse grid's corners are ours
        low = position.long().clamp(max=cz - 1)
        weight = (position - low)[:, None, None, None]
        high = (low + 1).clamp(max=cz - 1)
        planes = (1 - weight) * self.coarse[low] + weight * self.coarse[high]
        fine = F.interpolate(
            planes.permute(0, 3, 1, 2), (rows, columns), mode="bilinear", align_corners=True
        ).permute(0, 2, 3, 1)
        j, i = (torch.arange(n, dtype=torch.float64) for n in (rows, columns))
        fine += self.step[:, 0] * i[:, None] + self.offset  # (X, 3) broadcast over z and y
        fine += self.step[:, 1] * j[:, None, None]
        return fine + self.step[:, 2] * k[:, None, None, None]


def resample(
    transform: sitk.Transform, reference: sitk.Image, ct: sitk.Image, label_map: sitk.Image
) -> tuple[np.ndarray, np.ndarray]:
    """``ct`` (linear, -1024 HU outside it; float32) and ``label_map`` (on the CT's grid;
    nearest, 0 outside) through ``transform`` onto the grid of ``reference``, as (Z, Y, X)
    arrays. The same values as SimpleITK's ``Resample`` through the transform as a displacement
    field (linear interpolation in float64, the border's value up to half a voxel beyond it;
    nearest neighbour rounding halves up; compared voxel for voxel in test_cohort.py): the demo
    cohort is the same to the last bit, and this is 2x faster on one core (pool workers of one
    thread: 300 cases in 40-44 s instead of 69 on 2 cores). Resampled :data:`SLAB_SLICES` slices at
    a time, so its memory beyond the images is that of a slab: one case from a 523x433x280
    source took 13.2 s and 1.6 GB above the images, against SimpleITK's 17.6 s and 2.9 GB."""
    index = _SourceIndex(transform, reference, ct)
    size = ct.GetSize()
    sizes = torch.tensor(size, dtype=torch.float64)
    values = torch.from_numpy(sitk.GetArrayFromImage(ct).astype(np.float64))[None, None]
    source_labels = torch.from_numpy(sitk.GetArrayFromImage(label_map).reshape(-1))
    moved = np.empty(index.shape, np.float32)
    moved_labels = np.empty(index.shape, source_labels.numpy().dtype)
    for start in range(0, index.shape[0], SLAB_SLICES):
        stop = min(start + SLAB_SLICES, index.shape[0])
        where = index.slab(start, stop)
        inside = ((where >= -0.5) & (where < sizes - 0.5)).all(-1)
        nearest = torch.minimum(torch.floor(where + 0.5).long().clamp_(min=0), sizes.long() - 1)
        flat = (nearest[..., 2] * size[1] + nearest[..., 1]) * size[0] + nearest[..., 0]
        moved_labels[start:stop] = torch.where(inside, source_labels[flat], 0).numpy()
        where.mul_(2.0 / (sizes - 1).clamp(min=1)).sub_(1.0)  # grid_sample's -1..1 (corners)
        sampled = F.grid_sample(
            values, where[None], mode="bilinear", padding_mode="border", align_corners=True
        )[0, 0]
        moved[start:stop] = torch.where(inside, sampled, -1024.0).numpy()
    return moved, moved_labels


def deform_case(
    ct: sitk.Image,
    label_map: sitk.Image,
    rng: np.random.Generator,
    config: DeformationConfig | None = None,
) -> tuple[sitk.Image, sitk.Image]:
    """One synthetic case: deformed, z-cropped, with intensity variation.

    Returns:
        (CT as int16 HU, label map as uint8), on the same new grid (a z-range of the input's).
    """
    config = config or DeformationConfig()
    transform = random_transform(ct, rng, config)
    grid = Grid.from_image(ct)
    depth = grid.size[2]
    keep = max(8, int(round(depth * rng.uniform(*config.keep_z))))
    start = int(rng.integers(0, depth - keep + 1))
    origin = grid.index_to_physical([[0, 0, start]])[0]
    out_grid = Grid((grid.size[0], grid.size[1], keep), grid.spacing, tuple(origin), grid.direction)
    reference = out_grid.reference_image()
    values, moved_labels = resample(transform, reference, ct, label_map)
    enhancement = rng.uniform(*config.enhancement)
    values = np.where(values > 0, values * enhancement, values)
    values = values + rng.normal(0.0, rng.uniform(*config.noise_hu), values.shape)
    out = out_grid.image_from_array(np.clip(np.round(values), -1024, 3071).astype(np.int16))
    return out, out_grid.image_from_array(moved_labels.astype(np.uint8))
