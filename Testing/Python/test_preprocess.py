"""Preprocessing at scale on real CTs: manifests, batch segmentation, sharded crop caches.

Covers the manifest of every supported layout, batch segmentation against per-case
``jmid segment`` (voxel for voxel), resuming after ``kill -9``, three shards as three processes
filling one cache, a warm cache read without opening any CT, and bad cases in a batch.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from JMIDAnomalyLib.apps.cli.main import main
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import ORGAN_CLASSES
from JMIDAnomalyLib.common.sharding import Shard, parse_shard, shard_from_env
from JMIDAnomalyLib.imaging.crop_batch import inputs_of
from JMIDAnomalyLib.imaging.crop_cache import CropCache
from JMIDAnomalyLib.imaging.crops import CropConfig
from JMIDAnomalyLib.imaging.manifest import (
    ManifestRow,
    read_manifest,
    scan_dataset,
    write_manifest,
)
from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map
from JMIDAnomalyLib.training.config import TrainConfig
from JMIDAnomalyLib.training.data import load_samples

DEMO = CropConfig.preset("demo")


def _link(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)
    return target


def _cohort(data, root: Path) -> Path:
    _link(data.ct_small, root / "images" / "case_a.nii.gz")
    _link(data.ct_small_seg, root / "segs" / "case_a.nii.gz")
    _link(data.ct, root / "images" / "case_b.nii.gz")  # no segmentation yet
    shutil.copy(data.labels_json, root / "labels.json")
    return root


def _nnunet(data, root: Path) -> Path:
    _link(data.ct_small, root / "imagesTr" / "case_001_0000.nii.gz")
    _link(data.ct_small_seg, root / "labelsTr" / "case_001.nii.gz")
    _link(data.ct, root / "imagesTs" / "case_002_0000.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 5}}))
    return root


def _published(data, root: Path) -> Path:
    _link(data.ct_small, root / "liver" / "jmid_0000001_0000.nii.gz")
    _link(data.ct_small, root / "kidney" / "jmid_0000001_0000.nii.gz")  # the same exam
    _link(data.ct, root / "kidney" / "jmid_0000002_0000.nii.gz")
    return root


def _folder(data, root: Path) -> Path:
    _link(data.ct_small, root / "first.nii.gz")
    (root / "site2").mkdir()
    sitk.WriteImage(read_ct(data.ct_small), str(root / "site2" / "second.nrrd"))
    (root / "notes.txt").write_text("not a CT")
    return root


def _dicom(data, root: Path) -> Path:
    import pydicom

    series = root / "patient1" / "study1" / "series1"
    shutil.copytree(data.dicom_dir, series)
    # A one-file secondary capture elsewhere in the tree: not a CT series, left out.
    first = sorted(p for p in series.iterdir() if p.is_file())[0]
    other = pydicom.dcmread(first)
    other.Modality = "OT"
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    (root / "patient1" / "study1" / "capture").mkdir()
    other.save_as(root / "patient1" / "study1" / "capture" / "sc.dcm")
    (root / "README.txt").write_text("not DICOM")
    return root


LAYOUT_CASES = {
    "cohort": (_cohort, {"case_a": True, "case_b": False}),
    "nnunet": (_nnunet, {"case_001": True, "case_002": False}),
    "published": (_published, {"jmid_0000001": False, "jmid_0000002": False}),
    "folder": (_folder, {"first": False, "site2_second": False}),
    "dicom": (_dicom, {"patient1_study1_series1": False}),
}


@pytest.mark.parametrize("layout", list(LAYOUT_CASES))
def test_manifest_from_each_layout(layout, reference_data, tmp_path):
    build, expected = LAYOUT_CASES[layout]
    root = build(reference_data, tmp_path / "data")
    rows, notes = scan_dataset(root)  # detected
    assert {r.case_id: bool(r.seg) for r in rows} == expected
    if layout == "dicom":
        assert any("OT series" in n for n in notes)
        import pydicom

        tag = pydicom.dcmread(next(Path(rows[0].ct).iterdir()), stop_before_pixels=True)
        assert rows[0].patient_id == str(tag.PatientID)
    for row in rows:  # every CT named is readable, every segmentation lies on it
        ct = read_ct(row.ct)
        if row.seg:
            assert Path(row.seg_labels).is_file()
            assert read_label_map(row.seg, reference=ct).GetSize() == ct.GetSize()
    # The CSV round trip keeps every field (paths stored relative to the manifest).
    path = write_manifest(rows, tmp_path / "manifest.csv")
    assert read_manifest(path) == rows


def test_dataset_command_joins_report_patients_and_batch_segmentations(
    reference_data, tmp_path, capsys
):
    root = _cohort(reference_data, tmp_path / "data")
    reports = tmp_path / "reports.csv"
    reports.write_text("file_name,患者ID,所見\ncase_a.nii.gz,P-17,肝臓に異常なし\n", "utf-8")
    segs = tmp_path / "segs"
    _link(reference_data.ct_seg, segs / "case_b.nii.gz")
    shutil.copy(reference_data.labels_json, segs / "case_b.json")
    out = tmp_path / "manifest.csv"
    args = ["--from", str(root), "--reports", str(reports), "--segs", str(segs)]
    assert main(["dataset", *args, "--out", str(out)]) == 0
    rows = {r.case_id: r for r in read_manifest(out)}
    assert rows["case_a"].patient_id == "P-17" and rows["case_a"].report_id == "case_a"
    assert rows["case_b"].patient_id == "case_b" and rows["case_b"].report_id == ""
    assert Path(rows["case_b"].seg).name == "case_b.nii.gz"
    assert "1 of 2 cases have one" in capsys.readouterr().out
    # A manifest never replaces a user's file; bad manifests are named with their row.
    (tmp_path / "mine.csv").write_text("a,b\n1,2\n")
    assert main(["dataset", "--from", str(root), "--out", str(tmp_path / "mine.csv")]) == 2
    assert (tmp_path / "mine.csv").read_text() == "a,b\n1,2\n"
    bad = tmp_path / "bad.csv"
    bad.write_text("case_id,ct\nx,a.nii.gz\nx,b.nii.gz\n")
    with pytest.raises(InputError, match="row 3: case_id 'x' repeats row 2"):
        read_manifest(bad)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, Shard(0, 1)),
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}, Shard(3, 4, "SLURM array")),
        (
            {
                "SLURM_ARRAY_TASK_ID": "5",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_ARRAY_TASK_MIN": "2",
            },
            Shard(3, 4, "SLURM array"),
        ),
        ({"RANK": "6", "WORLD_SIZE": "8", "LOCAL_RANK": "6"}, Shard(6, 8, "torchrun")),
    ],
)
def test_shards_come_from_slurm_and_torchrun(env, expected):
    assert shard_from_env(env) == expected
    assert parse_shard("1/3").select(list(range(7))) == [1, 4]
    with pytest.raises(InputError, match="does not exist"):
        parse_shard("3/3")


def _segmentation_cases(root: Path, n: int) -> list[ManifestRow]:
    """n distinct CTs: deformed copies of the example CT at the tiny model's resolution."""
    from tiny_nnunet import HOLDOUT_SEED, make_case

    rows = []
    for i in range(n):
        ct, _ = make_case(HOLDOUT_SEED + i)
        path = root / f"ct{i}.nii.gz"
        sitk.WriteImage(ct, str(path))
        rows.append(ManifestRow(f"case{i}", f"p{i}", str(path)))
    return rows


