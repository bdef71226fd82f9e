"""Input integrity: files cut off in transfer and DICOM series with missing or bad slices.

Readers happily return what is there: ITK reads a ``.nii.gz`` cut off at a third of its length
as a whole volume whose missing part is 0, and GDCM sorts a series with a missing or unreadable
slice into fewer slices with a wrong spacing. These checks run before an image is used:

- :func:`check_nifti_complete`: the voxel data a NIfTI header announces is all there (for
  ``.nii.gz``, the gzip trailer's length, then the stream itself when that looks wrong);
- :func:`check_dicom_series`: every file of the series could be read, no slice position is
  duplicated, the slices are evenly spaced along the slice normal (a gap names the slices around
  it), and there is no gantry tilt (positions not along the normal). Series like these are
  refused with the reason rather than resampled: a missing slice in a CT used for training or
  reading should be fixed at the source.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from JMIDAnomalyLib.common.errors import InputError

#: Relative deviation of one slice gap from the median gap that counts as non-uniform.
SPACING_TOLERANCE = 0.01
#: Largest angle (degrees) between the slice normal and the slice-to-slice direction.
MAX_TILT_DEGREES = 0.5


def check_nifti_complete(path: str | os.PathLike) -> None:
    """Refuse a NIfTI file (``.nii`` or ``.nii.gz``) holding less voxel data than its header says.

    Raises:
        InputError: naming the file, with how much of the data is there.
    """
    try:
        import nibabel as nib  # reads the header only
    except ImportError:  # Slicer before its dependencies are installed: ITK reads as before
        return

    path = Path(path)
    try:
        image = nib.load(str(path))
    except Exception:  # noqa: BLE001 - no NIfTI header at all: the image reader says why
        return
    # The data's offset in the file: a loaded image's header says 0 (nibabel resets it).
    offset = int(getattr(image.dataobj, "offset", 0))
    header = image.header
    expected = offset + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
    if not path.name.lower().endswith(".gz"):
        size = path.stat().st_size
        if size < expected:
            raise InputError(path, f"the file is truncated: {size} of {expected} bytes")
        return
    with path.open("rb") as f:
        f.seek(-4, os.SEEK_END)
        (isize,) = struct.unpack("<I", f.read(4))
    if isize == expected % 2**32:
        return  # the usual case, read from the trailer alone
    total = _gzip_stream_size(path)  # the trailer looks wrong: read the stream to be sure
    if total < expected:
        raise InputError(
            path,
            f"the compressed file is cut off: it holds {total} of the {expected} bytes its "
            "header announces (an interrupted copy or download?)",
        )


def _gzip_stream_size(path: Path) -> int:
    """Decompressed size of a gzip file; InputError when the stream is cut off or corrupt."""
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                total += len(chunk)
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(
            path,
            f"the compressed file is cut off or corrupt after {total} bytes ({exc})",
        ) from None
    return total


def check_dicom_series(folder: Path, files: list[str]) -> None:
    """Refuse a DICOM series that GDCM would read with wrong geometry.

    Args:
        folder: the series' folder.
        files: the slice files GDCM sorted into the series.

    Raises:
        InputError: an unreadable slice file of the series, a duplicated position, an uneven
            spacing (naming the gap), or a gantry tilt.
    """
    import pydicom  # pydicom 3: headers only (stop_before_pixels)

    listed = {str(Path(f).resolve()) for f in files}
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    for candidate in sorted(p for p in folder.iterdir() if p.is_file()):
        if str(candidate.resolve()) in listed:
            continue
        try:
            header = pydicom.dcmread(candidate, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - not a DICOM file: not part of the series
            continue
        if str(getattr(header, "SeriesInstanceUID", "")) == series_uid:
            raise InputError(
                candidate, "this slice of the series cannot be read (a truncated or corrupt file)"
            )
    positions, normal = _positions(files, pydicom)
    _check_spacing(folder, positions, normal)


def _positions(files: list[str], pydicom) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) ImagePositionPatient of the slices in GDCM's order, and the slice normal."""
    points, normal = [], None
    for name in files:
        try:
            header = pydicom.dcmread(name, stop_before_pixels=True)
            points.append([float(v) for v in header.ImagePositionPatient])
            if normal is None:
                row, col = np.reshape([float(v) for v in header.ImageOrientationPatient], (2, 3))
                normal = np.cross(row, col)
        except Exception as exc:  # noqa: BLE001 - any header problem names the file
            raise InputError(name, f"slice header cannot be read ({exc})") from None
    return np.asarray(points), normal / np.linalg.norm(normal)


def _check_spacing(folder: Path, positions: np.ndarray, normal: np.ndarray) -> None:
    along = positions @ normal
    order = np.argsort(along)
    along, positions = along[order], positions[order]
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise InputError(
            folder,
            f"two slices share the position {along[k]:.2f} mm (slices "
            f"{k + 1} and {k + 2}): a duplicated slice",
        )
    median = float(np.median(gaps))
    uneven = np.flatnonzero(np.abs(gaps - median) > SPACING_TOLERANCE * median)
    if len(uneven):
        k = int(uneven[0])
        raise InputError(
            folder,
            f"slice spacing is not uniform: {median:.2f} mm, but {gaps[k]:.2f} mm between slices "
            f"{k + 1} and {k + 2} (at {along[k]:.2f} and {along[k + 1]:.2f} mm along the slice "
            "normal): a slice is missing or out of place",
        )
    steps = np.diff(positions, axis=0)
    cosine = np.abs(steps @ normal) / np.linalg.norm(steps, axis=1)
    tilt = float(np.degrees(np.arccos(np.clip(cosine.min(), -1.0, 1.0))))
    if tilt > MAX_TILT_DEGREES:
        raise InputError(
            folder,
            f"gantry tilt of {tilt:.1f} degrees: the slices are not stacked "
            "along their normal; resample the series first",
        )
