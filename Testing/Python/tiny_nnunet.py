"""Build a tiny, real nnU-Net v2 model folder from the example CT, for tests and the demo.

nnU-Net's own planning and preprocessing run on a small dataset of deformed, z-cropped copies
of the real example CT and its label map (liver, spleen, kidneys); the standard nnUNetTrainer
trains a reduced network (patched through the plans: fewer stages and features, a small patch)
for a few short epochs on the CPU, in nnU-Net's standard ``2d`` configuration, at 6 mm. The
result is an ordinary model folder (``dataset.json``, ``plans.json``,
``fold_all/checkpoint_final.pth``) that ``nnUNetPredictor`` loads like any user's model.

Usage: python tiny_nnunet.py OUTPUT_ROOT   (the model folder is printed at the end)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "JMIDAnomaly"))

RECIPE_VERSION = 1
DATASET_ID, DATASET_NAME = 901, "Dataset901_JMIDTiny"
STRUCTURES = ("liver", "spleen", "kidney_left", "kidney_right")
TRAIN_SEEDS = tuple(range(8))
HOLDOUT_SEED = 1000
CONFIGURATION = "2d"
TRAINER_FOLDER = f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"
EPOCHS, ITERATIONS, VAL_ITERATIONS = 60, 25, 2
SPACING_MM = 6.0


def make_case(seed: int):
    """A deformed copy of the example CT with a label map of STRUCTURES (1..4)."""
    import numpy as np
    import SimpleITK as sitk
    from JMIDAnomalyLib.demo.deformation import deform_case
    from JMIDAnomalyLib.demo.reference_data import fetch_reference_data
    from JMIDAnomalyLib.imaging.geometry import Grid, resample_to_grid
    from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map

    data = fetch_reference_data()
    ct = read_ct(data.ct)
    seg = read_label_map(data.ct_seg, reference=ct)
    by_name = {v: k for k, v in data.label_names().items()}
    array = sitk.GetArrayFromImage(seg)
    lut = np.zeros(int(array.max()) + 1, np.uint8)
    for value, name in enumerate(STRUCTURES, start=1):
        lut[by_name[name]] = value
    small = sitk.GetImageFromArray(lut[array])
    small.CopyInformation(seg)
    ct, labels = deform_case(ct, small, np.random.default_rng(seed))
    # At 6 mm a small patch sees the whole abdomen: the tiny network learns in minutes.
    size = [
        int(round(n * s / SPACING_MM)) for n, s in zip(ct.GetSize(), ct.GetSpacing(), strict=True)
    ]
    grid = Grid.from_image(ct).resized(tuple(size))
    return (
        sitk.Cast(resample_to_grid(ct, grid, "linear", -1024), sitk.sitkInt16),
        resample_to_grid(labels, grid, "nearest"),
    )


def model_folder(root: Path) -> Path:
    return root / "results" / DATASET_NAME / TRAINER_FOLDER


def build(root: Path) -> Path:
    import SimpleITK as sitk

    raw = root / "raw" / DATASET_NAME
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    for seed in TRAIN_SEEDS:
        ct, seg = make_case(seed)
        sitk.WriteImage(ct, str(raw / "imagesTr" / f"case{seed:03d}_0000.nii.gz"))
        sitk.WriteImage(seg, str(raw / "labelsTr" / f"case{seed:03d}.nii.gz"))
    labels = {"background": 0} | {name: i for i, name in enumerate(STRUCTURES, start=1)}
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": len(TRAIN_SEEDS),
        "file_ending": ".nii.gz",
        "name": "JMID tiny test model",
    }
    (raw / "dataset.json").write_text(json.dumps(dataset, indent=1))

    os.environ.update(
        nnUNet_raw=str(root / "raw"),
        nnUNet_preprocessed=str(root / "preprocessed"),
        nnUNet_results=str(root / "results"),
        nnUNet_n_proc_DA="1",
        nnUNet_compile="false",
    )
    import random

    import numpy as np
    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    torch.manual_seed(0)  # nnU-Net's sampling and augmentation draw from these generators
    np.random.seed(0)
    random.seed(0)
    extract_fingerprints([DATASET_ID], num_processes=1, check_dataset_integrity=True)
    plan_experiments([DATASET_ID])
    plans_path = root / "preprocessed" / DATASET_NAME / "nnUNetPlans.json"
    plans = json.loads(plans_path.read_text())
    config = plans["configurations"][CONFIGURATION]
    # A reduced 2D network (4 stages of 16..128 features, 56x64 slices, batch 16): it learns the
    # organs in 1,500 iterations, about four minutes on this CPU. nnU-Net's default 3d_fullres
    # would take over 15 minutes per epoch here, and a reduced 3D network learns far slower.
    config["architecture"]["arch_kwargs"].update(
        n_stages=4,
        features_per_stage=[16, 32, 64, 128],
        kernel_sizes=[[3, 3]] * 4,
        strides=[[1, 1], [2, 2], [2, 2], [2, 2]],
        n_conv_per_stage=[2, 2, 2, 2],
        n_conv_per_stage_decoder=[1, 1, 1],
    )
    config.update(patch_size=[56, 64], batch_size=16)
    plans_path.write_text(json.dumps(plans, indent=1))
    preprocess([DATASET_ID], configurations=(CONFIGURATION,), num_processes=(1,))
    dataset_json = json.loads((raw / "dataset.json").read_text())
    os.environ["nnUNet_n_proc_DA"] = "0"  # augmentation in the main process: CPU-friendly
    plans["continue_training"] = False  # nnU-Net 2.8 reads (and pops) this from the plans
    trainer = nnUNetTrainer(
        plans=plans,
        configuration=CONFIGURATION,
        fold="all",
        dataset_json=dataset_json,
        device=torch.device("cpu"),
    )
    trainer.num_epochs = EPOCHS
    trainer.num_iterations_per_epoch = ITERATIONS
    trainer.num_val_iterations_per_epoch = VAL_ITERATIONS
    trainer.initial_lr = 0.02  # the short poly schedule needs a brisker start than 0.01
    trainer.oversample_foreground_percent = 0.66  # most patches hold an organ: faster learning
    trainer.run_training()
    return model_folder(root)


def cached_model() -> Path:
    """The tiny model folder, built once (a few minutes, in a child process so nnU-Net's
    environment variables stay there) into the reference-data cache and reused after."""
    import shutil
    import subprocess

    from JMIDAnomalyLib.demo.reference_data import cache_dir

    root = cache_dir() / f"tiny-nnunet-v{RECIPE_VERSION}"
    if not (root / ".complete").exists():
        work = root.with_name(root.name + ".building")
        shutil.rmtree(work, ignore_errors=True)
        command = [sys.executable, str(Path(__file__).resolve()), str(work)]
        result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        if result.returncode != 0:
            raise RuntimeError(result.stdout[-3000:] + result.stderr[-3000:])
        for scratch in ("raw", "preprocessed"):
            shutil.rmtree(work / scratch)
        (work / ".complete").write_text(str(RECIPE_VERSION))
        shutil.rmtree(root, ignore_errors=True)
        work.rename(root)
    return model_folder(root)


if __name__ == "__main__":
    print(build(Path(sys.argv[1]).resolve()))