def _jmid(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("jmid")), *args]


def test_batch_segmentation_equals_per_case_and_resumes_after_kill(tiny_model, tmp_path):
    rows = _segmentation_cases(tmp_path, 6)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really a CT")
    rows.insert(2, ManifestRow("broken", "", str(broken)))
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    out = tmp_path / "segs"
    command = _jmid("segment", "--manifest", str(manifest), "--model", str(tiny_model))
    process = subprocess.Popen([*command, "--out", str(out)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list(out.glob("case*.nii.gz")) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("case*.nii.gz")}
    assert 1 <= len(done) < 6, "the batch should be killed mid-way"
    for name in done:  # what the killed batch left is complete
        assert sitk.ReadImage(str(out / name)).GetSize() == read_ct(rows[0].ct).GetSize()
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((out / "segment-summary.json").read_text())
    assert summary["skipped"] == len(done) and summary["done"] == 6 - len(done)
    assert [o["case_id"] for o in summary["outcomes"] if o["status"] == "failed"] == ["broken"]
    assert "broken.nii.gz" in result.stdout
    for name, mtime in done.items():  # nothing was redone
        assert (out / name).stat().st_mtime_ns == mtime
    assert not [p for p in out.iterdir() if p.name.startswith(".") and "tmp" in p.name]
    # Each label map equals the one-CT command's, voxel for voxel.
    for row in rows[:2]:
        single = tmp_path / f"single_{row.case_id}.nii.gz"
        assert (
            main(["segment", "--ct", row.ct, "--model", str(tiny_model), "--out", str(single)]) == 0
        )
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(sitk.ReadImage(str(single))),
            sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{row.case_id}.nii.gz"))),
        )
        assert (out / f"{row.case_id}.json").read_text() == single.with_suffix("").with_suffix(
            ".json"
        ).read_text()


