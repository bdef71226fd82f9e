"""Analysis end to end with a bundle trained for real (CPU, briefly) on copies of the example CT
with planted liver lesions: the same CT stored in RAS, LPS, LAS and oblique orientations gives
the same scores and a heatmap in the same physical place; the results folder is complete and
valid; bad inputs get clear messages.

Whether the heatmap lands on the finding is a property of a trained model: the demo reports the
distance for its held-out cases and ``Testing/benchmarks/bench_occlusion.py`` measures it."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.common.organs import ORGAN_CLASSES
from JMIDAnomalyLib.demo.planting import Planter
from JMIDAnomalyLib.imaging.crops import crop_organs
from JMIDAnomalyLib.imaging.geometry import Grid, hot_spot_lps, resample_to_grid
from JMIDAnomalyLib.imaging.label_tables import select_organs
from JMIDAnomalyLib.imaging.volumes import read_image, write_image
from JMIDAnomalyLib.inference.analyze_job import analyze_case
from JMIDAnomalyLib.inference.predictor import AnomalyPredictor
from JMIDAnomalyLib.models.domain import OUTSIDE_NOTE
from JMIDAnomalyLib.models.ensemble import ensemble_probabilities
from JMIDAnomalyLib.models.inputs import model_batch
from JMIDAnomalyLib.scene.cases import SCORE_COLUMNS, score_rows
from JMIDAnomalyLib.scene.mrml import HEATMAP_COLOR_NODE_ID, load_scene, volume_node_to_image
from JMIDAnomalyLib.training.config import TrainConfig
from JMIDAnomalyLib.training.job import train
from test_geometry import ORIENTATIONS

CASES = 16


def plant_case(ct: sitk.Image, seg: sitk.Image, names: dict, seed: int, lesion: bool):
    """A copy of the CT with scanner-like noise and, if asked, a bright 14-20 mm liver lesion;
    returns the image and the lesion centre (LPS mm) or None."""
    rng = np.random.default_rng(seed)
    grid = Grid.from_image(ct)
    array = sitk.GetArrayFromImage(ct).astype(np.float32)
    array += rng.normal(0, 6, array.shape).astype(np.float32)
    labels = sitk.GetArrayViewFromImage(seg)
    liver = {"liver": (labels == [v for v, n in names.items() if n == "liver"][0]).astype(np.uint8)}
    centre = None
    if lesion:
        planter = Planter(array, liver, grid, rng, np.zeros(array.shape, np.uint8))
        finding = planter.lesion("liver", None, "calcification", (14, 20), (350, 450))
        centre = np.array(finding.centre_lps)
    return grid.image_from_array(array), centre


@pytest.fixture(scope="module")
def organs_seg(example_ct, example_seg, label_names):
    return select_organs(example_seg, label_names)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, example_ct, organs_seg) -> Path:
    """Train a 2-fold mil_local liver ensemble on CASES noisy copies of the example CT, half of
    them with a planted lesion (the real training job, data in the cohort layout)."""
    seg, names = organs_seg
    root = tmp_path_factory.mktemp("analysis")
    (root / "labels").mkdir()
    (root / "labels.json").write_text(json.dumps({str(k): v for k, v in names.items()}))
    classes = ORGAN_CLASSES["liver"]
    with (root / "labels" / "liver.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["case_id", "patient_id", "side", *classes, "evidence"])
        writer.writeheader()
        for i in range(CASES):
            lesion = i % 2 == 0
            image, _ = plant_case(example_ct, seg, names, 1000 + i, lesion)
            write_image(image, root / "images" / f"c{i:02d}.nii.gz")
            write_image(seg, root / "segs" / f"c{i:02d}.nii.gz")
            row = {c: 0 for c in classes} | {
                "calcification": int(lesion),
                "nofinding": int(not lesion),
            }
            writer.writerow(
                {
                    "case_id": f"c{i:02d}",
                    "patient_id": f"P{i:02d}",
                    "side": "",
                    "evidence": "肝に石灰化" if lesion else "",
                    **row,
                }
            )
    config = TrainConfig.for_cohort(
        root,
        root / "labels",
        root / "run",
        root / "crops",
        organ="liver",
        folds=2,
        epochs=2,
        batch_size=4,
        model="mil_local",
        tensorboard=False,
    )
    return train(config)


def reorient(image: sitk.Image, direction: np.ndarray, nearest: bool = False) -> sitk.Image:
    """The same physical content on a grid with another direction (same spacing, centre)."""
    grid = Grid.from_image(image)
    size = np.asarray(grid.size)
    centre = grid.index_to_physical([(size - 1) / 2])[0]
    origin = centre - direction @ (np.asarray(grid.spacing) * (size - 1) / 2)
    target = Grid(grid.size, grid.spacing, tuple(origin), tuple(direction.ravel()))
    return resample_to_grid(
        image, target, "nearest" if nearest else "linear", -1024.0 * (not nearest)
    )


@pytest.fixture(scope="module")
def predictor(bundle) -> AnomalyPredictor:
    return AnomalyPredictor(bundle, device="cpu")


def analyze_in(orientation, predictor, image, seg, names, folder: Path):
    """Store the CT and segmentation in an orientation, analyze through the results folder and
    return (scores by class, heatmap image) of the liver."""
    folder.mkdir()
    direction = ORIENTATIONS[orientation]
    write_image(reorient(image, direction), folder / "ct.nii.gz")
    write_image(reorient(seg, direction, nearest=True), folder / "seg.nii.gz")
    (folder / "seg.json").write_text(json.dumps({str(k): v for k, v in names.items()}))
    analysis = analyze_case(
        folder / "ct.nii.gz", predictor, folder / "out", folder / "seg.nii.gz", scene=False
    )
    liver = next(o for o in analysis.organs if o.organ == "liver")
    heat = read_image(folder / "out" / "heatmap_liver.nii.gz")
    ct_grid = Grid.from_image(read_image(folder / "ct.nii.gz"))
    assert Grid.from_image(heat).difference(ct_grid) is None, "heatmap off the CT's grid"
    assert_inside_liver(sitk.GetArrayFromImage(heat), read_image(folder / "seg.nii.gz"), names)
    return {s.cls: s.probability for s in liver.scores}, liver.explained_class, heat


def assert_inside_liver(heat_zyx: np.ndarray, seg: sitk.Image, names: dict) -> None:
    """A heatmap is zero outside the organ (two voxels of resampling allowed)."""
    from scipy.ndimage import binary_dilation, generate_binary_structure

    value = next(k for k, v in names.items() if v == "liver")
    cube = generate_binary_structure(3, 3)
    liver = binary_dilation(sitk.GetArrayFromImage(seg) == value, cube, iterations=2)
    assert heat_zyx[liver].max() > 0 and not heat_zyx[~liver].any(), "heatmap outside the liver"


def hot_centre(heat: sitk.Image) -> np.ndarray:
    return hot_spot_lps(sitk.GetArrayFromImage(heat), Grid.from_image(heat))


@pytest.fixture(scope="module")
def reference_result(predictor, example_ct, organs_seg, tmp_path_factory):
    seg, names = organs_seg
    image, centre = plant_case(example_ct, seg, names, seed=7, lesion=True)
    return image, analyze_in(
        "LPS", predictor, image, seg, names, tmp_path_factory.mktemp("lps") / "o"
    )


@pytest.mark.parametrize("orientation", ["RAS", "LAS", "oblique"])
def test_any_orientation_gives_the_same_scores_and_heatmap(
    orientation, predictor, organs_seg, reference_result, tmp_path
):
    seg, names = organs_seg
    image, (scores_lps, explained_lps, heat_lps) = reference_result
    if orientation == "oblique":  # compare full maps, not coarse-to-fine selections
        predictor = AnomalyPredictor(predictor.bundles, "cpu", coarse_to_fine=False)
        _, _, heat_lps = analyze_in("LPS", predictor, image, seg, names, tmp_path / "lps")
    scores, explained, heat = analyze_in(orientation, predictor, image, seg, names, tmp_path / "o")
    # Flips land on the same voxel centres (exact); the oblique grid interpolates.
    tolerance = 0.05 if orientation == "oblique" else 1e-3
    for cls, p in scores_lps.items():
        assert abs(scores[cls] - p) < tolerance, f"{orientation} {cls}: {scores[cls]} vs {p}"
    assert explained == explained_lps
    if orientation != "oblique":
        distance = np.linalg.norm(hot_centre(heat) - hot_centre(heat_lps))
        assert distance < 1.0, f"{orientation}: heatmaps {distance:.1f} mm apart"
    # In physical space the maps cover the same region. The oblique CT is resampled and its
    # crop box is the bounding box of a rotated region, so its windows differ: there the maps
    # must cover the same region and lie on the liver (a mirrored or shifted map would not).
    back = sitk.GetArrayFromImage(resample_to_grid(heat, Grid.from_image(heat_lps), "linear"))
    ref = sitk.GetArrayFromImage(heat_lps)
    dice = 2 * np.sum((back != 0) & (ref != 0)) / (np.sum(back != 0) + np.sum(ref != 0))
    if orientation != "oblique":
        assert dice > 0.99 and np.allclose(back, ref, atol=1e-4), f"{orientation}: maps differ"
        return
    assert dice > 0.6, f"{orientation}: map Dice {dice:.2f}"
    liver = sitk.Cast(seg == [v for v, n in names.items() if n == "liver"][0], sitk.sitkUInt8)
    liver = resample_to_grid(liver, Grid.from_image(heat_lps), "nearest")
    distance = sitk.GetArrayFromImage(
        sitk.SignedMaurerDistanceMap(
            liver, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
        )
    )
    # Windows overlap the liver and reach out by their size (larger on the oblique crop's larger
    # box): a mirrored map would lie on the patient's left, 100 mm and more away.
    near = np.mean(distance[back != 0] <= 60.0)
    median = np.median(distance[back != 0])
    assert near > 0.95 and median < 25, f"{orientation}: {near:.0%} near the liver, {median} mm"


def test_results_folder_scene_and_hirescam(predictor, example_ct, organs_seg, tmp_path):
    seg, names = organs_seg
    image, _ = plant_case(example_ct, seg, names, seed=8, lesion=True)
    write_image(image, tmp_path / "ct.nii.gz")
    write_image(seg, tmp_path / "seg.nii.gz")
    (tmp_path / "seg.json").write_text(json.dumps({str(k): v for k, v in names.items()}))
    out = tmp_path / "out"
    analyze_case(
        tmp_path / "ct.nii.gz", predictor, out, tmp_path / "seg.nii.gz", explain="hirescam"
    )
    scores = json.loads((out / "scores.json").read_text())
    assert scores["format"] == 1 and scores["explain"] == "hirescam"
    liver = next(o for o in scores["organs"] if o["organ"] == "liver")
    assert liver["heatmap"] == "heatmap_liver.nii.gz"
    assert [s["class"] for s in liver["scores"]] == list(ORGAN_CLASSES["liver"])
    assert all(len(s["fold_probabilities"]) == 2 for s in liver["scores"])
    # What is shown is calibrated: the bundle's map of the raw ensemble probability.
    bundle = predictor.bundles["liver"]
    assert set(bundle.calibration) == set(bundle.classes)
    raw = np.array([s["raw_probability"] for s in liver["scores"]])
    shown = [s["probability"] for s in liver["scores"]]
    np.testing.assert_allclose(shown, bundle.calibrate(raw), atol=2e-5)
    # ... of the ensemble's mean over the crop's 8 mirror images, as its calibration was fitted.
    assert bundle.mirroring and scores["bundles"]["liver"]["mirrored"] is True
    crop = crop_organs(image, seg, names, ("liver",), bundle.crop_config)[0]
    config = bundle.crop_config
    x = model_batch(
        torch.from_numpy(crop.image)[None], bundle.layout, config.samples, config.slices_per_sample
    )
    mirrored, single = (
        ensemble_probabilities(bundle.models, [x], mirror=m).mean(0)[0].numpy()
        for m in (True, False)
    )
    print("largest single-pass difference", np.abs(mirrored - single).max())
    np.testing.assert_allclose(raw, mirrored, atol=2e-5)
    assert np.abs(raw - single).max() > 1e-4
    heat = sitk.GetArrayFromImage(read_image(out / "heatmap_liver.nii.gz"))
    assert heat.min() >= 0 and heat.max() > 0
    assert_inside_liver(heat, seg, names)
    assert (out / "overview.png").stat().st_size > 10_000
    scene = load_scene(out / "scene.mrb")
    names_in_scene = {scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())}
    assert {"CT", "CT organs", "CT heatmap liver", "CT scores"} <= names_in_scene
    # The heatmap overlay: on the CT's geometry, PET-Heat colours, zero thresholded away.
    heat_node = scene.GetFirstNodeByName("CT heatmap liver")
    ct_node = scene.GetFirstNodeByName("CT")
    assert (
        Grid.from_image(volume_node_to_image(heat_node)).difference(
            Grid.from_image(volume_node_to_image(ct_node))
        )
        is None
    )
    display = heat_node.GetDisplayNode()
    assert display.GetColorNodeID() == HEATMAP_COLOR_NODE_ID and display.GetApplyThreshold()
    assert 0 < display.GetLowerThreshold() < heat.max()
    # The scores table: one row per class, numbers as in scores.json.
    table = scene.GetFirstNodeByName("CT scores").GetTable()
    columns = [table.GetColumn(i).GetName() for i in range(table.GetNumberOfColumns())]
    assert columns == list(SCORE_COLUMNS)
    rows = {r["class"]: r for r in score_rows(scene.GetFirstNodeByName("CT scores"))}
    assert set(rows) == set(ORGAN_CLASSES["liver"])
    for entry in liver["scores"]:
        r = rows[entry["class"]]
        assert r["organ"] == "liver" and abs(r["probability"] - entry["probability"]) < 1e-4
        assert r["flag"] == int(entry["flag"])
    # The training domain is checked and its verdict is on every row of the organ.
    assert liver["domain_ratio"] is not None
    note = OUTSIDE_NOTE if liver["outside_training_data"] else ""
    assert liver["note"] == note and {r["note"] for r in rows.values()} == {note}


def test_bad_inputs_get_clear_messages(
    bundle, predictor, example_ct, organs_seg, reference_data, jmid_command, tmp_path
):
    seg, names = organs_seg
    write_image(example_ct, tmp_path / "ct.nii.gz")
    write_image(seg, tmp_path / "seg.nii.gz")
    (tmp_path / "seg.json").write_text(json.dumps({str(k): v for k, v in names.items()}))
    args = ["--ct", str(tmp_path / "ct.nii.gz"), "--seg", str(tmp_path / "seg.nii.gz")]

    def run(*extra):
        out = tmp_path / "out"
        result = subprocess.run(
            [*jmid_command, "analyze", *args, "--out", str(out), *extra],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2, result.stderr
        assert not out.exists(), "nothing may be written on failure"
        return result.stderr

    assert "no model for pancreas" in run("--bundle", str(bundle), "--organs", "pancreas")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(Path(str(bundle) + ".zip").read_bytes()[:2000])
    assert "broken.zip" in run("--bundle", str(broken))
    args[1] = str(reference_data.mr_small)
    message = run("--bundle", str(bundle))
    assert Path(reference_data.mr_small).name in message
    # An organ missing from the segmentation is reported, not an error.
    empty = sitk.Image(seg.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(seg)
    analysis = predictor.analyze(example_ct, empty, names, explain="none")
    assert [(o.organ, o.status) for o in analysis.organs] == [("liver", "absent")]
    with pytest.raises(InputError, match="no model for kidney"):
        predictor.analyze(example_ct, seg, names, organs=("kidney",))
