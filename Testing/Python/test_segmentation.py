"""Organ segmentation through nnUNetPredictor with a real (tiny) nnU-Net v2 model folder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from JMIDAnomalyLib.apps.cli.main import main
from JMIDAnomalyLib.common.errors import InputError
from JMIDAnomalyLib.segmentation.nnunet import OrganSegmenter, load_checkpoint
from tiny_nnunet import HOLDOUT_SEED, TRAIN_SEEDS, make_case


@pytest.fixture(scope="session")
def segmenter(tiny_model) -> OrganSegmenter:
    return OrganSegmenter(tiny_model)


@pytest.fixture(scope="session")
def holdout():
    assert HOLDOUT_SEED not in TRAIN_SEEDS
    return make_case(HOLDOUT_SEED)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.sum(a & b) / max(1, a.sum() + b.sum()))


def test_model_folder_is_an_ordinary_nnunet_folder(tiny_model, segmenter):
    assert {"dataset.json", "plans.json"} <= {p.name for p in tiny_model.iterdir()}
    assert (tiny_model / "fold_all" / "checkpoint_final.pth").is_file()
    assert segmenter.label_names == {1: "liver", 2: "spleen", 3: "kidney_left", 4: "kidney_right"}
    assert segmenter.device.type == "cpu" and not segmenter.predictor.use_mirroring


def test_liver_dice_on_a_case_not_used_in_training(segmenter, holdout):
    ct, reference = holdout
    labels = segmenter.segment(ct)
    assert labels.GetSize() == ct.GetSize() and labels.GetOrigin() == ct.GetOrigin()
    predicted, truth = sitk.GetArrayViewFromImage(labels), sitk.GetArrayViewFromImage(reference)
    assert dice(predicted == 1, truth == 1) >= 0.7


def test_numpy_in_numpy_out_and_reoriented_input(segmenter, holdout):
    ct, _ = holdout
    direct = segmenter.segment_array(sitk.GetArrayViewFromImage(ct), ct.GetSpacing())
    assert direct.shape == sitk.GetArrayViewFromImage(ct).shape
    # An LPS-stored copy of the same CT, reoriented to the model's orientation and back.
    lps = sitk.DICOMOrient(ct, "LPS")
    oriented = OrganSegmenter(segmenter.model_dir, orientation="RAS").segment(lps)
    back = sitk.GetArrayFromImage(sitk.DICOMOrient(oriented, "RAS"))
    assert dice(back == 1, direct == 1) > 0.98


def test_segment_then_crop_from_the_command_line(tiny_model, holdout, tmp_path):
    ct, _ = holdout
    sitk.WriteImage(ct, str(tmp_path / "ct.nii.gz"))
    assert (
        main(
            [
                "segment",
                "--ct",
                str(tmp_path / "ct.nii.gz"),
                "--model",
                str(tiny_model),
                "--out",
                str(tmp_path / "seg.nii.gz"),
            ]
        )
        == 0
    )
    table = json.loads((tmp_path / "seg.json").read_text())
    assert table == {"1": "liver", "2": "spleen", "3": "kidney_left", "4": "kidney_right"}
    assert (
        main(
            [
                "crop",
                "--ct",
                str(tmp_path / "ct.nii.gz"),
                "--seg",
                str(tmp_path / "seg.nii.gz"),
                "--organs",
                "liver",
                "--preset",
                "demo",
                "--out",
                str(tmp_path / "crops"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "crops" / "crops.json").read_text())
    assert report["crops"][0]["organ"] == "liver" and report["crops"][0]["status"] in (
        "ok",
        "partial",
    )


class Pickled:  # a class a malicious checkpoint could smuggle in
    pass


def test_checkpoints_that_need_unpickling_are_refused(tiny_model, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    checkpoint = folder / "fold_all" / "checkpoint_final.pth"
    data = load_checkpoint(checkpoint)
    data["extra"] = Pickled()
    torch.save(data, checkpoint)
    with pytest.raises(InputError, match="refusing to load"):
        OrganSegmenter(folder)
    (folder / "plans.json").unlink()
    with pytest.raises(InputError, match="plans.json is missing"):
        OrganSegmenter(folder)
    with pytest.raises(InputError, match="no fold_"):
        shutil.copy(tiny_model / "plans.json", folder / "plans.json")
        OrganSegmenter(folder, checkpoint="checkpoint_best.pth.missing")
