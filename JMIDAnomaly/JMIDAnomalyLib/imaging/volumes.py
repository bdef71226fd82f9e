"""Reading and writing CT volumes and label maps with their physical geometry.

The image type of the library is :class:`SimpleITK.Image`: it carries spacing (mm), origin (mm)
and a direction matrix in ITK's LPS world. ``sitk.GetArrayFromImage`` gives arrays indexed
(z, y, x) = (K, J, I).

Supported inputs: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage
(``.mha``, ``.mhd``) and DICOM series (a folder, or any one file of the series).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.imaging.integrity import check_dicom_series, check_nifti_complete

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Single-file formats, the only ones that can be written atomically by one rename.
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")

#: A CT in Hounsfield units always has some air or fat: at least this share of voxels below -200 HU.
MIN_DARK_FRACTION = 0.005
#: The darkest plausible CT value (scanner padding values such as -3024 included).
MIN_PLAUSIBLE_HU = -4096.0
#: Median intensity above which a volume cannot be a HU CT (it is mostly soft tissue, fat or air).
MAX_PLAUSIBLE_MEDIAN_HU = 1500.0


def volume_stem(path: str | os.PathLike) -> str:
    """A volume file's name without its image suffix (``case_01.nii.gz`` -> ``case_01``); a
    DICOM folder's name as it is."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def dicom_series_files(path: str | os.PathLike) -> list[str]:
    """The slice files of a DICOM series in the order the CT is read (GDCM's, by position).

    Args:
        path: the series' folder, or one file of the series.

    Raises:
        InputError: no series, several series in the folder, fewer than 2 slices, or a series
            with missing, duplicated or unreadable slices, uneven spacing or a gantry tilt.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise InputError(path, "no DICOM series found (expected a folder of DICOM slice files)")
    if path.is_file():
        # The series the given file belongs to.
        chosen = None
        for sid in series:
            if any(Path(f).samefile(path) for f in reader.GetGDCMSeriesFileNames(str(folder), sid)):
                chosen = sid
                break
        if chosen is None:
            raise InputError(path, "this file is not part of a readable DICOM series")
    else:
        if len(series) > 1:
            raise InputError(
                path,
                f"the folder holds {len(series)} DICOM series; pass one file of the series to read",
            )
        chosen = series[0]
    files = list(reader.GetGDCMSeriesFileNames(str(folder), chosen))
    if len(files) < 2:
        raise InputError(path, "the DICOM series has fewer than 2 slices; a 3D CT is needed")
    check_dicom_series(folder, files)
    return files


def _read_dicom_series(path: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(dicom_series_files(path))
    # GDCM applies RescaleSlope/Intercept, so values are Hounsfield units for CT series.
    return reader.Execute()


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read a volume file or a DICOM series with its geometry, without CT checks.

    Args:
        path: a NIfTI/NRRD/MetaImage file, a DICOM folder, or one file of a DICOM series.

    Returns:
        The image, in ITK's LPS physical space.

    Raises:
        InputError: the path does not exist or cannot be read as an image, a NIfTI file is cut
            off, or a DICOM series has missing, duplicated or unreadable slices, uneven spacing
            or a gantry tilt (:mod:`~JMIDAnomalyLib.imaging.integrity`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    try:
        if path.is_dir() or not _is_volume_file(path):
            return _read_dicom_series(path)
        if path.name.lower().endswith((".nii", ".nii.gz")):
            check_nifti_complete(path)
        return sitk.ReadImage(str(path))
    except InputError:
        raise
    except RuntimeError as exc:  # SimpleITK reports read failures as RuntimeError
        raise InputError(path, _explain_itk_error(str(exc))) from None


def _explain_itk_error(message: str) -> str:
    """Turn an ITK exception text into one line a user can act on."""
    if "Zero-valued spacing" in message:
        return "spacing must be positive, but the header gives a zero voxel size"
    if "Unable to determine ImageIO reader" in message:
        return "not a readable image file (unknown format, or the file is corrupt or truncated)"
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    detail = next((ln for ln in reversed(lines) if "rror" in ln), lines[-1] if lines else "")
    return f"cannot be read as an image ({detail[:200]})"


def image_from_array(
    array_zyx: np.ndarray,
    spacing: tuple[float, float, float],
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    source: str = "array",
) -> sitk.Image:
    """Numpy-in entry point: wrap a (z, y, x) array with its geometry, validated.

    Args:
        array_zyx: voxel values, shape (z, y, x).
        spacing: (x, y, z) voxel size in mm; must be positive.
        origin: LPS position of voxel (0, 0, 0) in mm.
        direction: 3x3 direction cosines, row-major (LPS).
        source: a name for the array in error messages.

    Raises:
        InputError: bad shape or spacing.
    """
    array_zyx = np.asarray(array_zyx)
    if array_zyx.ndim != 3:
        raise InputError(source, f"expected a 3D (z, y, x) array, got shape {array_zyx.shape}")
    spacing_arr = np.asarray(spacing, dtype=float)
    if (
        spacing_arr.shape != (3,)
        or not np.all(np.isfinite(spacing_arr))
        or np.any(spacing_arr <= 0)
    ):
        raise InputError(source, f"spacing must be positive, got {tuple(spacing_arr.tolist())} mm")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing([float(v) for v in spacing_arr])
    image.SetOrigin([float(v) for v in origin])
    image.SetDirection([float(v) for v in direction])
    check_geometry(image, source)
    return image


def check_geometry(image: sitk.Image, source: str | os.PathLike) -> None:
    """Reject images that are not 3D scalar volumes with positive spacing.

    Raises:
        InputError: naming ``source`` and the problem.
    """
    if image.GetDimension() != 3:
        raise InputError(source, f"expected a 3D volume, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            source,
            f"expected a scalar volume, got {image.GetNumberOfComponentsPerPixel()} components "
            "per voxel (colour or vector image)",
        )
    if min(image.GetSize()) < 2:
        raise InputError(
            source, f"expected a 3D volume, got size {image.GetSize()} (a single slice)"
        )
    spacing = np.asarray(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(source, f"spacing must be positive, got {tuple(spacing.tolist())} mm")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if not np.all(np.isfinite(direction)) or abs(abs(np.linalg.det(direction)) - 1) > 1e-3:
        raise InputError(source, "the direction matrix is not a rotation (corrupt orientation)")


def validate_ct(image: sitk.Image, source: str | os.PathLike) -> None:
    """Check that ``image`` is a 3D scalar CT in Hounsfield units.

    Checks, in order: dimension and components, spacing, finite voxels, and intensities that a
    CT in HU has (some air or fat below -200 HU, a median below 1500 HU, nothing below -4096).
    An MR volume or raw stored values without RescaleSlope/Intercept fail the HU checks.

    Raises:
        InputError: naming ``source`` and the problem.
    """
    check_geometry(image, source)
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise InputError(source, f"{bad} voxels are NaN or infinite")
    # A strided sample keeps this fast on large CTs; the statistics need no more.
    sample = values.ravel()[:: max(1, values.size // 2_000_000)].astype(np.float32)
    dark_fraction = float(np.mean(sample < -200))
    median = float(np.median(sample))
    low = float(values.min())
    if low < MIN_PLAUSIBLE_HU:
        raise InputError(
            source, f"minimum intensity {low:g} is below {MIN_PLAUSIBLE_HU:g}: not Hounsfield units"
        )
    if dark_fraction < MIN_DARK_FRACTION or median > MAX_PLAUSIBLE_MEDIAN_HU:
        raise InputError(
            source,
            "intensities do not look like a CT in Hounsfield units "
            f"(median {median:g}, {100 * dark_fraction:.2f}% of voxels below -200 HU): "
            "an MR volume, or stored values without RescaleSlope/RescaleIntercept applied?",
        )


def read_ct(path: str | os.PathLike) -> sitk.Image:
    """Read and validate a CT volume; see :func:`read_image` and :func:`validate_ct`.

    Returns:
        The CT as a float32 image in HU with its geometry (LPS).
    """
    image = read_image(path)
    validate_ct(image, path)
    return sitk.Cast(image, sitk.sitkFloat32)


def read_label_map(
    path: str | os.PathLike, reference: sitk.Image | None = None, tolerance_mm: float = 1e-3
) -> sitk.Image:
    """Read an integer label map; optionally place it on ``reference``'s grid.

    A label map holding the reference's voxels in another order (axes permuted or reversed, as
    TotalSegmentator's NIfTI of a DICOM series stores them) is reordered onto its grid exactly;
    any other grid, a part of the CT's included (it would cut organs off unseen), is refused.

    Raises:
        InputError: not a 3D integer volume, negative labels, or voxels off the CT's grid.
    """
    image = read_image(path)
    check_geometry(image, path)
    array = sitk.GetArrayViewFromImage(image)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(path, "a label map must hold whole numbers (got fractional values)")
    if array.min() < 0:
        raise InputError(path, "a label map cannot hold negative labels")
    image = sitk.Cast(image, sitk.sitkUInt16 if array.max() > 255 else sitk.sitkUInt8)
    if reference is not None:
        from JMIDAnomalyLib.imaging.geometry import Grid, place_on_grid

        grid = Grid.from_image(reference)
        placed = place_on_grid(image, grid, whole=True, tolerance_mm=tolerance_mm)
        if placed is None:
            problem = grid.difference(Grid.from_image(image), tolerance_mm)
            raise InputError(path, f"the label map does not lie on the CT's grid: {problem}")
        image = placed
    return image


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` atomically (temporary name, then rename); the format follows the suffix."""
    path = Path(path)
    if not path.name.lower().endswith(WRITE_SUFFIXES):
        raise InputError(path, f"unsupported output format; use one of {', '.join(WRITE_SUFFIXES)}")
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path
