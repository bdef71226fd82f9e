"""Files users already have: label tables where their files carry them, the usual table formats,
and input integrity (cut-off files, DICOM series with missing or unreadable slices)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from JMIDAnomalyLib.apps.cli.main import main
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.imaging.label_tables import (
    read_label_names,
    read_segmentation,
    segmentation_label_names,
)
from JMIDAnomalyLib.imaging.volumes import read_ct


def test_totalsegmentator_output_carries_its_table(reference_data, small_ct, tmp_path, capsys):
    """example_seg.nii.gz holds its label names in a NIfTI header extension (as TotalSegmentator
    writes them): crop and read it with no table given."""
    seg = reference_data.root / "example_seg.nii.gz"
    names = segmentation_label_names(seg)
    assert names[5] == "liver" and "kidney_left" in names.values() and 0 not in names
    assert names == reference_data.label_names() | {
        k: v for k, v in names.items() if k not in reference_data.label_names()
    }
    label_map, names = read_segmentation(seg, small_ct)
    assert label_map.GetSize() == small_ct.GetSize()
    out = tmp_path / "crops"
    args = ["crop", "--ct", str(reference_data.ct_small), "--seg", str(seg), "--out", str(out)]
    assert main([*args, "--organs", "liver,spleen", "--preset", "demo"]) == 0
    crops = json.loads((out / "crops.json").read_text())["crops"]
    assert [c["organ"] for c in crops] == ["liver", "spleen"]
    assert (out / "liver.nii.gz").is_file()


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("labels.csv", "id,name\n0,background\n5,liver\n1,spleen\n"),
        ("labels.tsv", "\ufeffvalue\tstructure\textra\n5\tliver\tx\n1\tspleen\ty\n"),
        ("labels.csv", "label,label_name\n5,liver\n1,spleen\n"),
        (
            "colors.ctbl",
            "# Color table file\n0 background 0 0 0 0\n1 spleen 157 108 162 255\n"
            "5 liver 221 130 101 255\n",
        ),
        ("dataset.json", '{"labels": {"background": 0, "spleen": 1, "liver": 5}}'),
    ],
)
def test_table_formats_read_to_one_table(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    assert read_label_names(path) == {5: "liver", 1: "spleen"}


def test_bad_tables_are_named(tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("organ,colour\nliver,red\n", encoding="utf-8")
    with pytest.raises(InputError, match="id column"):
        read_label_names(bad)
    with pytest.raises(InputError, match="no such label table"):
        read_label_names(tmp_path / "none.csv")


def test_slicer_segmentation_file_reads_onto_the_ct_grid(reference_data, example_ct, tmp_path):
    """A .seg.nrrd written by slicer-core from the example segmentation: names from the file,
    every organ's voxels where the label map had them."""
    from JMIDAnomalyLib.imaging.label_tables import select_organs
    from JMIDAnomalyLib.scene.mrml import image_to_volume_node, label_map_to_segmentation_node
    from slicer import vtkMRMLScene

    organs, names = select_organs(
        *read_segmentation(reference_data.ct_seg, example_ct, reference_data.labels_json)
    )
    scene = vtkMRMLScene()
    volume = image_to_volume_node(example_ct, scene, "CT")
    node = label_map_to_segmentation_node(organs, names, scene, "organs", volume)
    node.AddDefaultStorageNode()
    storage = node.GetStorageNode()
    storage.SetFileName(str(tmp_path / "organs.seg.nrrd"))
    assert storage.WriteData(node)
    label_map, read_names = read_segmentation(tmp_path / "organs.seg.nrrd", example_ct)
    assert sorted(read_names.values()) == sorted(names.values())
    given = sitk.GetArrayViewFromImage(organs)
    got = sitk.GetArrayViewFromImage(label_map)
    by_name = {v: k for k, v in read_names.items()}
    for value, name in names.items():
        np.testing.assert_array_equal(got == by_name[name], given == value, err_msg=name)


def test_cut_off_nifti_is_refused(reference_data, tmp_path, capsys):
    data = reference_data.ct.read_bytes()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 3])
    assert main(["info", "--ct", str(cut)]) == 2
    err = capsys.readouterr().err
    assert "cut.nii.gz" in err and "cut off" in err
    plain = tmp_path / "plain.nii"
    full = sitk.ReadImage(str(reference_data.ct))
    sitk.WriteImage(full, str(plain), False)
    plain.write_bytes(plain.read_bytes()[:-5000])
    with pytest.raises(InputError, match="truncated"):
        read_ct(plain)


def test_dicom_series_with_a_bad_slice_is_refused(dicom_dir, tmp_path, capsys):
    files = sorted(p for p in dicom_dir.iterdir() if p.is_file())
    truncated = tmp_path / "truncated"
    shutil.copytree(dicom_dir, truncated)
    victim = truncated / files[9].name
    victim.write_bytes(victim.read_bytes()[:2000])
    assert main(["info", "--ct", str(truncated)]) == 2
    err = capsys.readouterr().err
    assert files[9].name in err or "not uniform" in err, err
    missing = tmp_path / "missing"
    shutil.copytree(dicom_dir, missing)
    ordered = sorted(missing.iterdir(), key=lambda p: _z(p))
    ordered[9].unlink()
    with pytest.raises(InputError, match="not uniform") as info:
        read_ct(missing)
    assert "slices 9 and 10" in str(info.value)
    duplicated = tmp_path / "duplicated"
    shutil.copytree(dicom_dir, duplicated)
    import pydicom

    first, second = sorted(duplicated.iterdir(), key=lambda p: _z(p))[:2]
    ds = pydicom.dcmread(second)
    ds.ImagePositionPatient = pydicom.dcmread(first).ImagePositionPatient
    ds.save_as(second)
    with pytest.raises(InputError, match="share the position|not uniform"):
        read_ct(duplicated)


def _z(path) -> float:
    import pydicom

    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def test_analyze_never_replaces_a_file_that_is_not_its_own(demo_run, tmp_path, capsys):
    _, demo, _ = demo_run
    case = next((demo / "analysis").iterdir()).name
    cohort = demo / "cohort"
    args = [
        "analyze",
        "--ct",
        str(cohort / "images" / f"{case}.nii.gz"),
        "--seg",
        str(cohort / "segs" / f"{case}.nii.gz"),
        "--seg-labels",
        str(cohort / "labels.json"),
        "--bundle",
        str(demo / "training" / "liver" / "bundle"),
        "--explain",
        "none",
    ]
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    assert main([*args, "--out", str(mine)]) == 2
    assert "is a file" in capsys.readouterr().err and mine.read_text() == "my notes"
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    assert main([*args, "--out", str(folder)]) == 2
    assert "no scores.json" in capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["keep.txt"]
