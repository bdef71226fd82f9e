"""k-fold training into a bundle: resume after kill -9, DDP with 2 gloo processes, bundle checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from JMIDAnomalyLib.common.devices import cpu_has_bfloat16
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.demo.cohort import build_cohort
from JMIDAnomalyLib.imaging.manifest import scan_dataset, write_manifest
from JMIDAnomalyLib.labels.labeling import label_reports
from JMIDAnomalyLib.models.bundle import load_bundle
from JMIDAnomalyLib.training.config import TrainConfig
from JMIDAnomalyLib.training.job import train

ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def data(tmp_path_factory, reference_data) -> Path:
    root = tmp_path_factory.mktemp("train_data")
    build_cohort(root / "cohort", cases=12, seed=5, label_noise=0.0)
    label_reports(root / "cohort" / "reports.csv", root / "labels")
    return root


def config(data: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(organ="liver", folds=3, epochs=3, batch_size=4) | overrides
    return TrainConfig.for_cohort(
        data / "cohort", data / "labels", out, data / "crop_cache", **settings
    )


def histories(out: Path) -> list[list[int]]:
    return [
        [row["epoch"] for row in json.loads(p.read_text())["history"]]
        for p in sorted(out.glob("fold_*/done.json"))
    ]


def test_training_writes_a_self_contained_bundle(data, tmp_path):
    cfg = config(data, tmp_path / "run")
    bundle_dir = train(cfg)
    for path in (bundle_dir, bundle_dir.with_suffix(".zip")):
        bundle = load_bundle(path)
        assert bundle.organ == "liver" and len(bundle.models) == 3
        assert set(bundle.thresholds) == set(bundle.classes)
        assert bundle.meta["training"]["samples"] == 12
        assert torch.__version__.startswith(bundle.meta["versions"]["torch"])
        # Mixed precision (bfloat16 on a CPU that has it) computes in it; the weights stay float32.
        weights = [t for m in bundle.models for t in m.state_dict().values()]
        assert all(t.dtype in (torch.float32, torch.int64) for t in weights)
        # Calibrated probabilities never reorder cases: monotone in the raw score per class.
        assert set(bundle.calibration) == set(bundle.classes)
        grid = np.repeat(np.linspace(0, 1, 201)[:, None], len(bundle.classes), axis=1)
        assert np.all(np.diff(bundle.calibrate(grid), axis=0) >= -1e-12)
    assert histories(tmp_path / "run") == [[1, 2, 3]] * 3
    history = json.loads((tmp_path / "run" / "fold_0" / "done.json").read_text())["history"]
    expected = "bfloat16" if cpu_has_bfloat16() else "float32"  # amp is on by default
    assert {h["precision"] for h in history} == {expected}
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    lines = (tmp_path / "run" / "oof_predictions.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith(
        "case_id,patient_id,organ,side,class,probability,label,fold,evidence"
    )
    assert len(lines) == 1 + 12 * 9
    # A second run into the same folder must say so instead of mixing runs.
    with pytest.raises(InputError, match="pass --resume"):
        train(cfg)


def test_the_training_domain_tells_another_patients_ct_from_a_training_case(
    data, tmp_path, reference_data
):
    """Each fold's Gaussian of its training cases' features and its threshold (from its
    validation cases) are in the bundle, read back as tensors only; a training case lies
    inside, the other patient's real CT (0.98 mm DICOM series) outside, and scores.json and
    the evaluation say so."""
    from JMIDAnomalyLib.imaging.label_tables import read_label_names
    from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map
    from JMIDAnomalyLib.inference.predictor import AnomalyPredictor

    bundle_dir = train(config(data, tmp_path / "run"))
    bundle = load_bundle(bundle_dir.with_suffix(".zip"))
    assert bundle.meta["domain"] == {"file": "domain.pt", "quantile": 0.99}
    assert len(bundle.domain) == 3
    assert all(np.isfinite(float(d["threshold"])) and d["threshold"] > 0 for d in bundle.domain)
    predictor = AnomalyPredictor({"liver": bundle}, device="cpu")
    names = read_label_names(data / "cohort" / "labels.json")
    ratios = {}
    for name, (ct_path, seg_path, table) in {
        "training case": (
            data / "cohort" / "images" / "case_0001.nii.gz",
            data / "cohort" / "segs" / "case_0001.nii.gz",
            names,
        ),
        "other patient": (
            reference_data.dicom_dir,
            reference_data.dicom_seg,
            read_label_names(reference_data.labels_json),
        ),
    }.items():
        ct = read_ct(ct_path)
        result = predictor.analyze(ct, read_label_map(seg_path, ct), table, explain="none")
        liver = result.organs[0].to_dict()
        assert liver["outside_training_data"] == (liver["domain_ratio"] > 1)
        ratios[name] = liver["domain_ratio"]
    assert ratios["training case"] < 1 < ratios["other patient"], ratios
    # The evaluation counts the crops outside: none of the training cases.
    from JMIDAnomalyLib.training.evaluation import evaluate_bundle

    summary = evaluate_bundle(
        bundle_dir, data / "labels", data / "cohort", data / "crop_cache", tmp_path / "eval"
    )
    assert summary["outside_training_data"] <= 1  # at most the one past its fold's quantile
    (bundle_dir / "domain.pt").unlink()
    with pytest.raises(InputError, match="domain.pt is missing"):
        load_bundle(bundle_dir)


def test_resume_after_kill_finishes_with_the_same_epochs(data, tmp_path):
    out = tmp_path / "run"
    cfg = config(data, out, epochs=4)
    cfg_file = tmp_path / "train.json"
    cfg.save(cfg_file)
    command = [sys.executable, "-m", "JMIDAnomalyLib", "train", "--config", str(cfg_file)]
    env = dict(ENV, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "JMIDAnomaly"))
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not (out / "fold_1" / "last.pt").exists():  # kill in fold 1, after at least one epoch
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "bundle").exists()
    interrupted = torch.load(out / "fold_1" / "last.pt", weights_only=True)["epoch"]
    assert 1 <= interrupted < 4
    result = subprocess.run([*command, "--resume"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert histories(out) == [[1, 2, 3, 4]] * 3
    assert len(load_bundle(out / "bundle").models) == 3


def test_ddp_with_two_gloo_processes_gives_a_bundle(data, tmp_path):
    cfg_file = tmp_path / "train.yaml"
    cfg = config(data, tmp_path / "ddp", epochs=2)
    import yaml

    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "JMIDAnomalyLib",
        "train",
        "--config",
        str(cfg_file),
    ]
    env = dict(ENV, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "JMIDAnomaly"))
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = load_bundle(tmp_path / "ddp" / "bundle")
    assert len(bundle.models) == 3 and histories(tmp_path / "ddp") == [[1, 2]] * 3


def test_manifest_dataset_trains_the_same_with_0_and_2_workers(data, tmp_path):
    rows, _ = scan_dataset(data / "cohort", "cohort")
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    oof = {}
    for workers in (0, 2):
        out = tmp_path / f"workers{workers}"
        settings = dict(organ="liver", folds=3, epochs=2, batch_size=4, num_workers=workers)
        cfg = TrainConfig(
            labels_dir=str(data / "labels"),
            manifest=str(manifest),
            out=str(out),
            crop_cache=str(data / "crop_cache"),
            balanced_sampling=True,  # seeded weighted draws, the same on every worker count
            **settings,
        )
        train(cfg)
        oof[workers] = (out / "oof_predictions.csv").read_text(encoding="utf-8")
        history = json.loads((out / "fold_0" / "done.json").read_text())["history"]
        assert all(h["samples_per_s"] > 0 and h["data_wait_s"] >= 0 for h in history)
    assert oof[0] == oof[2]


def test_auto_workers_leave_a_small_cpu_to_the_model(monkeypatch):
    """-1 reads in the training process when the model computes on a CPU of 2 cores or fewer
    (a worker would stall its threads), else one less than the cores; a number is kept."""
    from JMIDAnomalyLib.training import data as training_data

    for cores, device, expected in ((2, "cpu", 0), (1, "cpu", 0), (4, "cpu", 3), (2, "cuda", 1)):
        monkeypatch.setattr(training_data, "available_cores", lambda cores=cores: cores)
        assert training_data.loader_workers(-1, device) == expected, (cores, device)
        assert training_data.loader_workers(2, device) == 2
    assert training_data.loader_workers(-1) == 1  # no device given: as before


def test_the_published_preset_is_the_reference_recipe():
    cfg = TrainConfig.from_dict({"preset": "published", "epochs": 2})
    assert (cfg.model, cfg.lr, cfg.folds, cfg.epochs, cfg.sample_loss) == (
        "mil_efficientnetv2_s",
        2.3e-4,
        5,
        2,
        True,
    )
    crop = cfg.crop_config()
    assert crop.grid_zyx == (64, 256, 256) and (crop.samples, crop.slices_per_sample) == (32, 5)
    assert TrainConfig.from_dict({"preset": "published_384"}).crop_config().grid_zyx == (
        64,
        384,
        384,
    )
    from JMIDAnomalyLib.models.registry import create_model

    model = create_model(cfg.model, num_classes=9, in_chans=crop.slices_per_sample)
    assert model.encoder.default_cfg["architecture"] == "tf_efficientnetv2_s"
    assert model(torch.zeros(1, 4, 5, 64, 64)).shape == (1, 9)
    with pytest.raises(InputError, match="unknown preset"):
        TrainConfig.from_dict({"preset": "mine"})


@pytest.mark.parametrize(("positives", "method"), [(20, "platt"), (80, "isotonic")])
def test_calibration_fixes_overconfident_scores(positives, method):
    from JMIDAnomalyLib.models.calibration import (
        apply_class,
        cross_fit_class,
        expected_calibration_error,
        fit_class,
    )

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(positives), np.zeros(240)]
    truth = np.clip(0.3 * y + rng.uniform(0, 0.6, len(y)), 0, 1)  # ranks, but overconfident:
    raw = np.clip(truth**0.3, 0, 1)  # every score pushed towards 1
    calibration = fit_class(raw, y)
    assert calibration["method"] == method
    grid = np.linspace(0, 1, 101)
    assert np.all(np.diff(apply_class(calibration, grid)) >= 0)
    folds = np.arange(len(y)) % 5
    honest = cross_fit_class(raw, y, folds)
    assert expected_calibration_error(honest, y) < 0.5 * expected_calibration_error(raw, y)


def test_isotonic_calibration_ties_no_cases_and_keeps_the_auc():
    """Centred isotonic calibration rises strictly between its first and last block, so it
    keeps every raw score's order and AUC (plain isotonic regression is flat over each block:
    cases tie and AUC falls), and it is still calibrated on the cases it was fitted on."""
    from JMIDAnomalyLib.models.calibration import apply_class, fit_class
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, 400)
    y = (rng.random(400) < raw**2).astype(float)
    calibration = fit_class(raw, y)
    assert calibration["method"] == "isotonic"
    p = apply_class(calibration, raw)
    inside = (raw > calibration["x"][0]) & (raw < calibration["x"][-1])
    order = np.argsort(raw[inside])
    assert np.all(np.diff(p[inside][order]) > 0)
    assert roc_auc_score(y, p) == pytest.approx(roc_auc_score(y, raw), abs=1e-3)
    assert abs(p.mean() - y.mean()) < 0.01


def test_thresholds_lie_between_calibrated_levels():
    """Calibration can give cases the same score (isotonic regression's lowest and highest
    blocks); the stored threshold lies between two scores, so the predictions.csv copy
    (5 decimals) flags the same cases."""
    from JMIDAnomalyLib.training.job import choose_thresholds

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(60), np.zeros(200)]
    p = np.round(np.clip(0.5 * y + rng.uniform(0, 0.45, len(y)), 0, 1), 1)  # tied levels
    for rule in ("balanced", "youden"):
        args = (y[:, None], p[:, None], np.ones((len(y), 1)), ["cls"], rule)
        threshold = choose_thresholds(*args)["cls"]
        assert np.all(np.round(p[y == 1], 5) >= threshold) and np.all(p[y == 0] < threshold)
        assert not np.any(np.isclose(p, threshold))


def test_threshold_rules_and_the_minimum_specificity():
    """``youden`` maximises sensitivity + specificity, ``balanced`` the lower of the two; on a
    steep curve Youden stops early (high specificity, low sensitivity) where the balanced point
    flags more positives with both above 0.8. Where a curve is flat, ``min_specificity`` keeps
    the threshold where at least that share of negatives is clear."""
    from JMIDAnomalyLib.training.job import choose_thresholds

    rng = np.random.default_rng(0)
    y = np.r_[np.ones(100), np.zeros(400)]
    # 80% of the positives above every negative; the rest among a quarter of the negatives,
    # where each positive flagged costs more specificity than it adds sensitivity.
    hard = rng.random(len(y)) < np.where(y == 1, 0.2, 0.25)
    p = np.where(hard, rng.uniform(0.4, 0.6, len(y)), 0.0)
    p += np.where(~hard & (y == 1), rng.uniform(0.85, 0.95, len(y)), 0.0)
    p = (p + np.where(~hard & (y == 0), rng.uniform(0, 0.3, len(y)), 0.0))[:, None]
    args = (y[:, None], p, np.ones((len(y), 1)), ["cls"])

    def rates(threshold):
        return np.mean(p[y == 1, 0] >= threshold), np.mean(p[y == 0, 0] < threshold)

    youden, balanced = (rates(choose_thresholds(*args, r)["cls"]) for r in ("youden", "balanced"))
    assert youden[0] <= 0.85 < 0.88 < min(balanced) and youden[1] > 0.97  # (0.85, 0.975)
    rng, y = np.random.default_rng(0), np.r_[np.ones(100), np.zeros(300)]
    flat = np.where(y == 1, rng.uniform(0.3, 1, len(y)), rng.uniform(0, 0.8, len(y)))[:, None]
    args = (y[:, None], flat, np.ones((len(y), 1)), ["cls"], "youden")
    plain, kept = choose_thresholds(*args)["cls"], choose_thresholds(*args, 0.9)["cls"]
    assert np.mean(flat[y == 0, 0] < plain) < 0.9 <= np.mean(flat[y == 0, 0] < kept) < 0.92
    with pytest.raises(ValueError, match="threshold rule"):
        choose_thresholds(*args[:4], "best")


def test_specificity_confidence_keeps_the_minimum_on_new_cases(caplog):
    """Where the minimum specificity binds (binormal scores, d' 1.6: the balanced point would
    be at 0.79), a threshold chosen on the point estimate gives new cases of the same kind
    specificity under 0.8 in a third or more of the draws; with ``confidence`` 0.95 the Wilson
    lower end reaches 0.8 on the cases it was chosen on, and new cases keep 0.8 nearly always.
    Too few negatives for any threshold to qualify: the point estimate, with a warning."""
    from JMIDAnomalyLib.training.job import choose_thresholds
    from scipy.stats import binomtest, norm

    def draw(rng, negatives, positives):
        y = np.r_[np.zeros(negatives), np.ones(positives)]
        z = rng.normal(0, 1, len(y)) + 1.6 * y
        return y, 1 / (1 + np.exp(-z))  # scores in 0..1; new negatives' specificity: norm.cdf

    kept = {0.0: 0, 0.95: 0}
    for seed in range(30):
        y, p = draw(np.random.default_rng(seed), 600, 150)
        args = (y[:, None], p[:, None], np.ones((len(y), 1)), ["cls"], "balanced", 0.8)
        for confidence in kept:
            threshold = choose_thresholds(*args, confidence)["cls"]
            kept[confidence] += norm.cdf(np.log(threshold / (1 - threshold))) >= 0.8
            if confidence:
                clear = int((p[y == 0] < threshold).sum())
                assert binomtest(clear, 600).proportion_ci(0.95, "wilson").low >= 0.8
    assert kept[0.0] <= 21 and kept[0.95] >= 28, kept  # 19 and 29 of 30
    y, p = draw(np.random.default_rng(0), 12, 6)
    args = (y[:, None], p[:, None], np.ones((len(y), 1)), ["cls"], "balanced", 0.8)
    with caplog.at_level("WARNING"):
        assert choose_thresholds(*args, 0.95) == choose_thresholds(*args)
    assert "too few negatives (12)" in caplog.text


def test_bootstrapped_aucs_are_scikit_learns_on_each_resample():
    """All resamples scored at once give roc_auc_score's AUC on each, ties included (scores
    rounded to a few levels), and the CI lies around the AUC."""
    from JMIDAnomalyLib.training.evaluation import bootstrap_auc, resampled_aucs
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.2).astype(int)
    for p in (np.round(rng.random(300) + 0.5 * y, 1), rng.random(300) + 0.3 * y):
        draws = rng.integers(0, len(y), (50, len(y)))
        expected = [roc_auc_score(y[d], p[d]) for d in draws]
        np.testing.assert_allclose(resampled_aucs(y, p, draws), expected, rtol=0, atol=1e-12)
        auc, low, high = bootstrap_auc(y, p, n=200)
        assert auc == roc_auc_score(y, p) and low < auc < high


def test_ece_floor_of_a_calibrated_model_shrinks_with_the_test_set():
    """A perfectly calibrated model's binned ECE on a small test set is far above zero; the
    floor the held-out table prints beside the ECE is that value, and it shrinks as 1/sqrt(n)."""
    from JMIDAnomalyLib.models.calibration import ece_if_calibrated, expected_calibration_error

    rng = np.random.default_rng(1)
    floors = {}
    for n in (54, 864):
        p = np.where(rng.random(n) < 0.2, rng.uniform(0.5, 1, n), rng.uniform(0, 0.1, n))
        measured = [expected_calibration_error(p, rng.random(n) < p) for _ in range(300)]
        floors[n] = ece_if_calibrated(p)
        assert abs(floors[n] - np.mean(measured)) < 0.15 * floors[n]
    assert floors[54] > 0.05 and 3 < floors[54] / floors[864] < 5
    assert ece_if_calibrated(np.r_[np.zeros(50), np.ones(50)]) == 0


class Smuggled:
    """Stands for code a malicious weights file could carry."""


def test_broken_bundles_get_clear_messages(data, tmp_path):
    import shutil

    source = train(config(data, tmp_path / "run", epochs=1))
    bundle = tmp_path / "copy"
    shutil.copytree(source, bundle)
    (bundle / "fold_2.pt").unlink()
    with pytest.raises(InputError, match=r"fold_2.pt is missing"):
        load_bundle(bundle)
    state = torch.load(source / "fold_0.pt", weights_only=True)
    state["sneaky"] = Smuggled()  # any pickled object, not a tensor
    torch.save(state, bundle / "fold_2.pt")
    with pytest.raises(InputError, match="refusing to load"):
        load_bundle(bundle)
    meta = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**meta, "classes": ["cyst"]}))
    with pytest.raises(InputError, match="classes do not match"):
        load_bundle(bundle)
    (bundle / "bundle.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_bundle(bundle)
    (tmp_path / "x.zip").write_bytes(b"nope")
    with pytest.raises(InputError, match="not a zip"):
        load_bundle(tmp_path / "x.zip")


def test_config_round_trip_and_errors(tmp_path):
    cfg = TrainConfig(organ="kidney", folds=4, model_kwargs={"pooling": "max"})
    path = tmp_path / "c.json"
    cfg.save(path)
    again = TrainConfig.load(path)
    assert again.folds == 4 and again.model_kwargs == {"pooling": "max"}
    assert Path(again.labels_dir).is_absolute()
    path.write_text('{"organ": "liver", "epochz": 3}')
    with pytest.raises(InputError, match="unknown keys"):
        TrainConfig.load(path)
    with pytest.raises(InputError, match="not one of"):
        TrainConfig(organ="lung")
    with pytest.raises(InputError, match="threshold_rule.*'balanced' or 'youden', not 'best'"):
        TrainConfig(threshold_rule="best")
    path.write_text('{"organ": "liver", "test_time_mirroring": "false"}')  # a string, truthy
    with pytest.raises(InputError, match="test_time_mirroring.*true or false, not 'false'"):
        TrainConfig.load(path)


def test_evaluate_oof_and_held_out(data, tmp_path):
    from JMIDAnomalyLib.apps.cli.main import main

    run = tmp_path / "run"
    bundle = train(config(data, run, epochs=2))
    assert (
        main(
            [
                "evaluate",
                "--bundle",
                str(bundle),
                "--oof",
                str(run / "oof_predictions.csv"),
                "--out",
                str(tmp_path / "oof"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--bundle",
                str(bundle.with_suffix(".zip")),
                "--labels",
                str(data / "labels"),
                "--data",
                str(data / "cohort"),
                "--crops",
                str(data / "crop_cache"),
                "--out",
                str(tmp_path / "held_out"),
            ]
        )
        == 0
    )
    for folder in ("oof", "held_out"):
        metrics = json.loads((tmp_path / folder / "metrics.json").read_text())
        assert metrics["organ"] == "liver" and metrics["cases"] == 12
        for entry in metrics["classes"]:
            assert 0 <= entry["ece"] <= 1 and 0 <= entry["ece_raw"] <= 1
            assert 0 <= entry["ece_if_calibrated"] <= 1
            assert (tmp_path / folder / f"reliability_{entry['class']}.png").is_file()
        nofinding = next(c for c in metrics["classes"] if c["class"] == "nofinding")
        assert nofinding["positives"] + nofinding["negatives"] == 12
        # The held-out set is checked against the training domain (out-of-fold rows are not).
        assert ("outside_training_data" in metrics) == (folder == "held_out")
        for png in ("roc.png", "confusion.png"):
            assert (tmp_path / folder / png).stat().st_size > 5000
        header = (tmp_path / folder / "predictions.csv").read_text(encoding="utf-8").splitlines()[0]
        assert (
            header
            == "case_id,patient_id,organ,side,class,probability,label,fold,evidence,probability_raw"
        )
    assert main(["evaluate", "--bundle", str(bundle), "--out", str(tmp_path / "x")]) == 2
    check_calibrate(main, data, bundle, tmp_path)


def check_calibrate(main, data: Path, bundle: Path, tmp_path: Path) -> None:
    """jmid calibrate: a new bundle with the same models whose maps and thresholds are fitted
    on the cases given (those with enough positives and negatives), monotone in the raw
    scores; the bundle given is left as it was, and bad requests write nothing."""
    from JMIDAnomalyLib.models import calibration as calibration_maps
    from JMIDAnomalyLib.training.evaluation import score_labelled

    given = (bundle / "bundle.json").read_bytes()
    site = tmp_path / "site_bundle"
    cases = ["--labels", str(data / "labels"), "--data", str(data / "cohort")]
    args = ["calibrate", "--bundle", str(bundle), *cases, "--crops", str(data / "crop_cache")]
    assert main([*args, "--out", str(site), "--min-cases", "3"]) == 0
    assert (bundle / "bundle.json").read_bytes() == given
    old, new = load_bundle(bundle), load_bundle(site.with_suffix(".zip"))
    refitted = new.meta["recalibrated"]["classes"]
    assert new.meta["recalibrated"]["cases"] == 12 and "nofinding" in refitted
    for a, b in zip(old.models, new.models, strict=True):
        assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert new.domain is not None and len(new.domain) == len(old.domain)
    samples, raw, _ = score_labelled(new, data / "labels", data / "cohort", data / "crop_cache")
    labels = np.stack([np.nan_to_num(s.labels) for s in samples])
    known = np.stack([~np.isnan(s.labels) for s in samples]).astype(float)
    fitted = calibration_maps.fit(labels, raw, known, new.classes)
    grid = np.linspace(0, 1, 201)[:, None].repeat(len(new.classes), 1)
    for k, cls in enumerate(new.classes):
        if cls in refitted:
            assert new.calibration[cls] == fitted[cls]
        else:
            assert new.calibration.get(cls) == old.calibration.get(cls)
            assert new.thresholds[cls] == old.thresholds[cls]
        assert np.all(np.diff(new.calibrate(grid)[:, k]) >= 0), cls  # monotone in the raw score
    assert main([*args, "--out", str(site), "--min-cases", "3"]) == 2  # never replaced
    from JMIDAnomalyLib.training.recalibration import recalibrate

    normal = labels[:, new.classes.index("nofinding")]
    some = [s.case_id for y in (0, 1) for s in np.asarray(samples)[normal == y][:3]]
    part = recalibrate(bundle, *cases[1::2], data / "crop_cache", tmp_path / "part", "cpu", 2, some)
    assert part["cases"] == load_bundle(tmp_path / "part").meta["recalibrated"]["cases"] == 6
    assert main([*args, "--out", str(tmp_path / "none"), "--min-cases", "13"]) == 2
    assert main([*args, "--out", str(tmp_path / "none"), "--min-cases", "0"]) == 2  # not 10
    assert not (tmp_path / "none").exists() and not (tmp_path / "none.zip").exists()


def test_test_time_mirroring_is_fitted_on_and_applied_to_every_score(data, tmp_path):
    """The bundle's out-of-fold scores, on which calibration and thresholds are fitted, and its
    scores on new cases are the mean over the crop's 8 mirror images (its flips along z, y, x)."""
    import csv
    from itertools import product

    from JMIDAnomalyLib.models.inputs import model_batch
    from JMIDAnomalyLib.training.data import CropDataset, load_samples
    from JMIDAnomalyLib.training.evaluation import predict

    cfg = config(data, tmp_path / "run", epochs=2, lr=0.05, amp=False)  # views told apart
    bundle = load_bundle(train(cfg))
    assert bundle.mirroring and bundle.meta["test_time_mirroring"] is True
    samples, _ = load_samples(cfg)
    crop = bundle.crop_config

    @torch.no_grad()
    def mirrored_by_hand(model, volume: torch.Tensor) -> np.ndarray:
        outputs = []
        for flips in product((False, True), repeat=3):  # z, y, x of the (Z, Y, X) crop
            view = torch.flip(volume, [d for d, f in zip((0, 1, 2), flips, strict=True) if f])
            x = model_batch(view[None], bundle.layout, crop.samples, crop.slices_per_sample)
            outputs.append(torch.sigmoid(model(x)).numpy()[0])
        spread.append(np.ptp(outputs, axis=0).max())
        return np.mean(outputs, axis=0)

    spread: list[float] = []
    volumes = [torch.from_numpy(s.crop.read()).float() for s in samples]
    by_hand = np.stack([[mirrored_by_hand(m, v) for v in volumes] for m in bundle.models])
    print("largest spread between views", max(spread))
    assert max(spread) > 5e-3  # the check below can tell the mean from a single view
    with (tmp_path / "run" / "oof_predictions.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    index = {s.case_id: i for i, s in enumerate(samples)}
    for row in rows:
        k = bundle.classes.index(row["class"])
        expected = by_hand[int(row["fold"]), index[row["case_id"]], k]
        assert float(row["probability_raw"]) == pytest.approx(expected, abs=2e-5)
    dataset = CropDataset(samples, bundle.layout, crop.samples, crop.slices_per_sample)
    scores, _, _ = predict(bundle, dataset, device="cpu")
    np.testing.assert_allclose(scores, by_hand.mean(0), atol=1e-5)
    bundle.meta["test_time_mirroring"] = False  # a bundle from before: one pass
    single, _, _ = predict(bundle, dataset, device="cpu")
    assert np.abs(single - scores).max() > 1e-3


def test_mil_local_features_see_a_neighbourhood_only():
    """The demo model's encoder ends after stage 2: a feature at one corner of the 8x8 map does
    not change when pixels 28 to 31 do (it sees about 20 pixels), while mil_small's do."""
    from JMIDAnomalyLib.models.registry import create_model

    torch.manual_seed(0)
    x = torch.randn(1, 1, 3, 64, 64)
    changed = x.clone()
    changed[..., 28:32, 28:32] += 5.0
    for name, local in (("mil_local", True), ("mil_small", False)):
        model = create_model(name, num_classes=9).eval()
        with torch.no_grad():
            a = model.encoder.forward_features(x.flatten(0, 1))
            b = model.encoder.forward_features(changed.flatten(0, 1))
        assert a.shape[-1] == (8 if local else 2)
        same = torch.allclose(a[..., 0, 0], b[..., 0, 0])
        assert same == local, name
        assert model(x).shape == (1, 9)
    # drop_rate acts on the cut-short encoder's pooled features as on a whole timm encoder.
    dropped = create_model("mil_local", num_classes=9, drop_rate=0.5).train()
    assert (dropped.encoder.forward_head(torch.ones(2, 64, 8, 8)) == 0).any()
    assert (dropped.eval().encoder.forward_head(torch.ones(2, 64, 8, 8)) == 1).all()
