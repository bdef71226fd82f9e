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
from JMIDAnomalyLib.imaging.geometry import Grid
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
    whole = plain.read_bytes()
    plain.write_bytes(whole[:-100])  # less than the header's 352 bytes short
    with pytest.raises(InputError, match="truncated"):
        read_ct(plain)
    plain.write_bytes(whole)
    read_ct(plain)


def test_a_whole_nifti_is_checked_from_its_gzip_trailer(reference_data, monkeypatch):
    """A complete .nii.gz is accepted on its trailer's length, without decompressing it: the
    expected length counts the header and extensions before the voxel data."""
    from JMIDAnomalyLib.imaging import integrity

    def no_stream_read(path):
        raise AssertionError(f"{path} was decompressed to check its length")

    monkeypatch.setattr(integrity, "_gzip_stream_size", no_stream_read)
    integrity.check_nifti_complete(reference_data.ct)
    integrity.check_nifti_complete(reference_data.ct_seg)


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


def test_analyze_never_replaces_a_file_that_is_not_its_own(
    reference_data, demo_run, tmp_path, capsys
):
    _, demo, _ = demo_run
    # TotalSegmentator's output as it comes: no label table given.
    seg = reference_data.root / "example_seg.nii.gz"
    ts = [
        "analyze",
        "--ct",
        str(reference_data.ct_small),
        "--seg",
        str(seg),
        "--explain",
        "none",
        "--bundle",
        str(demo / "training" / "liver" / "bundle"),
        "--no-scene",
    ]
    assert main([*ts, "--out", str(tmp_path / "ts")]) == 0
    scores = json.loads((tmp_path / "ts" / "scores.json").read_text())
    assert scores["organs"][0]["organ"] == "liver" and scores["organs"][0]["scores"]
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


def test_totalsegmentator_nifti_of_a_dicom_series_reads_onto_it(
    reference_data, dicom_dir, tmp_path
):
    """TotalSegmentator's NIfTI of the example DICOM series stores the same voxels with the rows
    bottom-up (direction y -1): read onto the series' grid exactly, each voxel moved, none
    interpolated; a label map half a voxel off the grid is still refused, naming the file."""
    from JMIDAnomalyLib.imaging.volumes import read_label_map

    ct = read_ct(dicom_dir)
    stored = sitk.ReadImage(str(reference_data.dicom_seg))
    assert Grid.from_image(stored).difference(Grid.from_image(ct)) is not None
    label_map, names = read_segmentation(reference_data.dicom_seg, ct)
    assert Grid.from_image(label_map).difference(Grid.from_image(ct)) is None
    np.testing.assert_array_equal(
        sitk.GetArrayViewFromImage(label_map), sitk.GetArrayViewFromImage(stored)[:, ::-1, :]
    )
    liver = {v: k for k, v in names.items()}["liver"]
    hu = sitk.GetArrayViewFromImage(ct)[sitk.GetArrayViewFromImage(label_map) == liver]
    assert 60 < np.median(hu) < 160  # contrast-enhanced liver: the map lies on the anatomy
    shifted = sitk.Image(stored)
    origin = np.asarray(stored.GetOrigin())
    shifted.SetOrigin(tuple(origin + [0.5 * stored.GetSpacing()[0], 0, 0]))
    path = tmp_path / "shifted.nii.gz"
    sitk.WriteImage(shifted, str(path))
    with pytest.raises(InputError, match="does not lie on the CT's grid") as raised:
        read_label_map(path, reference=ct)
    assert str(path) in str(raised.value)


def test_dicom_seg_round_trip_on_the_ct_grid(reference_data, dicom_dir, tmp_path):
    """A DICOM SEG written (highdicom) from the example DICOM series and its segmentation reads
    back onto the CT's grid voxel for voxel, and crops without a label table."""
    import pydicom
    from JMIDAnomalyLib.imaging.dicom_seg import write_dicom_seg
    from JMIDAnomalyLib.imaging.label_tables import select_organs
    from JMIDAnomalyLib.imaging.volumes import dicom_series_files

    ct = read_ct(dicom_dir)
    organs, names = select_organs(*read_segmentation(reference_data.dicom_seg, ct))
    assert {"liver", "spleen"} <= set(names.values())
    seg_file = write_dicom_seg(organs, names, dicom_series_files(dicom_dir), tmp_path / "seg.dcm")
    written = pydicom.dcmread(seg_file)
    source = pydicom.dcmread(dicom_series_files(dicom_dir)[0], stop_before_pixels=True)
    assert written.StudyInstanceUID == source.StudyInstanceUID
    assert written.SeriesInstanceUID != source.SeriesInstanceUID
    assert written.FrameOfReferenceUID == source.FrameOfReferenceUID
    label_map, read_names = read_segmentation(seg_file, ct)
    assert sorted(read_names.values()) == sorted(names.values())
    assert Grid.from_image(label_map).difference(Grid.from_image(ct)) is None
    by_name = {v: k for k, v in read_names.items()}
    given, got = sitk.GetArrayViewFromImage(organs), sitk.GetArrayViewFromImage(label_map)
    for value, name in names.items():
        np.testing.assert_array_equal(got == by_name[name], given == value, err_msg=name)
    folder = tmp_path / "seg_folder"
    folder.mkdir()
    shutil.copy(seg_file, folder / "SEG0001")
    out = tmp_path / "crops"
    args = ["crop", "--ct", str(dicom_dir), "--seg", str(folder), "--out", str(out)]
    assert main([*args, "--organs", "liver", "--preset", "demo"]) == 0
    assert json.loads((out / "crops.json").read_text())["crops"][0]["status"] in ("ok", "partial")


