"""``jmid segment --manifest``: a whole dataset through one loaded nnU-Net model.

The model is loaded once; each CT is segmented exactly as ``jmid segment`` does it (the same
:meth:`~JMIDAnomalyLib.segmentation.nnunet.OrganSegmenter.segment`), so the label maps are equal
voxel for voxel. The next CT is read in a background thread while the current one is
segmented. Output: ``<out>/<case_id>.nii.gz`` and its label table ``<out>/<case_id>.json``,
each written atomically (the table first), so a case is done exactly when its label map exists.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import SimpleITK as sitk

from JMIDAnomalyLib.common.batch import BatchSummary, CaseOutcome, attempt, run_batch
from JMIDAnomalyLib.common.progress import Progress
from JMIDAnomalyLib.common.sharding import Shard
from JMIDAnomalyLib.imaging.label_tables import write_label_names
from JMIDAnomalyLib.imaging.manifest import ManifestRow
from JMIDAnomalyLib.imaging.volumes import read_ct, write_image
from JMIDAnomalyLib.segmentation.nnunet import OrganSegmenter


def output_paths(out: Path, case_id: str) -> tuple[Path, Path]:
    """A case's label map and label table in the output folder."""
    return out / f"{case_id}.nii.gz", out / f"{case_id}.json"


class _ReadAhead:
    """Reads CTs in one background thread, one case ahead of the segmentation."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool
        self.pending: dict[str, Future] = {}

    def prefetch(self, row: ManifestRow) -> None:
        if row.case_id not in self.pending:
            self.pending[row.case_id] = self.pool.submit(read_ct, row.ct)

    def get(self, row: ManifestRow) -> sitk.Image:
        self.prefetch(row)
        return self.pending.pop(row.case_id).result()


def segment_dataset(
    segmenter: OrganSegmenter,
    rows: list[ManifestRow],
    out: str | os.PathLike,
    shard: Shard,
    progress: Progress | None = None,
) -> BatchSummary:
    """Segment this shard's CTs into ``out``, skipping cases already done.

    Returns:
        The batch summary (each failed case with its reason; written by the caller).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def is_done(row: ManifestRow) -> bool:
        return all(p.is_file() for p in output_paths(out, row.case_id))

    with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
        reader = _ReadAhead(pool)

        def segment_one(row: ManifestRow) -> CaseOutcome:
            def work() -> None:
                labels = segmenter.segment(reader.get(row))
                label_map, table = output_paths(out, row.case_id)
                write_label_names(segmenter.label_names, table)
                write_image(labels, label_map)

            return attempt(row.case_id, work)

        return run_batch(
            "segment",
            rows,
            lambda r: r.case_id,
            is_done,
            segment_one,
            shard,
            progress,
            prefetch=reader.prefetch,
        )