def _crop_cases(data, root: Path, n: int) -> list[ManifestRow]:
    """n distinct real CTs (the small example CT, shifted by i HU) with its segmentation."""
    base = sitk.ReadImage(str(data.ct_small))
    rows = []
    for i in range(n):
        path = root / f"ct{i}.nii.gz"
        sitk.WriteImage(sitk.Cast(base + i, base.GetPixelID()), str(path))
        seg, table = str(data.ct_small_seg), str(data.labels_json)
        rows.append(ManifestRow(f"c{i}", f"p{i % 3}", str(path), seg, table))
    return rows


def _liver_labels(folder: Path, rows: list[ManifestRow]) -> Path:
    classes = ORGAN_CLASSES["liver"]
    folder.mkdir()
    with (folder / "liver.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "patient_id", "side", *classes, "evidence"])
        for i, row in enumerate(rows):
            writer.writerow([row.case_id, row.patient_id, "", *[i % 2] * len(classes), ""])
    return folder


def test_three_shards_fill_one_cache_that_training_reads_without_opening_a_ct(
    reference_data, tmp_path
):
    rows = _crop_cases(reference_data, tmp_path, 6)
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    cache_dir = tmp_path / "cache"
    crop = _jmid("crop", "--manifest", str(manifest), "--cache", str(cache_dir))
    crop += ["--organs", "liver", "--preset", "demo", "--workers", "1"]
    shards = [
        subprocess.Popen([*crop, "--shard", f"{k}/3"], stdout=subprocess.PIPE, text=True)
        for k in range(3)
    ]
    assert [p.wait() for p in shards] == [0, 0, 0]
    done = []
    for k in range(3):
        summary = json.loads((cache_dir / f"crop-summary-shard-{k}-of-3.json").read_text())
        done += [o["case_id"] for o in summary["outcomes"] if o["status"] == "done"]
    assert sorted(done) == sorted(r.case_id for r in rows)  # every case exactly once
    assert len(list((cache_dir / "index").rglob("*.json"))) == 6
    cache = CropCache(cache_dir)
    keys = [cache.resolve(inputs_of(r), ("liver",), DEMO) for r in rows]
    assert all(keys) and len(set(keys)) == 6

    config = TrainConfig(
        labels_dir=str(_liver_labels(tmp_path / "labels", rows)),
        manifest=str(manifest),
        out=str(tmp_path / "run"),
        crop_cache=str(cache_dir),
        crop_preset="demo",
    )
    cold, _ = load_samples(config)
    # Make every CT unreadable as a CT (same size, same modification time): a warm cache must
    # not need them. (chmod 000 would not stop root, who runs CI.)
    for row in rows:
        stat = os.stat(row.ct)
        Path(row.ct).write_bytes(b"\0" * stat.st_size)
        os.utime(row.ct, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    warm, summary = load_samples(config)
    assert len(warm) == 6 and summary["skipped"] == []
    for a, b in zip(cold, warm, strict=True):
        np.testing.assert_array_equal(a.crop.read(), b.crop.read())
    # --verify rehashes: every CT is now reported unreadable, and the batch says so.
    result = subprocess.run([*crop, "--verify"], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout.count("failed c") == 6
    # A changed file (new modification time) is a new fingerprint: no longer warm.
    os.utime(rows[0].ct)
    assert cache.resolve(inputs_of(rows[0]), ("liver",), DEMO) is None


def test_bad_cases_are_reported_and_the_batch_goes_on(reference_data, tmp_path):
    good = _crop_cases(reference_data, tmp_path, 1)[0]
    unreadable = tmp_path / "unreadable.nii.gz"
    unreadable.write_bytes(b"not a volume")
    rows = [
        good,
        ManifestRow("unreadable", "", str(unreadable), good.seg, good.seg_labels),
        ManifestRow("no_seg_file", "", good.ct, str(tmp_path / "missing.nii.gz")),
        ManifestRow("other_grid", "", str(reference_data.ct), good.seg, good.seg_labels),
        ManifestRow("no_seg", "", good.ct),
    ]
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    cache_dir = tmp_path / "cache"
    args = ["crop", "--manifest", str(manifest), "--cache", str(cache_dir), "--preset", "demo"]
    assert main([*args, "--organs", "liver,spleen", "--workers", "2"]) == 0
    summary = json.loads((cache_dir / "crop-summary.json").read_text())
    reasons = {o["case_id"]: o["reason"] for o in summary["outcomes"]}
    assert summary["done"] == 1 and summary["failed"] == 4 and reasons["c0"] == ""
    assert "unreadable.nii.gz" in reasons["unreadable"]
    assert "missing.nii.gz" in reasons["no_seg_file"]
    assert "grid" in reasons["other_grid"] or "size" in reasons["other_grid"]
    assert "no segmentation" in reasons["no_seg"]
    assert len(list((cache_dir / "index").rglob("*.json"))) == 2  # c0's liver and spleen
    assert not list(cache_dir.rglob(".*tmp*"))
    # Only failures: exit status 1.
    write_manifest(rows[1:], manifest)
    assert main([*args, "--organs", "liver"]) == 1


def test_analyze_a_worklist_with_the_models_loaded_once(demo_run, tmp_path):
    _, demo, _ = demo_run
    rows, _ = scan_dataset(demo / "cohort", "cohort")
    manifest = write_manifest(rows[:2], tmp_path / "worklist.csv")
    out = tmp_path / "results"
    bundle = demo / "training" / "liver" / "bundle"
    args = ["analyze", "--manifest", str(manifest), "--bundle", str(bundle), "--out", str(out)]
    assert main([*args, "--explain", "none", "--no-scene"]) == 0
    for row in rows[:2]:
        scores = json.loads((out / row.case_id / "scores.json").read_text())
        assert scores["organs"][0]["organ"] == "liver" and scores["organs"][0]["scores"]
    first = (out / rows[0].case_id / "scores.json").stat().st_mtime_ns
    assert main([*args, "--explain", "none", "--no-scene"]) == 0
    assert (out / rows[0].case_id / "scores.json").stat().st_mtime_ns == first
    assert json.loads((out / "analyze-summary.json").read_text())["skipped"] == 2
