"""``jmid crop --manifest``: fill the crop cache for a whole dataset, in worker processes.

Each case is read once and cropped for every organ, one cache entry per organ (the entries
training reads), and indexed by its file fingerprint (:mod:`~JMIDAnomalyLib.imaging.crop_cache`).
Cases already indexed are skipped without opening their CT; the work is split into shards
(:mod:`~JMIDAnomalyLib.common.sharding`) and, within a shard, between ``workers`` processes of
one core each (as nnU-Net's ``-np``): ``--workers`` is the number of cores the job uses.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from JMIDAnomalyLib.common.batch import BatchSummary, CaseOutcome, attempt, run_batch
from JMIDAnomalyLib.common.errors import JMIDError
from JMIDAnomalyLib.common.progress import Progress
from JMIDAnomalyLib.common.sharding import Shard
from JMIDAnomalyLib.imaging.crop_cache import CropCache, CropInputs, input_fingerprint
from JMIDAnomalyLib.imaging.crops import CropConfig
from JMIDAnomalyLib.imaging.manifest import ManifestRow


def inputs_of(row: ManifestRow) -> CropInputs:
    """The crop inputs of a manifest row."""
    return CropInputs(row.ct, row.seg, row.seg_labels)


def _crop_case(
    root: str, organs: tuple[str, ...], config: dict, verify: bool, row: ManifestRow
) -> CaseOutcome:
    cache = CropCache(root)
    organ_sets = [(organ,) for organ in organs]

    def work() -> str:
        settings = CropConfig.from_dict(config)
        results = cache.case(inputs_of(row), organ_sets, settings, verify, arrays=False)
        sources = sorted({source for _, source in results})
        return ",".join(sources)

    return attempt(row.case_id, work)


def _is_cached(cache: CropCache, organs, config: CropConfig, row: ManifestRow) -> bool:
    try:
        stamps = inputs_of(row).stamps()  # one stat per file, for every organ's fingerprint
    except JMIDError:
        return False  # missing files: the case is attempted, and fails with the reason
    return all(cache.indexed_key(input_fingerprint(stamps, (o,), config)) for o in organs)


def _init_worker() -> None:
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def build_crop_cache(
    rows: list[ManifestRow],
    cache_dir: str | os.PathLike,
    organs: tuple[str, ...],
    config: CropConfig,
    shard: Shard,
    workers: int = 1,
    verify: bool = False,
    progress: Progress | None = None,
) -> BatchSummary:
    """Crop this shard's cases into the cache at ``cache_dir``.

    Args:
        rows: the manifest. organs: the organs to crop (one entry each).
        config: crop settings. shard: this process's share of ``rows``.
        workers: processes, each using one core (ITK single-threaded); 1 runs in this
            process.
        verify: rehash every case, rebuilding entries whose files changed under an unchanged
            stamp (nothing is skipped).

    Returns:
        The batch summary (written by the caller).
    """
    cache = CropCache(cache_dir)
    root = str(Path(cache_dir).resolve())
    work = functools.partial(_crop_case, root, tuple(organs), config.to_dict(), verify)

    def is_done(row: ManifestRow) -> bool:
        return not verify and _is_cached(cache, organs, config, row)

    if workers <= 1:
        import SimpleITK as sitk

        threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
        try:
            return run_batch("crop", rows, _case_id, is_done, work, shard, progress)
        finally:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    context = multiprocessing.get_context("spawn")  # no fork of a process with ITK threads
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        return run_batch("crop", rows, _case_id, is_done, work, shard, progress, pool)


def _case_id(row: ManifestRow) -> str:
    return row.case_id