def test_dicom_out_for_pacs(reference_data, dicom_dir, demo_run, tmp_path, capsys):
    """jmid analyze on a DICOM CT with a DICOM SEG, --dicom-out: a SEG and a parametric map per
    heatmap that highdicom/pydicom read back, on the CT's slices; a NIfTI CT is refused."""
    import highdicom as hd
    import pydicom
    from JMIDAnomalyLib.imaging.dicom_seg import write_dicom_seg
    from JMIDAnomalyLib.imaging.geometry import resample_to_grid
    from JMIDAnomalyLib.imaging.label_tables import select_organs
    from JMIDAnomalyLib.imaging.volumes import dicom_series_files, read_label_map

    _, demo, _ = demo_run
    ct = read_ct(dicom_dir)
    on_ct = resample_to_grid(
        read_label_map(reference_data.dicom_seg), Grid.from_image(ct), "nearest"
    )
    files = dicom_series_files(dicom_dir)
    organs = select_organs(on_ct, reference_data.label_names())
    seg_in = write_dicom_seg(*organs, files, tmp_path / "organs.dcm")
    out = tmp_path / "out"
    args = [
        "analyze",
        "--ct",
        str(dicom_dir),
        "--seg",
        str(seg_in),
        "--bundle",
        str(demo / "training" / "liver" / "bundle"),
        "--no-scene",
        "--dicom-out",
    ]
    assert main([*args, "--out", str(out)]) == 0
    seg = hd.seg.segread(out / "dicom" / "seg.dcm")
    assert "liver" in [str(s.SegmentLabel) for s in seg.SegmentSequence]
    pmap = pydicom.dcmread(out / "dicom" / "heatmap_liver.dcm")
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert pmap.StudyInstanceUID == source.StudyInstanceUID
    assert pmap.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert int(pmap.NumberOfFrames) == len(files)
    # highdicom orders the frames by position; each frame holds the heatmap slice it lies on.
    positions = [
        tuple(round(float(v), 3) for v in f.PlanePositionSequence[0].ImagePositionPatient)
        for f in pmap.PerFrameFunctionalGroupsSequence
    ]
    slices = [
        tuple(round(float(v), 3) for v in pydicom.dcmread(f).ImagePositionPatient) for f in files
    ]
    assert sorted(positions) == sorted(slices)
    heat = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "heatmap_liver.nii.gz")))
    assert heat.max() > 0
    for frame, position in zip(pmap.pixel_array, positions, strict=True):
        np.testing.assert_allclose(frame, heat[slices.index(position)], atol=1e-5)
    nifti_ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(ct, str(nifti_ct))
    bad = [a if a != str(dicom_dir) else str(nifti_ct) for a in args]
    assert main([*bad, "--out", str(tmp_path / "out2")]) == 2
    assert "needs the CT as a DICOM series" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def _write_rtstruct(path, label_map, names, ct_files):
    """An RTSTRUCT of ``label_map`` (one ROI per label; contours from scikit-image on each
    slice), written with pydicom as a treatment-planning system would."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from skimage.measure import find_contours

    source = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    grid = Grid.from_image(label_map)
    labels = sitk.GetArrayViewFromImage(label_map)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = (
        "RTSTRUCT",
        source.StudyInstanceUID,
        generate_uid(),
    )
    ds.FrameOfReferenceUID = source.FrameOfReferenceUID
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (value, name) in enumerate(names.items(), start=1):
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = source.FrameOfReferenceUID
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber, item.ContourSequence = number, []
        for k in range(labels.shape[0]):
            padded = np.pad(labels[k] == value, 1).astype(float)
            for contour in find_contours(padded, 0.5):
                ijk = np.column_stack(
                    [contour[:, 1] - 1, contour[:, 0] - 1, np.full(len(contour), k)]
                )
                c = Dataset()
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(ijk)
                c.ContourData = [round(float(v), 3) for v in grid.index_to_physical(ijk).ravel()]
                item.ContourSequence.append(c)
        ds.ROIContourSequence.append(item)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_rtstruct_reads_onto_the_ct_grid(reference_data, dicom_dir, tmp_path):
    """Radiotherapy contours made from the example series' organs come back onto the CT grid:
    every organ's voxels within half a voxel (centroid) and Dice above 0.95."""
    from JMIDAnomalyLib.imaging.geometry import centroid_lps, resample_to_grid
    from JMIDAnomalyLib.imaging.label_tables import select_organs
    from JMIDAnomalyLib.imaging.volumes import dicom_series_files, read_label_map

    ct = read_ct(dicom_dir)
    grid = Grid.from_image(ct)
    on_ct = resample_to_grid(read_label_map(reference_data.dicom_seg), grid, "nearest")
    organs, names = select_organs(on_ct, reference_data.label_names())
    rt = _write_rtstruct(tmp_path / "rtstruct.dcm", organs, names, dicom_series_files(dicom_dir))
    label_map, read_names = read_segmentation(rt, ct)
    assert list(read_names.values()) == list(names.values())
    given, got = sitk.GetArrayViewFromImage(organs), sitk.GetArrayViewFromImage(label_map)
    for value, name in names.items():
        a, b = given == value, got == value
        dice = 2 * np.sum(a & b) / (a.sum() + b.sum())
        shift = np.linalg.norm(centroid_lps(a, grid) - centroid_lps(b, grid))
        assert dice > 0.95 and shift < 0.5 * min(grid.spacing), (name, dice, shift)
