"""CT input: every format reads to one geometry; bad input gets a clear message and no output."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import SimpleITK as sitk
from JMIDAnomalyLib.apps.cli.main import main
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.imaging.geometry import Grid
from JMIDAnomalyLib.imaging.volumes import image_from_array, read_ct, read_label_map, write_image


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_formats_round_trip_voxels_and_geometry(small_ct, tmp_path, suffix):
    path = write_image(sitk.Cast(small_ct, sitk.sitkInt16), tmp_path / f"ct{suffix}")
    again = read_ct(path)
    assert Grid.from_image(again).difference(Grid.from_image(small_ct), 1e-4) is None
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(again), sitk.GetArrayViewFromImage(small_ct)
    )
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary files left"


def test_dicom_series_reads_in_hounsfield_units(dicom_dir):
    ct = read_ct(dicom_dir)
    assert ct.GetSize() == (512, 512, 20)
    values = sitk.GetArrayViewFromImage(ct)
    assert values.min() == -1024  # RescaleIntercept applied


def _write_mha(path, spacing: str) -> None:
    data = np.full((5, 6, 7), -1000, np.int16)
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 7 6 5\n"
        f"ElementSpacing = {spacing}\nElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode() + data.tobytes())


def _bad_inputs(tmp_path, reference_data, small_ct):
    """name -> (path, words the message must contain)."""
    cases = {}
    p = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.Image([16, 16], sitk.sitkInt16), str(p))
    cases["2d"] = (p, "expected a 3D volume")
    p = tmp_path / "single_slice.nrrd"
    sitk.WriteImage(sitk.Image([16, 16, 1], sitk.sitkInt16), str(p))
    cases["single slice"] = (p, "single slice")
    p = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3), str(p))
    cases["vector"] = (p, "scalar volume")
    p = tmp_path / "nan.mha"
    array = sitk.GetArrayFromImage(small_ct)
    array[3, 4, 5] = np.nan
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(small_ct)
    sitk.WriteImage(image, str(p))
    cases["nan"] = (p, "NaN or infinite")
    p = tmp_path / "zero_spacing.mha"
    _write_mha(p, "0 1 1")
    cases["zero spacing"] = (p, "spacing must be positive")
    cases["mr"] = (reference_data.mr_small, "Hounsfield")
    p = tmp_path / "raw_values.nii.gz"
    raw = sitk.Cast(small_ct + 1024, sitk.sitkUInt16)  # stored values, RescaleIntercept not applied
    sitk.WriteImage(raw, str(p))
    cases["unrescaled"] = (p, "RescaleIntercept")
    p = tmp_path / "corrupt.nii.gz"
    p.write_bytes(b"\x1f\x8b" + b"not an image" * 20)
    cases["corrupt"] = (p, "not a readable image file")
    cases["missing"] = (tmp_path / "nowhere.nii.gz", "no such file")
    p = tmp_path / "empty_dicom"
    p.mkdir()
    cases["empty folder"] = (p, "no DICOM series")
    return cases


BAD = [
    "2d",
    "single slice",
    "vector",
    "nan",
    "zero spacing",
    "mr",
    "unrescaled",
    "corrupt",
    "missing",
    "empty folder",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_ct_is_rejected_with_its_name_and_nothing_is_written(
    case, tmp_path, reference_data, small_ct, capsys
):
    (tmp_path / "in").mkdir()
    path, words = _bad_inputs(tmp_path / "in", reference_data, small_ct)[case]
    with pytest.raises(InputError) as raised:
        read_ct(path)
    assert str(path) in str(raised.value) and words in str(raised.value)

    out_dir = tmp_path / "out"
    status = main(["scene", "--ct", str(path), "--out", str(out_dir / "scene.mrb")])
    err = capsys.readouterr().err
    assert status == 2
    assert str(path) in err and words in err
    assert "Traceback" not in err
    assert not out_dir.exists() or not any(out_dir.iterdir()), (
        "nothing may be written for bad input"
    )


def test_numpy_entry_point_rejects_negative_spacing():
    with pytest.raises(InputError, match="spacing must be positive"):
        image_from_array(np.zeros((4, 4, 4)), spacing=(1.0, -2.0, 1.0), source="test array")
    image = image_from_array(np.zeros((4, 5, 6)), spacing=(0.5, 0.6, 2.0), origin=(1, 2, 3))
    assert image.GetSize() == (6, 5, 4) and image.GetSpacing() == (0.5, 0.6, 2.0)


def test_label_map_on_another_grid_is_rejected(reference_data, example_ct, small_ct):
    with pytest.raises(InputError, match="does not lie on the CT's grid"):
        read_label_map(reference_data.ct_small_seg, reference=example_ct)
    assert (
        read_label_map(reference_data.ct_small_seg, reference=small_ct).GetSize()
        == small_ct.GetSize()
    )


def test_cli_reports_bad_input_without_traceback(jmid_command, reference_data, tmp_path):
    result = subprocess.run(
        [*jmid_command, "info", "--ct", str(reference_data.mr_small)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert str(reference_data.mr_small) in result.stderr and "Hounsfield" in result.stderr
    assert "Traceback" not in result.stderr


def test_outputs_get_ordinary_permissions(small_ct, tmp_path):
    import os

    mask = os.umask(0)
    os.umask(mask)
    path = write_image(small_ct, tmp_path / "ct.nrrd")
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
