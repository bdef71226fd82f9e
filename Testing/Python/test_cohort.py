"""The demo cohort: deterministic, findings inside their organs, reports that label back exactly."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from JMIDAnomalyLib.common.organs import TOTALSEGMENTATOR_ORGANS
from JMIDAnomalyLib.demo.cohort import build_cohort
from JMIDAnomalyLib.imaging.geometry import Grid
from JMIDAnomalyLib.labels.labeling import LabelOptions, label_reports

CASES = 16


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, reference_data):
    out = tmp_path_factory.mktemp("cohort")
    summary = build_cohort(out, cases=CASES, seed=7, label_noise=0.0)
    return out, summary


def read_reports(root):
    with (root / "reports.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_same_seed_same_cohort(cohort, tmp_path):
    root, _ = cohort
    again = tmp_path / "again"
    build_cohort(again, cases=4, seed=7, label_noise=0.0)
    assert read_reports(again) == read_reports(root)[:4]
    for case in ("case_0001", "case_0004"):
        for folder in ("images", "segs", "findings"):
            a = sitk.ReadImage(str(root / folder / f"{case}.nii.gz"))
            b = sitk.ReadImage(str(again / folder / f"{case}.nii.gz"))
            np.testing.assert_array_equal(
                sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)
            )
    other = tmp_path / "other"
    build_cohort(other, cases=4, seed=8, label_noise=0.0)
    assert read_reports(other) != read_reports(root)[:4]


def test_every_finding_lies_inside_its_organ(cohort):
    root, summary = cohort
    truth = json.loads((root / "truth.json").read_text())
    names = {int(k): v for k, v in json.loads((root / "labels.json").read_text()).items()}
    organ_values = {}
    for value, structure in names.items():
        organ, side = TOTALSEGMENTATOR_ORGANS[structure]
        organ_values[(organ, side)] = value
    planted = [(r["case_id"], f) for r in truth for f in r["findings"]]
    assert len(planted) >= 6 and summary["cases_with_findings"] >= CASES // 4
    for case, finding in planted:
        seg = sitk.ReadImage(str(root / "segs" / f"{case}.nii.gz"))
        labels = sitk.GetArrayFromImage(seg)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "findings" / f"{case}.nii.gz")))
        region = mask == finding["label"]
        organ = labels == organ_values[(finding["organ"], finding["side"])]
        assert region.any(), (case, finding)
        assert np.mean(organ[region]) >= 0.8, (case, finding, float(np.mean(organ[region])))
        if finding["size_mm"]:  # the recorded centre is inside the organ
            index = np.round(
                Grid.from_image(seg).physical_to_index([finding["centre_lps"]])[0]
            ).astype(int)
            assert organ[index[2], index[1], index[0]], (case, finding)


#: Findings that put new tissue in place of the organ's (the others add to its attenuation).
REPLACING = {"cyst", "calcification", "gallstone", "pancreatic_duct_dilation"}


def test_planted_tissue_keeps_the_ct_noise(cohort):
    """A cyst, stone or dilated duct carries the CT's noise, as real ones do, never one flat
    value (before, every voxel of a planted cyst had the same HU: 0.0 HU standard deviation
    against about 20 HU in the liver around it), and keeps its planted attenuation."""
    root, _ = cohort
    truth = json.loads((root / "truth.json").read_text())
    checked = 0
    for record in truth:
        case = record["case_id"]
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "images" / f"{case}.nii.gz")))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "findings" / f"{case}.nii.gz")))
        for finding in record["findings"]:
            values = ct[mask == finding["label"]].astype(float)
            if finding["cls"] not in REPLACING or len(values) < 8:
                continue
            assert values.std() > 3.0, (case, finding, values.std())
            if finding["cls"] == "cyst":  # planted at 0-15 HU
                assert -10 <= np.median(values) <= 25, (case, finding, np.median(values))
            checked += 1
    assert checked >= 2


def _liver_planter(example_ct, example_seg, label_names, seed: int):
    """A planter on the real example CT's liver: (CT array, liver mask, finding mask, planter)."""
    from JMIDAnomalyLib.demo.planting import Planter

    array = sitk.GetArrayFromImage(example_ct).astype(np.float32)
    labels = sitk.GetArrayViewFromImage(example_seg)
    value = [v for v, n in label_names.items() if n == "liver"][0]
    liver = (labels == value).astype(np.uint8)
    findings = np.zeros(array.shape, np.uint8)
    grid = Grid.from_image(example_ct)
    planter = Planter(array, {"liver": liver}, grid, np.random.default_rng(seed), findings)
    return array, liver, findings, planter


