"""Random smooth deformations of a real CT and its label map (synthetic training cases).

Used to derive many plausible cases from one real CT: the tiny nnU-Net test model and the demo
cohort. The deformation is one transform (scaling and a small rotation about the volume
centre, plus a smooth B-spline field), applied to the CT (linear) and the label map (nearest)
alike, so the labels stay on the anatomy. A z-range crop and intensity changes (enhancement
level, noise) complete a case.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

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


def displacement_field(
    transform: sitk.Transform, reference: sitk.Image, step: int = 4
) -> sitk.Transform:
    """``transform`` as a displacement field on the grid of ``reference``, evaluated every
    ``step`` voxels and interpolated linearly in between. The deformation is smooth (a few
    B-spline control points per axis, affine otherwise), so the field is within 0.05 mm of the
    exact one, while the CT and the label map are each resampled through a cheap field lookup
    instead of evaluating the composite transform at every voxel (about 4x faster per case)."""
    grid = Grid.from_image(reference)
    size = [max(2, -(-(s - 1) // step) + 1) for s in grid.size]
    spacing = [
        sp * max(s - 1, 1) / (c - 1) for sp, s, c in zip(grid.spacing, grid.size, size, strict=True)
    ]
    coarse = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, size, grid.origin, spacing, grid.direction
    )
    fine = sitk.Resample(
        coarse,
        reference,
        sitk.Transform(),
        sitk.sitkLinear,
        0.0,
        sitk.sitkVectorFloat64,
    )
    return sitk.DisplacementFieldTransform(fine)


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
    field = displacement_field(transform, reference)
    moved_ct = sitk.Resample(ct, reference, field, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    moved_seg = sitk.Resample(
        label_map, reference, field, sitk.sitkNearestNeighbor, 0, label_map.GetPixelID()
    )
    values = sitk.GetArrayFromImage(moved_ct)
    enhancement = rng.uniform(*config.enhancement)
    values = np.where(values > 0, values * enhancement, values)
    values = values + rng.normal(0.0, rng.uniform(*config.noise_hu), values.shape)
    out = out_grid.image_from_array(np.clip(np.round(values), -1024, 3071).astype(np.int16))
    return out, sitk.Cast(moved_seg, sitk.sitkUInt8)
