"""Preprocessing at scale: batch segmentation, parallel crop-cache builds, warm-cache lookups.

1. Segmentation of N CTs with the test nnU-Net model: ``jmid segment --manifest`` (one process,
   the model loaded once) against one ``jmid segment --ct`` process per CT, as a user's loop
   would run it. Target >= 3x at N = 10.
2. Crop-cache build of real-size CTs (512x512x100 at 0.7x0.7x2.5 mm, resampled from the example
   CT, each a distinct volume) for all seven organs at the published grid: ``--workers 1``
   against ``--workers 2`` (a worker is one core). Target >= 1.7x on 2 cores. Also printed:
   one process with ITK's threads on every core, for reference.
3. Resolving N warm cache entries of real-size CTs: the index (file stamps, no CT opened)
   against the content-hash path training used before (read the CT and segmentation, hash the
   voxels). N paths are hard links to a few distinct CTs, so the content-hash path reads from
   the page cache: a best case for it. Target >= 50x at N = 200.

Usage: .venv/bin/python Testing/benchmarks/bench_preprocess.py [--json] [--cases 10]
       [--crop-cases 8] [--index-cases 200] [--skip segmentation,crops,index]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "JMIDAnomaly"))
sys.path.insert(0, str(REPO / "Testing" / "Python"))
sys.path.insert(0, str(REPO / "Testing" / "benchmarks"))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from JMIDAnomalyLib.common.sharding import Shard  # noqa: E402
from JMIDAnomalyLib.demo.reference_data import fetch_reference_data  # noqa: E402
from JMIDAnomalyLib.imaging.crop_batch import build_crop_cache, inputs_of  # noqa: E402
from JMIDAnomalyLib.imaging.crop_cache import CropCache, crop_key  # noqa: E402
from JMIDAnomalyLib.imaging.crops import CropConfig  # noqa: E402
from JMIDAnomalyLib.imaging.label_tables import read_segmentation  # noqa: E402
from JMIDAnomalyLib.imaging.manifest import ManifestRow, write_manifest  # noqa: E402
from JMIDAnomalyLib.imaging.volumes import read_ct  # noqa: E402

ORGANS = ("liver", "gallbladder", "pancreas", "spleen", "kidney", "adrenal", "esophagus")
JMID = str(Path(sys.executable).with_name("jmid"))


def bench_segmentation(work: Path, n: int) -> dict:
    from tiny_nnunet import HOLDOUT_SEED, cached_model, make_case

    model = cached_model()
    rows = []
    for i in range(n):
        ct, _ = make_case(HOLDOUT_SEED + i)
        sitk.WriteImage(ct, str(work / f"seg_ct{i}.nii.gz"))
        rows.append(ManifestRow(f"case{i}", "", str(work / f"seg_ct{i}.nii.gz")))
    manifest = write_manifest(rows, work / "seg_manifest.csv")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "check": True}
    t = time.perf_counter()
    for row in rows:
        out = work / "single" / f"{row.case_id}.nii.gz"
        subprocess.run(
            [JMID, "segment", "--ct", row.ct, "--model", str(model), "--out", str(out)], **quiet
        )
    single = time.perf_counter() - t
    t = time.perf_counter()
    command = [JMID, "segment", "--manifest", str(manifest), "--model", str(model)]
    subprocess.run([*command, "--out", str(work / "batch")], **quiet)
    batch = time.perf_counter() - t
    for row in rows:  # the same label maps
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "single" / f"{row.case_id}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "batch" / f"{row.case_id}.nii.gz")))
        assert np.array_equal(a, b), row.case_id
    print(f"segmentation of {n} CTs: one process per CT {single:.1f} s, batch {batch:.1f} s")
    ratio = single / batch
    print(f"  ratio {ratio:.1f}x; target >= 3x: {'met' if ratio >= 3 else 'NOT met'}")
    return {"cases": n, "per_case_processes_s": single, "batch_s": batch, "ratio": ratio}


def real_size_cases(work: Path, distinct: int) -> list[ManifestRow]:
    """``distinct`` 512x512x100 CTs (the example CT resampled, shifted by i HU) and segs."""
    from bench_crops import full_size_case

    big_ct, big_seg, _ = full_size_case((512, 512, 100), (0.7, 0.7, 2.5))
    sitk.WriteImage(big_seg, str(work / "big_seg.nii.gz"))
    labels = str(fetch_reference_data().labels_json)
    rows = []
    for i in range(distinct):
        path = work / f"big_ct{i}.nii.gz"
        sitk.WriteImage(sitk.Cast(big_ct + i, sitk.sitkInt16), str(path))
        rows.append(ManifestRow(f"big{i}", "", str(path), str(work / "big_seg.nii.gz"), labels))
    return rows


def bench_crops(work: Path, rows: list[ManifestRow]) -> dict:
    config = CropConfig.preset("published")
    organ_sets = [(organ,) for organ in ORGANS]
    # Reference: one process, ITK's threads on every core (one case after the other).
    cache = CropCache(work / "cache_threads")
    t = time.perf_counter()
    for row in rows:
        cache.case(inputs_of(row), organ_sets, config, arrays=False)
    threaded = time.perf_counter() - t
    times = {}
    for workers in (1, 2):
        t = time.perf_counter()
        summary = build_crop_cache(
            rows, work / f"cache_w{workers}", ORGANS, config, Shard(), workers
        )
        times[workers] = time.perf_counter() - t
        assert summary.count("done") == len(rows), summary.failures
    ratio = times[1] / times[2]
    print(
        f"crop cache of {len(rows)} real-size CTs, 7 organs, published grid: "
        f"1 worker {times[1]:.1f} s, 2 workers {times[2]:.1f} s "
        f"(one process with ITK threads on all cores: {threaded:.1f} s)"
    )
    print(
        f"  ratio {ratio:.2f}x on {os.cpu_count()} cores; target >= 1.7x: "
        f"{'met' if ratio >= 1.7 else 'NOT met'}; against the threaded process "
        f"{threaded / times[2]:.2f}x"
    )
    return {
        "cases": len(rows),
        "workers_1_s": times[1],
        "workers_2_s": times[2],
        "one_process_threaded_s": threaded,
        "ratio": ratio,
        "ratio_vs_threaded": threaded / times[2],
    }


def bench_index(work: Path, distinct: list[ManifestRow], n: int) -> dict:
    rows = []
    links = work / "links"
    links.mkdir()
    for i in range(n):
        source = distinct[i % len(distinct)]
        path = links / f"ct{i:04d}.nii.gz"
        os.link(source.ct, path)
        rows.append(ManifestRow(f"case{i:04d}", "", str(path), source.seg, source.seg_labels))
    config = CropConfig.preset("published")
    cache_dir = work / "cache_w2"  # the contents exist; this indexes the linked paths
    build_crop_cache(rows, cache_dir, ("liver",), config, Shard(), 2)
    cache = CropCache(cache_dir)
    t = time.perf_counter()
    keys = [cache.resolve(inputs_of(row), ("liver",), config) for row in rows]
    indexed = time.perf_counter() - t
    assert all(keys)
    t = time.perf_counter()
    for row in rows:
        ct = read_ct(row.ct)
        label_map, names = read_segmentation(row.seg, ct, row.seg_labels)
        key = crop_key(ct, label_map, names, ("liver",), config)
        assert all(p.exists() for p in cache.paths(key))
    hashed = time.perf_counter() - t
    ratio = hashed / indexed
    print(
        f"resolving {n} warm entries: index {indexed * 1000:.0f} ms "
        f"({indexed / n * 1e6:.0f} us each), content hash {hashed:.1f} s ({hashed / n:.2f} s each)"
    )
    print(f"  ratio {ratio:.0f}x; target >= 50x: {'met' if ratio >= 50 else 'NOT met'}")
    return {"cases": n, "index_s": indexed, "content_hash_s": hashed, "ratio": ratio}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON last")
    parser.add_argument("--cases", type=int, default=10, help="CTs to segment")
    parser.add_argument("--crop-cases", type=int, default=8, help="real-size CTs to crop")
    parser.add_argument("--index-cases", type=int, default=200, help="warm entries to resolve")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        work = Path(tmp)
        if "segmentation" not in skip:
            figures["segmentation"] = bench_segmentation(work, args.cases)
        if not {"crops", "index"} <= skip:
            t = time.perf_counter()
            distinct = real_size_cases(work, args.crop_cases)
            print(f"wrote {len(distinct)} real-size CTs in {time.perf_counter() - t:.1f} s")
            figures["crops"] = bench_crops(work, distinct)
            if "index" not in skip:
                figures["index"] = bench_index(work, distinct, args.index_cases)
    if args.json:
        print(json.dumps(figures, indent=1))
    targets = {"segmentation": 3, "crops": 1.7, "index": 50}
    return 0 if all(figures[k]["ratio"] >= targets[k] for k in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