def test_a_cyst_and_a_mass_keep_their_attenuation_when_the_liver_turns_fatty(
    example_ct, example_seg, label_names
):
    """On the real example CT: a cyst planted before the fatty liver stays at its 0-15 HU with
    the CT's noise while the parenchyma around it drops. A mass keeps the normal liver's
    attenuation plus its contrast (tumour tissue holds no hepatocellular fat), planted before
    the fat or after it; its soft edge blends into the fatty liver. Before, the drop took a
    cyst to fat's density, and a hypodense mass with the liver to -40..35 HU, a cyst's."""
    array, liver, findings, planter = _liver_planter(example_ct, example_seg, label_names, 5)
    normal = array.copy()
    cyst = planter.lesion("liver", None, "cyst", (25, 30), (5, 10))
    mass = planter.lesion("liver", None, "SOL", (25, 30), (-60, -60), soft=True, absolute=False)
    in_cyst, in_mass = findings == cyst.label, findings == mass.label
    before = array.copy()
    fatty = planter.fatty_liver()
    drop = fatty.contrast_hu
    parenchyma = (liver > 0) & (findings != cyst.label) & (findings != mass.label)
    assert np.median(array[parenchyma] - before[parenchyma]) == pytest.approx(drop)
    np.testing.assert_array_equal(array[in_cyst], before[in_cyst])
    assert 0 <= np.median(array[in_cyst]) <= 15 and array[in_cyst].std() > 3.0
    weight = (before[in_mass] - normal[in_mass]) / -60.0  # the mass's share of each voxel
    assert weight.max() == pytest.approx(1.0) and weight.min() > 0.5
    expected = -60.0 * weight + drop * (1.0 - weight)
    np.testing.assert_allclose(array[in_mass] - normal[in_mass], expected, atol=1e-3)

    after = array.copy()
    late = planter.lesion("liver", None, "SOL", (25, 30), (-60, -60), soft=True, absolute=False)
    in_late = (findings == late.label) & ~in_cyst & ~in_mass
    core = np.isclose(array - after, -60.0 - drop, atol=1e-3) & in_late
    assert core.sum() >= 5  # its full-contrast voxels: the normal liver's attenuation - 60
    np.testing.assert_allclose(array[core], normal[core] - 60.0, atol=1e-3)
    assert not (np.isclose(array - after, -60.0, atol=1e-3) & in_late).any()


def test_a_finding_planted_in_a_fatty_liver_keeps_its_voxels_in_the_finding_mask(
    example_ct, example_seg, label_names
):
    """The finding mask of a fatty liver covers the liver; a cyst or mass planted after it takes
    its voxels there (before, the first finding kept every voxel: the cyst had none), and the
    fatty liver keeps the rest. A focal finding planted before keeps its voxels."""
    _, liver, findings, planter = _liver_planter(example_ct, example_seg, label_names, 3)
    first = planter.lesion("liver", None, "calcification", (8, 10), (500, 600))
    fatty = planter.fatty_liver()
    cyst = planter.lesion("liver", None, "cyst", (20, 25), (5, 10))
    mass = planter.lesion("liver", None, "SOL", (20, 25), (-60, -60), soft=True, absolute=False)
    for finding in (first, cyst, mass):
        region = findings == finding.label
        assert region.any() and np.mean(liver[region] > 0) >= 0.8, finding
    assert len({f.label for f in (first, fatty, cyst, mass)}) == 4  # before: cyst's = mass's
    sizes = [int((findings == f.label).sum()) for f in (first, fatty, cyst, mass)]
    assert sum(sizes) == int(((liver > 0) | (findings > 0)).sum())
    assert sizes[1] > 10 * (sizes[2] + sizes[3])


