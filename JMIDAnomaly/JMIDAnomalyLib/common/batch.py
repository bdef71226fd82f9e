"""Batch jobs over a dataset: one case at a time, resumable, failures recorded, never fatal.

:func:`run_batch` is the loop every ``--manifest`` command runs (segmentation, crops,
analysis): cases whose output is already complete are skipped (so a job killed with
``kill -9`` resumes where it stopped), a case that fails is recorded with the reason and the
batch goes on, progress shows an ETA, and a summary JSON is written atomically at the end. A
case's output is written atomically by its job, so it is either complete or absent.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from JMIDAnomalyLib.common.atomic import atomic_output
from JMIDAnomalyLib.common.progress import Progress
from JMIDAnomalyLib.common.sharding import Shard

logger = logging.getLogger(__name__)
T = TypeVar("T")

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class CaseOutcome:
    """What happened to one case: ``done``, ``skipped`` (already complete) or ``failed`` (with
    the reason); ``detail`` is what the job says of a done case."""

    case_id: str
    status: str
    seconds: float = 0.0
    reason: str = ""
    detail: str = ""


@dataclass
class BatchSummary:
    """The outcome of every case of one batch (one shard)."""

    job: str
    shard: Shard
    outcomes: list[CaseOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        """How many cases ended with ``status``."""
        return sum(o.status == status for o in self.outcomes)

    @property
    def failures(self) -> list[CaseOutcome]:
        """The failed cases, with their reasons."""
        return [o for o in self.outcomes if o.status == FAILED]

    @property
    def exit_status(self) -> int:
        """0 unless every case of a non-empty batch failed (then 1)."""
        return 1 if self.outcomes and self.count(FAILED) == len(self.outcomes) else 0

    def to_dict(self) -> dict:
        """The summary as JSON-ready values."""
        return {
            "job": self.job,
            "shard": {"index": self.shard.index, "count": self.shard.count},
            "cases": len(self.outcomes),
            "done": self.count(DONE),
            "skipped": self.count(SKIPPED),
            "failed": self.count(FAILED),
            "outcomes": [asdict(o) for o in self.outcomes],
        }

    def write(self, folder: str | Path) -> Path:
        """Write ``<folder>/<job>-summary[-shard-K-of-N].json`` atomically; returns its path."""
        suffix = f"-{self.shard.label}" if self.shard.label else ""
        path = Path(folder) / f"{self.job}-summary{suffix}.json"
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        return path

    def describe(self) -> str:
        """One line: counts, and where the failures are listed."""
        text = f"{self.job}: {self.count(DONE)} done, {self.count(SKIPPED)} already done"
        return text + f", {self.count(FAILED)} failed"


def _eta(start: float, finished: int, total: int) -> str:
    if not finished:
        return ""
    left = (time.perf_counter() - start) / finished * (total - finished)
    minutes, seconds = divmod(int(round(left)), 60)
    return f", ETA {minutes // 60}:{minutes % 60:02d}:{seconds:02d}"


class _Tally(Generic[T]):
    """Collects outcomes and reports progress with an ETA over the cases left to do."""

    def __init__(self, summary: BatchSummary, todo: int, progress: Progress | None) -> None:
        self.summary, self.todo, self.progress = summary, todo, progress
        self.finished, self.start = 0, time.perf_counter()

    def add(self, outcome: CaseOutcome) -> None:
        self.summary.outcomes.append(outcome)
        if outcome.status == SKIPPED:
            return
        self.finished += 1
        if outcome.status == FAILED:
            logger.warning("%s: %s failed: %s", self.summary.job, outcome.case_id, outcome.reason)
        if self.progress:
            eta = _eta(self.start, self.finished, self.todo)
            message = f"{outcome.case_id} {outcome.status} ({self.finished}/{self.todo}{eta})"
            self.progress(self.finished / max(1, self.todo), message)


def attempt(case_id: str, work: Callable[[], object]) -> CaseOutcome:
    """Run one case's work; any exception becomes a ``failed`` outcome with its reason. What
    ``work`` returns, when a string, is the outcome's detail."""
    start = time.perf_counter()
    try:
        detail = work()
    except Exception as exc:  # noqa: BLE001 - one bad case must not stop the batch
        logger.debug("%s failed", case_id, exc_info=True)
        reason = str(exc) or type(exc).__name__
        return CaseOutcome(case_id, FAILED, round(time.perf_counter() - start, 3), reason)
    detail = detail if isinstance(detail, str) else ""
    return CaseOutcome(case_id, DONE, round(time.perf_counter() - start, 3), detail=detail)


def run_batch(
    job: str,
    items: Sequence[T],
    case_id: Callable[[T], str],
    is_done: Callable[[T], bool],
    work: Callable[[T], CaseOutcome],
    shard: Shard,
    progress: Progress | None = None,
    executor: Executor | None = None,
    prefetch: Callable[[T], None] | None = None,
) -> BatchSummary:
    """Run ``work`` on every item of this shard that is not done yet.

    Args:
        job: the job's name (summary file name, log lines).
        items: the whole dataset; ``shard`` picks this process's share.
        case_id: an item's case id. is_done: whether its output is complete already.
        work: does one item and returns its outcome (:func:`attempt` turns exceptions into
            failures); with an ``executor`` it must be picklable (a module-level function).
        shard: this process's shard.
        progress: ``progress(fraction, message)`` with an ETA.
        executor: runs the items in parallel (a process pool); default one at a time here.
        prefetch: called with the next item before ``work`` runs on the current one (one at a
            time only), so reading the next input can overlap the current work.
    """
    summary = BatchSummary(job, shard)
    mine = shard.select(items)
    pending: list[T] = []
    for item in mine:
        if is_done(item):
            summary.outcomes.append(CaseOutcome(case_id(item), SKIPPED))
        else:
            pending.append(item)
    tally: _Tally[T] = _Tally(summary, len(pending), progress)
    if progress:
        progress(0.0, f"{len(pending)} of {len(mine)} cases to do ({shard.source})")
    for outcome in _outcomes(pending, work, executor, prefetch):
        tally.add(outcome)
    return summary


def _outcomes(
    pending: list[T],
    work: Callable[[T], CaseOutcome],
    executor: Executor | None,
    prefetch: Callable[[T], None] | None,
) -> Iterable[CaseOutcome]:
    if executor is None:
        for i, item in enumerate(pending):
            if prefetch and i + 1 < len(pending):
                prefetch(pending[i + 1])
            yield work(item)
        return
    futures = [executor.submit(work, item) for item in pending]
    for future in as_completed(futures):
        yield future.result()
