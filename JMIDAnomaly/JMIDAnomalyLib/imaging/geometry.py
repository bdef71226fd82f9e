"""Physical geometry: grids, crops to physical boxes, resampling, and mapping back.

Conventions:
- World coordinates are ITK's LPS, in mm. Slicer's RAS is ``diag(-1, -1, 1)`` times LPS.
- A :class:`Grid` is given in ITK order: ``size`` and ``spacing`` are (x, y, z) = (I, J, K);
  numpy arrays from SimpleITK are indexed (z, y, x) = (K, J, I).
- The origin is the centre of voxel (0, 0, 0). Arrays are never flipped or rotated by hand:
  every change of grid goes through the affine (``sitk.Resample``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.errors import InputError

_INTERPOLATORS = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "label_gaussian": sitk.sitkLabelGaussian,
}


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid in physical space (ITK axis order, LPS mm).

    Attributes:
        size: voxels along (x, y, z).
        spacing: voxel size along (x, y, z) in mm.
        origin: physical (LPS) position of the centre of voxel (0, 0, 0), mm.
        direction: 3x3 direction cosines, row-major; column c is the physical direction of axis c.
    """

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @classmethod
    def from_image(cls, image: sitk.Image) -> Grid:
        """The grid of a SimpleITK image."""
        return cls(
            tuple(int(v) for v in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grid:
        """A grid from :meth:`to_dict`'s mapping."""
        return cls(
            tuple(int(v) for v in data["size"]),
            tuple(float(v) for v in data["spacing"]),
            tuple(float(v) for v in data["origin"]),
            tuple(float(v) for v in data["direction"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """The grid as JSON-ready lists."""
        return {k: list(v) for k, v in asdict(self).items()}

    @property
    def direction_matrix(self) -> np.ndarray:
        """The direction cosines as a 3x3 array; column c is axis c's physical direction."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """The numpy array shape (z, y, x) of an image on this grid."""
        return (self.size[2], self.size[1], self.size[0])

    def affine(self) -> np.ndarray:
        """4x4 matrix from continuous index (i, j, k, 1) to LPS mm."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix @ np.diag(self.spacing)
        matrix[:3, 3] = self.origin
        return matrix

    def index_to_physical(self, ijk: np.ndarray) -> np.ndarray:
        """Map (N, 3) continuous indices (i, j, k) to (N, 3) LPS points in mm."""
        ijk = np.atleast_2d(np.asarray(ijk, dtype=float))
        return ijk @ (self.direction_matrix @ np.diag(self.spacing)).T + np.asarray(self.origin)

    def physical_to_index(self, points: np.ndarray) -> np.ndarray:
        """Map (N, 3) LPS points in mm to (N, 3) continuous indices (i, j, k)."""
        points = np.atleast_2d(np.asarray(points, dtype=float))
        inverse = np.linalg.inv(self.direction_matrix @ np.diag(self.spacing))
        return (points - np.asarray(self.origin)) @ inverse.T

    def reference_image(self, pixel_type: int = sitk.sitkUInt8) -> sitk.Image:
        """An empty image on this grid, for use as a resampling reference."""
        image = sitk.Image([int(v) for v in self.size], pixel_type)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def image_from_array(self, array_zyx: np.ndarray) -> sitk.Image:
        """Wrap a (z, y, x) array as an image on this grid."""
        if tuple(array_zyx.shape) != self.shape_zyx:
            raise ValueError(f"array shape {array_zyx.shape} does not match grid {self.shape_zyx}")
        image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def resized(self, size_xyz: tuple[int, int, int]) -> Grid:
        """The grid covering the same physical extent (voxel edges) with ``size_xyz`` voxels."""
        old_spacing = np.asarray(self.spacing)
        new_spacing = old_spacing * np.asarray(self.size) / np.asarray(size_xyz, dtype=float)
        origin = np.asarray(self.origin) + self.direction_matrix @ (
            0.5 * (new_spacing - old_spacing)
        )
        return Grid(
            tuple(int(v) for v in size_xyz),
            tuple(float(v) for v in new_spacing),
            tuple(float(v) for v in origin),
            self.direction,
        )

    def difference(self, other: Grid, tolerance_mm: float = 1e-3) -> str | None:
        """Describe how ``other`` differs from this grid, or None when they match."""
        if self.size != other.size:
            return f"size {other.size} differs from {self.size}"
        if not np.allclose(self.spacing, other.spacing, atol=tolerance_mm):
            return f"spacing {other.spacing} differs from {self.spacing}"
        if not np.allclose(self.origin, other.origin, atol=tolerance_mm):
            return f"origin {other.origin} differs from {self.origin}"
        if not np.allclose(self.direction, other.direction, atol=1e-4):
            return "direction matrices differ"
        return None

    def voxels_within(self, other: Grid, tolerance_mm: float = 1e-3, whole: bool = False) -> bool:
        """Whether every voxel centre of this grid is a voxel centre of ``other``: the same
        lattice, a sub-extent of it (``whole``: all of it), with its axes in another order or
        reversed (a NIfTI written from a DICOM series often stores the rows bottom-up). A label
        map on such a grid lies on ``other`` exactly, with no interpolation."""
        # Index of ``other`` as a function of this grid's index: matrix @ ijk + offset, which
        # must be a signed permutation (spacings equal, axes parallel) ...
        matrix = np.linalg.inv(other.direction_matrix @ np.diag(other.spacing)) @ (
            self.direction_matrix @ np.diag(self.spacing)
        )
        if not np.allclose(np.abs(matrix), np.abs(np.round(matrix)), atol=1e-4) or not np.all(
            np.abs(np.round(matrix)).sum(0) == 1
        ):
            return False
        # ... taking the corner voxels (so every voxel, the map being affine) onto voxels.
        corners = np.array(np.meshgrid(*[(0, n - 1) for n in self.size])).reshape(3, -1).T
        mapped = other.physical_to_index(self.index_to_physical(corners))
        voxels = np.round(mapped)
        tolerance = tolerance_mm / min(other.spacing)
        low, high = voxels.min(0), voxels.max(0)
        last = np.asarray(other.size) - 1
        inside = np.all(low >= 0) and np.all(high <= last)
        if whole:
            inside = np.all(low == 0) and np.all(high == last)
        return bool(np.allclose(mapped, voxels, atol=tolerance) and inside)


@dataclass(frozen=True)
class CropRecord:
    """Where a crop came from, enough to map any array on the crop back to the source exactly.

    Attributes:
        source: the grid of the full CT.
        crop: the grid of the crop as stored (after any resampling).
        index_lower: first source voxel (i, j, k) of the crop region, inclusive.
        index_upper: last source voxel (i, j, k) of the crop region, inclusive.
        clipped: per axis (i, j, k), whether the requested region ran past the source volume.
    """

    source: Grid
    crop: Grid
    index_lower: tuple[int, int, int]
    index_upper: tuple[int, int, int]
    clipped: tuple[bool, bool, bool] = field(default=(False, False, False))

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values."""
        return {
            "source": self.source.to_dict(),
            "crop": self.crop.to_dict(),
            "index_lower": list(self.index_lower),
            "index_upper": list(self.index_upper),
            "clipped": list(self.clipped),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CropRecord:
        """A record from :meth:`to_dict`'s mapping."""
        return cls(
            Grid.from_dict(data["source"]),
            Grid.from_dict(data["crop"]),
            tuple(int(v) for v in data["index_lower"]),
            tuple(int(v) for v in data["index_upper"]),
            tuple(bool(v) for v in data.get("clipped", (False, False, False))),
        )

    def with_crop_grid(self, crop: Grid) -> CropRecord:
        """The same source region, stored on another crop grid (after resampling)."""
        return CropRecord(self.source, crop, self.index_lower, self.index_upper, self.clipped)


def physical_box_to_index_region(
    grid: Grid, lower_lps: np.ndarray, upper_lps: np.ndarray, margin_mm: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The index region of ``grid`` covering an axis-aligned physical (LPS) box plus a margin.

    Returns:
        (lower, upper, clipped): inclusive voxel indices (i, j, k) clamped to the grid, and per
        axis whether clamping cut the requested region.
    """
    lower_lps = np.asarray(lower_lps, dtype=float) - margin_mm
    upper_lps = np.asarray(upper_lps, dtype=float) + margin_mm
    corners = np.array(
        [[(lower_lps, upper_lps)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)]
    )
    index = grid.physical_to_index(corners)
    lower = np.floor(index.min(axis=0) + 1e-6).astype(int)
    upper = np.ceil(index.max(axis=0) - 1e-6).astype(int)
    size = np.asarray(grid.size)
    clipped = (lower < 0) | (upper > size - 1)
    lower = np.clip(lower, 0, size - 1)
    upper = np.clip(upper, 0, size - 1)
    return lower, upper, clipped


def crop_index_region(
    image: sitk.Image,
    lower: np.ndarray,
    upper: np.ndarray,
    clipped: tuple[bool, bool, bool] = (False, False, False),
) -> tuple[sitk.Image, CropRecord]:
    """Extract voxels ``lower..upper`` (inclusive, (i, j, k)); the crop keeps its geometry."""
    lower = np.asarray(lower, dtype=int)
    upper = np.asarray(upper, dtype=int)
    if np.any(upper < lower):
        raise InputError("crop", f"empty crop region {lower.tolist()}..{upper.tolist()}")
    cropped = sitk.RegionOfInterest(
        image, [int(v) for v in upper - lower + 1], [int(v) for v in lower]
    )
    record = CropRecord(
        Grid.from_image(image),
        Grid.from_image(cropped),
        tuple(int(v) for v in lower),
        tuple(int(v) for v in upper),
        tuple(bool(v) for v in clipped),
    )
    return cropped, record


def crop_to_physical_box(
    image: sitk.Image, lower_lps: np.ndarray, upper_lps: np.ndarray, margin_mm: float = 0.0
) -> tuple[sitk.Image, CropRecord]:
    """Crop ``image`` to the voxels covering an LPS box (mm) grown by ``margin_mm``.

    Works for any direction matrix: the box's eight corners are mapped to index space and the
    enclosing index region is taken. Parts outside the image are clipped (see the record).
    """
    grid = Grid.from_image(image)
    lower, upper, clipped = physical_box_to_index_region(grid, lower_lps, upper_lps, margin_mm)
    return crop_index_region(image, lower, upper, clipped)


def resample_to_grid(
    image: sitk.Image, grid: Grid, interpolator: str = "linear", default_value: float = 0.0
) -> sitk.Image:
    """Resample ``image`` onto ``grid`` through the physical space (no array flips)."""
    if interpolator not in _INTERPOLATORS:
        raise ValueError(f"interpolator must be one of {sorted(_INTERPOLATORS)}")
    return sitk.Resample(
        image,
        grid.reference_image(),
        sitk.Transform(),
        _INTERPOLATORS[interpolator],
        float(default_value),
        image.GetPixelID(),
    )


def place_on_grid(
    label_map: sitk.Image, grid: Grid, whole: bool = False, tolerance_mm: float = 1e-3
) -> sitk.Image | None:
    """``label_map`` on ``grid``: as it is when it already lies there; its voxels moved there
    exactly (nearest neighbour, background outside) when they are voxels of ``grid``
    (:meth:`Grid.voxels_within`, ``whole``: all of them); else None."""
    own = Grid.from_image(label_map)
    if grid.difference(own, tolerance_mm) is None:
        return label_map
    if not own.voxels_within(grid, tolerance_mm, whole):
        return None
    return resample_to_grid(label_map, grid, "nearest")


def resample_to_size(
    image: sitk.Image, size_zyx: tuple[int, int, int], interpolator: str = "linear"
) -> sitk.Image:
    """Resample to ``size_zyx`` voxels over the same physical extent (edges preserved).

    Args:
        size_zyx: the target array shape (z, y, x), as the classifier's grid is written.
    """
    target = Grid.from_image(image).resized((size_zyx[2], size_zyx[1], size_zyx[0]))
    return resample_to_grid(image, target, interpolator)


def map_to_source(
    array_zyx: np.ndarray,
    record: CropRecord,
    interpolator: str = "linear",
    default_value: float = 0.0,
) -> np.ndarray:
    """Map an array computed on a crop back onto the source CT grid.

    Only the source region the crop covers is resampled; the rest is ``default_value``.

    Args:
        array_zyx: values on ``record.crop``, shape ``record.crop.shape_zyx`` (z, y, x).
        record: the crop record.
        interpolator: 'linear' for maps, 'nearest' for labels.

    Returns:
        float32 array of shape ``record.source.shape_zyx`` (z, y, x) on the source grid.
    """
    crop_image = record.crop.image_from_array(np.asarray(array_zyx, dtype=np.float32))
    source = record.source
    lower, upper, _ = physical_box_to_index_region(source, *_grid_physical_bounds(record.crop))
    sub = Grid(
        tuple(int(v) for v in upper - lower + 1),
        source.spacing,
        tuple(float(v) for v in source.index_to_physical(lower)[0]),
        source.direction,
    )
    resampled = sitk.GetArrayFromImage(
        resample_to_grid(crop_image, sub, interpolator, default_value)
    )
    out = np.full(source.shape_zyx, default_value, dtype=np.float32)
    out[lower[2] : upper[2] + 1, lower[1] : upper[1] + 1, lower[0] : upper[0] + 1] = resampled
    return out


def axis_aligned_grid(grid: Grid, size_xyz: tuple[int, int, int]) -> Grid:
    """A grid with ``size_xyz`` voxels and LPS-aligned axes (identity direction) covering the
    axis-aligned physical box of ``grid``'s voxel edges.

    Crops are made on such grids, so a model sees the anatomy the same way up whatever the CT's
    stored orientation (RAS, LPS, LAS, oblique): no array is ever flipped by hand.
    """
    low, high = _grid_physical_bounds(grid)
    spacing = (high - low) / np.asarray(size_xyz, dtype=float)
    return Grid(
        tuple(int(v) for v in size_xyz),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in low + spacing / 2),
        tuple(float(v) for v in np.eye(3).ravel()),
    )


def _grid_physical_bounds(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned LPS bounds of a grid's voxel edges."""
    size = np.asarray(grid.size)
    corners = np.array(
        [
            [(-0.5, s - 0.5)[b] for s, b in zip(size, bits, strict=True)]
            for bits in np.ndindex(2, 2, 2)
        ]
    )
    points = grid.index_to_physical(corners)
    return points.min(axis=0), points.max(axis=0)


def centroid_lps(mask_zyx: np.ndarray, grid: Grid, weights: bool = False) -> np.ndarray:
    """Physical (LPS) centroid of a (z, y, x) mask, or of a non-negative map if ``weights``."""
    values = (
        np.asarray(mask_zyx, dtype=float) if weights else (np.asarray(mask_zyx) > 0).astype(float)
    )
    total = values.sum()
    if total <= 0:
        raise ValueError("empty mask has no centroid")
    kji = np.indices(values.shape).reshape(3, -1)
    mean_kji = (kji * values.reshape(1, -1)).sum(axis=1) / total
    return grid.index_to_physical(mean_kji[::-1])[0]


def hot_spot_lps(values_zyx: np.ndarray, grid: Grid, fraction: float = 0.05) -> np.ndarray | None:
    """Physical (LPS) centroid of the top ``fraction`` of a map's positive voxels (where a
    heatmap points); None when the map has no positive value."""
    values = np.asarray(values_zyx)
    positive = values[values > 0]
    if positive.size == 0:
        return None
    return centroid_lps(values >= np.quantile(positive, 1.0 - fraction), grid)