@pytest.mark.parametrize("source", ["structured", "free text"])
def test_reports_label_back_to_exactly_the_planted_classes(cohort, tmp_path, source):
    root, _ = cohort
    reports = root / "reports.csv"
    if source == "free text":  # drop the structured column: the free-text extractor alone
        rows = read_reports(root)
        reports = tmp_path / "free_text.csv"
        with reports.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({**r, "所見_JSON": ""} for r in rows)
    label_reports(reports, tmp_path / "labels", LabelOptions())
    truth = {r["case_id"]: r for r in json.loads((root / "truth.json").read_text())}
    for organ in ("liver", "spleen", "kidney", "pancreas", "gallbladder"):
        with (tmp_path / "labels" / f"{organ}.csv").open(encoding="utf-8") as f:
            for row in csv.DictReader(f):
                planted = {
                    f["cls"]
                    for f in truth[row["case_id"]]["findings"]
                    if f["organ"] == organ and (f["side"] or "") == row["side"]
                }
                found = {
                    c
                    for c, v in row.items()
                    if v == "1"
                    and c not in ("nofinding",)
                    and c not in ("case_id", "patient_id", "side")
                }
                assert found == planted, (row["case_id"], organ, row["side"], found, planted)


def test_cases_reports_and_patients_line_up(cohort):
    root, summary = cohort
    rows = read_reports(root)
    truth = json.loads((root / "truth.json").read_text())
    assert [r["file_name"] for r in rows] == [f"{t['case_id']}.nii.gz" for t in truth]
    assert [r["患者ID"] for r in rows] == [t["patient_id"] for t in truth]
    for row in rows:
        assert (root / "images" / row["file_name"]).is_file()
        json.loads(row["所見_JSON"])
    assert summary["patients"] < CASES, "some patients must have several exams"
    assert (root / "contact_sheet.png").stat().st_size > 10_000
    image = sitk.ReadImage(str(root / "images" / "case_0001.nii.gz"))
    assert image.GetPixelIDTypeAsString() == "16-bit signed integer"


def test_cohort_from_another_ct(reference_data, tmp_path):
    from JMIDAnomalyLib.apps.cli.main import main
    from JMIDAnomalyLib.imaging.volumes import read_ct

    out = tmp_path / "other"
    source = ["--source-ct", str(reference_data.ct_small), "--source-seg"]
    args = ["cohort", "--out", str(out), "--cases", "6", "--seed", "2", *source]
    assert main([*args, str(reference_data.ct_small_seg)]) == 0
    summary = json.loads((out / "cohort.json").read_text())
    assert summary["cases"] == 6 and summary["source"][0].endswith("example_ct_sm.nii.gz")
    assert summary["cases_with_findings"] >= 1
    small = read_ct(reference_data.ct_small)
    for case in (f"case_{i:04d}" for i in range(1, 7)):
        size = read_ct(out / "images" / f"{case}.nii.gz").GetSize()
        # The source's anatomy (30 slices), not the example CT's 112; deformed in z.
        assert size[:2] == small.GetSize()[:2] and abs(size[2] - 30) <= 6
    names = json.loads((out / "labels.json").read_text())
    assert "liver" in names.values()
    # A segmentation off the CT's grid is refused before anything is written.
    bad = tmp_path / "bad"
    assert main([*args[:2], str(bad), *args[3:], str(reference_data.ct_seg)]) == 2
    assert not bad.exists()
    assert main(["cohort", "--out", str(bad), "--source-enhanced"]) == 2
    assert not bad.exists()


def test_a_changed_source_ct_is_read_again(reference_data, tmp_path):
    """The source is read once per process while its files are unchanged: a CT rewritten at
    the same path makes the cases from the new one."""
    from JMIDAnomalyLib.imaging.volumes import read_ct, write_image

    ct_path = tmp_path / "source.nii.gz"
    original = read_ct(reference_data.ct_small)
    write_image(original, ct_path)
    source = (str(ct_path), str(reference_data.ct_small_seg), "")
    means = []
    for shift in (0, 200):
        if shift:
            write_image(sitk.Cast(original + shift, original.GetPixelID()), ct_path)
        out = tmp_path / f"shift_{shift}"
        build_cohort(out, 1, seed=4, workers=1, source=source)
        means.append(sitk.GetArrayFromImage(read_ct(out / "images" / "case_0001.nii.gz")).mean())
    assert 150 < means[1] - means[0] < 250, means


