"""Occlusion sensitivity: MONAI's OcclusionSensitivity as the published scripts used it (mask
2x16x16, overlap 0.25, once per fold) against ours (windows inside the organ only, strided,
fill with the organ's median, 2.5D samples re-encoded only where a window touches them), on the
same bundle and the same crops, CPU.

Prints both times per case, the ratio (target >= 10x), and each map's localization: distance
from the planted finding's centre to the centroid of the map's top 5% (target: ours no worse).

Usage: .venv/bin/python Testing/benchmarks/bench_occlusion.py --bundle B --cohort DIR
       [--cases 3] [--classes cyst,SOL,calcification]
(``B`` and ``DIR``: e.g. ``jmid-demo/training/bundle`` and ``jmid-demo/cohort`` from jmid demo)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "JMIDAnomaly"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from JMIDAnomalyLib.imaging.crops import crop_organs  # noqa: E402
from JMIDAnomalyLib.imaging.geometry import hot_spot_lps  # noqa: E402
from JMIDAnomalyLib.imaging.label_tables import read_label_names  # noqa: E402
from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map  # noqa: E402
from JMIDAnomalyLib.inference.explain import occlusion  # noqa: E402
from JMIDAnomalyLib.inference.predictor import default_occlusion_window  # noqa: E402
from JMIDAnomalyLib.models.bundle import load_bundle  # noqa: E402
from JMIDAnomalyLib.models.inputs import model_batch  # noqa: E402


class VolumeModel(torch.nn.Module):
    """A fold model taking the crop volume (B, 1, Z, Y, X), as MONAI's occlusion needs."""

    def __init__(self, model, layout: str, samples: int, slices: int) -> None:
        super().__init__()
        self.model, self.layout, self.samples, self.slices = model, layout, samples, slices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(model_batch(x[:, 0], self.layout, self.samples, self.slices))


def localization_mm(heat: np.ndarray, crop, centre: np.ndarray) -> float:
    hot = hot_spot_lps(heat, crop.record.crop)
    return float("nan") if hot is None else float(np.linalg.norm(hot - centre))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--classes", default="cyst,SOL,calcification")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    from monai.visualize import OcclusionSensitivity

    bundle = load_bundle(args.bundle)
    config = bundle.crop_config
    names = read_label_names(args.cohort / "labels.json")
    wanted = set(args.classes.split(","))
    truth = json.loads((args.cohort / "truth.json").read_text(encoding="utf-8"))
    picks = [
        (r["case_id"], f)
        for r in truth
        for f in r["findings"]
        if f["organ"] == bundle.organ and f["cls"] in wanted and f["size_mm"] >= 10
    ]
    picks = picks[: args.cases]
    window = default_occlusion_window(config.grid_zyx)
    print(
        f"{bundle.organ}, {len(bundle.models)} folds, grid {config.grid_zyx}; ours: window "
        f"{window}, half stride, coarse-fine; MONAI: mask (2, 16, 16), overlap 0.25"
    )
    ratios, ours_err, monai_err = [], [], []
    for case, finding in picks:
        ct = read_ct(args.cohort / "images" / f"{case}.nii.gz")
        seg = read_label_map(args.cohort / "segs" / f"{case}.nii.gz", reference=ct)
        crop = crop_organs(ct, seg, names, (bundle.organ,), config)[0]
        k = bundle.classes.index(finding["cls"])
        centre = np.array(finding["centre_lps"])
        volume = torch.from_numpy(crop.image)[None, None]
        t = time.perf_counter()
        maps = []
        for model in bundle.models:  # as published: one MONAI run per fold
            wrapped = VolumeModel(model, bundle.layout, config.samples, config.slices_per_sample)
            sensitivity = OcclusionSensitivity(
                wrapped, mask_size=(2, 16, 16), overlap=0.25, n_batch=16, verbose=False
            )
            with torch.no_grad():
                occ_map, _ = sensitivity(volume)
                reference = torch.sigmoid(wrapped(volume))[0, k]
            maps.append(reference - occ_map[0, k].numpy())  # drop in probability
        monai_s = time.perf_counter() - t
        monai_heat = np.mean(maps, axis=0)
        t = time.perf_counter()
        ours = occlusion(
            bundle.models,
            crop.image,
            crop.mask,
            k,
            bundle.layout,
            config.samples,
            config.slices_per_sample,
            window,
        )
        ours_s = time.perf_counter() - t
        ratios.append(monai_s / ours_s)
        monai_err.append(localization_mm(monai_heat, crop, centre))
        ours_err.append(localization_mm(ours, crop, centre))
        print(
            f"{case} {finding['cls']:14s} {finding['size_mm']:4.0f} mm: MONAI {monai_s:6.1f} s, "
            f"ours {ours_s:5.2f} s, {monai_s / ours_s:5.1f}x; localization MONAI "
            f"{monai_err[-1]:5.1f} mm, ours {ours_err[-1]:5.1f} mm"
        )
    speedup, monai_mm, ours_mm = np.median(ratios), np.nanmedian(monai_err), np.nanmedian(ours_err)
    print(
        f"median speed-up {speedup:.1f}x (target >= 10); median localization "
        f"MONAI {monai_mm:.1f} mm, ours {ours_mm:.1f} mm"
    )
    return 0 if speedup >= 10 and ours_mm <= monai_mm else 1


if __name__ == "__main__":
    sys.exit(main())
