"""Training data at scale: memory flat in the number of cases, index speed, loader throughput.

Fabricates a crop cache of N cases at the published grid (64x256x256) from a real liver crop
of the example CT: K distinct entries (shifted and noised copies), N cases indexed onto them,
each case with its own CT path (hard links of one file: a warm index never opens a CT), a
manifest and a label file. Then, each in a fresh process:

- ``load_samples`` for N = 1,000 and N = 10,000 (``--cases``): peak RSS and its growth per
  case, and the time to index the cases (targets: < 0.05 MB per case, < 10 s for 10,000);
- the DataLoader over the published 2.5D input (32 samples x 5 slices) with 0, 1 and 2
  workers, each batch augmented on the device as in training: samples per second;
- the published preset's model (tf_efficientnetv2_s + BiLSTM) training on the device at hand:
  samples per second consumed (target: 2 workers load at least that fast).

Usage: .venv/bin/python Testing/benchmarks/bench_training_scale.py [--cases 1000,10000]
       [--json] [--device auto] [--loader-items 24] [--model-steps 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "JMIDAnomaly"))

import numpy as np  # noqa: E402

DISTINCT = 16


def fabricate(root: Path, n: int) -> Path:
    """A cache of ``n`` liver cases at the published grid; returns the training config."""
    from JMIDAnomalyLib.common.organs import ORGAN_CLASSES
    from JMIDAnomalyLib.demo.reference_data import fetch_reference_data
    from JMIDAnomalyLib.imaging.crop_cache import CropCache, CropInputs, input_fingerprint
    from JMIDAnomalyLib.imaging.crops import CropConfig, crop_organs
    from JMIDAnomalyLib.imaging.manifest import ManifestRow, write_manifest
    from JMIDAnomalyLib.imaging.volumes import read_ct, read_label_map
    from JMIDAnomalyLib.training.config import TrainConfig

    data = fetch_reference_data()
    config = CropConfig.preset("published")
    cache = CropCache(root / "cache")
    ct = read_ct(data.ct)
    [liver] = crop_organs(
        ct, read_label_map(data.ct_seg, ct), data.label_names(), ("liver",), config
    )
    rng = np.random.default_rng(0)
    keys = []
    for i in range(DISTINCT):
        image = np.roll(liver.image, 3 * i, axis=2) + rng.normal(0, 0.02, liver.image.shape)
        liver.image = np.clip(image, -1, 1).astype(np.float32)
        keys.append(f"fabricated{i:02d}")
        cache.store(keys[-1], [liver])
    source = root / "ct.nii.gz"
    source.write_bytes(b"never opened")
    (root / "cts").mkdir()
    rows, classes = [], ORGAN_CLASSES["liver"]
    for i in range(n):
        path = root / "cts" / f"case{i:06d}.nii.gz"
        os.link(source, path)
        row = ManifestRow(
            f"case{i:06d}", f"p{i // 2}", str(path), str(source), str(data.labels_json)
        )
        stamps = CropInputs(row.ct, row.seg, row.seg_labels).stamps()
        index = cache.index_path(input_fingerprint(stamps, ("liver",), config))
        index.parent.mkdir(parents=True, exist_ok=True)
        index.write_text(json.dumps({"key": keys[i % DISTINCT]}))  # as CropCache writes it
        rows.append(row)
    write_manifest(rows, root / "manifest.csv")
    (root / "labels").mkdir()
    with (root / "labels" / "liver.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["case_id", "patient_id", "side", *classes, "evidence"])
        for i, row in enumerate(rows):
            values = [int(k == i % len(classes)) for k in range(len(classes))]
            writer.writerow([row.case_id, row.patient_id, "", *values, "肝嚢胞を認める"])
    train = TrainConfig.from_dict(
        {
            "labels_dir": str(root / "labels"),
            "manifest": str(root / "manifest.csv"),
            "out": str(root / "run"),
            "crop_cache": str(root / "cache"),
            "preset": "published",
        }
    )
    train.save(root / "train.json")
    return root / "train.json"


def measure_index(config_path: str) -> dict:
    """In this (fresh) process: index the cases, then hold the training dataset."""
    from JMIDAnomalyLib.training.config import TrainConfig
    from JMIDAnomalyLib.training.data import CropDataset, load_samples

    config = TrainConfig.load(config_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    samples, _ = load_samples(config)
    seconds = time.perf_counter() - t
    crop = config.crop_config()
    dataset = CropDataset(samples, "2.5d", crop.samples, crop.slices_per_sample, True, 0)
    dataset[0], dataset[len(dataset) - 1]  # items are read from disk, not held
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "cases": len(samples),
        "index_seconds": seconds,
        "peak_rss_mb": peak,
        "start_rss_mb": before,
    }


def measure_loader(config_path: str, items: int, device_name: str) -> dict:
    """Augmented published 2.5D samples per second: crops read in 0, 1 and 2 DataLoader
    workers, each batch augmented on the device and laid out as the training loop does."""
    import torch
    from JMIDAnomalyLib.common.devices import pick_device
    from JMIDAnomalyLib.training.config import TrainConfig
    from JMIDAnomalyLib.training.data import CropDataset, EpochSampler, load_samples

    config = TrainConfig.load(config_path)
    samples, _ = load_samples(config)
    samples = samples[:items]
    crop = config.crop_config()
    dataset = CropDataset(samples, "2.5d", crop.samples, crop.slices_per_sample, True, 0)
    device = pick_device(device_name)
    out = {}
    for workers in (0, 1, 2):
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=2,
            sampler=EpochSampler(len(dataset), 0),
            num_workers=workers,
            prefetch_factor=4 if workers else None,
        )
        t = time.perf_counter()
        seen = sum(dataset.training_input(batch, device).shape[0] for batch in loader)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out[str(workers)] = seen / (time.perf_counter() - t)
    return out


def measure_model(device_name: str, steps: int) -> dict:
    import torch
    from JMIDAnomalyLib.common.devices import autocast, pick_device, training_precision
    from JMIDAnomalyLib.common.organs import ORGAN_CLASSES
    from JMIDAnomalyLib.models.registry import create_model
    from JMIDAnomalyLib.training.config import TRAIN_PRESETS

    preset = TRAIN_PRESETS["published"]
    device = pick_device(device_name)
    model = create_model(preset["model"], num_classes=len(ORGAN_CLASSES["liver"]), in_chans=5)
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=preset["lr"])
    batch = preset["batch_size"] if device.type == "cuda" else 2
    x = torch.randn(batch, 32, 5, 256, 256, device=device)
    y = torch.randint(0, 2, (batch, len(ORGAN_CLASSES["liver"])), device=device).float()
    precision = training_precision(device)  # as training runs: bfloat16 on a CPU that has it
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    times = []
    for step in range(steps + 1):
        t = time.perf_counter()
        with autocast(device, precision is not None, precision):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first step warms up
            times.append(time.perf_counter() - t)
    return {
        "device": str(device),
        "batch": batch,
        "precision": str(precision or torch.float32).removeprefix("torch."),
        "model_samples_per_s": batch / float(np.mean(times)),
    }


def _child(part: str, *args: str) -> dict:
    command = [sys.executable, __file__, "--child", part, *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{part} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="1000,10000", help="comma-separated N")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON last")
    parser.add_argument("--device", default="auto", help="device for the model's throughput")
    parser.add_argument("--loader-items", type=int, default=24, help="items per loader run")
    parser.add_argument("--model-steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        part, *rest = args.child
        work = {
            "index": lambda: measure_index(rest[0]),
            "loader": lambda: measure_loader(rest[0], int(rest[1]), rest[2]),
            "model": lambda: measure_model(rest[0], int(rest[1])),
        }[part]
        print(json.dumps(work()))
        return 0
    sizes = [int(n) for n in args.cases.split(",")]
    figures: dict = {"runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-training-scale-") as tmp:
        for n in sizes:
            t = time.perf_counter()
            config = fabricate(Path(tmp) / f"n{n}", n)
            print(f"fabricated {n} cases in {time.perf_counter() - t:.1f} s")
            run = _child("index", str(config))
            figures["runs"].append(run)
            print(
                f"N={run['cases']}: index {run['index_seconds']:.2f} s, "
                f"peak RSS {run['peak_rss_mb']:.0f} MB"
            )
        small, large = figures["runs"][0], figures["runs"][-1]
        per_case = (large["peak_rss_mb"] - small["peak_rss_mb"]) / max(
            1, large["cases"] - small["cases"]
        )
        figures.update(
            cases=large["cases"],
            peak_rss_mb=large["peak_rss_mb"],
            rss_per_case_mb=per_case,
            index_seconds=large["index_seconds"],
        )
        loader = _child("loader", str(config), str(args.loader_items), args.device)
        figures["loader_samples_per_s"] = loader
    model = _child("model", args.device, str(args.model_steps))
    figures.update(model)
    print(
        f"RSS per case {per_case:.4f} MB (target < 0.05); index of {large['cases']} cases "
        f"{large['index_seconds']:.2f} s (target < 10 s)"
    )
    print("loader, samples/s: " + ", ".join(f"{w} workers {v:.2f}" for w, v in loader.items()))
    print(
        f"model ({model['device']}, batch {model['batch']}): "
        f"{model['model_samples_per_s']:.2f} samples/s"
    )
    keeps_up = loader["2"] >= model["model_samples_per_s"]
    print(f"2 workers keep up with the model: {'yes' if keeps_up else 'NO'}")
    if args.json:
        print(json.dumps(figures, indent=1))
    met = per_case < 0.05 and large["index_seconds"] < 10 and keeps_up
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