def test_cohort_from_a_contrast_enhanced_dicom_series(reference_data, tmp_path):
    """Cases made from another patient (the example DICOM series with TotalSegmentator's map of
    it, rows stored bottom-up): ``source_enhanced`` adds no portal-venous enhancement to its
    already enhanced organs, and changes nothing else; a slab without kidneys plants none."""
    from JMIDAnomalyLib.demo.cohort import _plant
    from JMIDAnomalyLib.demo.planting import Planter
    from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map

    source = (str(reference_data.dicom_dir), str(reference_data.dicom_seg), "")
    livers = {}
    for enhanced in (False, True):
        out = tmp_path / f"enhanced_{enhanced}"
        summary = build_cohort(out, 1, seed=3, workers=1, source=source, source_enhanced=enhanced)
        assert summary["source_enhanced"] is enhanced
        ct = read_ct(out / "images" / "case_0001.nii.gz")
        seg = read_label_map(out / "segs" / "case_0001.nii.gz", reference=ct)
        names = json.loads((out / "labels.json").read_text())
        liver = int({v: k for k, v in names.items()}["liver"])
        assert ct.GetSize()[:2] == (512, 512)  # the series' grid, not the example CT's
        livers[enhanced] = sitk.GetArrayViewFromImage(ct)[sitk.GetArrayViewFromImage(seg) == liver]
    rise = np.median(livers[False] - livers[True])
    assert 45 - 1 <= rise <= 65 + 1, rise  # the liver's enhancement, drawn but not added
    assert "kidney" not in " ".join(names.values())
    ct = np.zeros((8, 8, 8), np.float32)
    masks = {"liver": np.ones((8, 8, 8), np.uint8)}
    planter = Planter(
        ct,
        masks,
        Grid((8, 8, 8), (1.0,) * 3, (0.0,) * 3, tuple(np.eye(3).ravel())),
        np.random.default_rng(0),
        np.zeros((8, 8, 8), np.uint8),
    )
    labels = np.ones((8, 8, 8), np.uint8)
    rng = np.random.default_rng(0)
    assert _plant(planter, "kidney", "cyst", labels, {1: "liver"}, rng) is None


def _simpleitk_resampled(transform, reference, ct, label_map):
    """What the cohort did before :func:`deformation.resample`: SimpleITK's ``Resample``
    through the transform as a displacement field, the coarse field linear in between."""
    from JMIDAnomalyLib.demo.deformation import coarse_field

    coarse = coarse_field(transform, reference)
    fine = sitk.Resample(
        coarse, reference, sitk.Transform(), sitk.sitkLinear, 0.0, coarse.GetPixelID()
    )
    field = sitk.DisplacementFieldTransform(fine)
    moved = sitk.Resample(ct, reference, field, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    labels = sitk.Resample(label_map, reference, field, sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(moved), sitk.GetArrayFromImage(labels)


@pytest.mark.parametrize("source", ["example CT", "DICOM series"])
def test_deformation_resamples_as_simpleitk(reference_data, source):
    """The cohort's own resampling gives SimpleITK's values voxel for voxel (float rounding
    aside) and its labels exactly, on a z-range of the example CT and on the DICOM series
    (0.78 mm pixels, rows stored bottom-up), parts of each moved beyond the source."""
    from JMIDAnomalyLib.demo.deformation import DeformationConfig, random_transform, resample
    from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map

    if source == "example CT":
        ct = read_ct(reference_data.ct)
        label_map = read_label_map(reference_data.ct_seg, reference=ct)
    else:
        ct = read_ct(reference_data.dicom_dir)
        label_map = read_label_map(reference_data.dicom_seg, reference=ct)
    size = list(ct.GetSize())
    reference = sitk.RegionOfInterest(ct, [*size[:2], size[2] - 3], [0, 0, 2])
    config = DeformationConfig(displacement_mm=12.0, rotation_deg=8.0)
    for seed in (0, 1):
        transform = random_transform(ct, np.random.default_rng(seed), config)
        values, labels = resample(transform, reference, ct, label_map)
        expected_values, expected_labels = _simpleitk_resampled(transform, reference, ct, label_map)
        assert values.dtype == np.float32 and values.shape == expected_values.shape
        np.testing.assert_allclose(values, expected_values, rtol=0, atol=1e-3)
        np.testing.assert_array_equal(labels, expected_labels)
        outside = expected_values == -1024.0
        assert outside.any() and (labels[outside] == 0).all()
        assert len(np.unique(labels)) > 3
