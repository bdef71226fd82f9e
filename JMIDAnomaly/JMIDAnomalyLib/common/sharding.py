"""Splitting a dataset between processes through the engines users already run.

``--shard K/N`` takes every N-th case starting at K (0-based). Without it the shard comes from
the environment: a SLURM job array (``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``) or
torchrun (``RANK`` / ``WORLD_SIZE``, one process per GPU, ``LOCAL_RANK`` picking the GPU). So
``sbatch --array=0-99`` or ``torchrun --nproc_per_node=8 -m JMIDAnomalyLib ...`` splits the work;
there is no scheduler of ours. Shards never share a case, so they never write the same file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from JMIDAnomalyLib.common.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based), and where that came from."""

    index: int = 0
    count: int = 1
    source: str = "single process"

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise InputError("--shard", f"shard {self.index}/{self.count} does not exist")

    def select(self, items: Sequence[T]) -> list[T]:
        """Every ``count``-th item starting at ``index`` (input order kept)."""
        return list(items[self.index :: self.count])

    @property
    def label(self) -> str:
        """``""`` for a single process, else ``shard-K-of-N`` (for per-shard file names)."""
        return "" if self.count == 1 else f"shard-{self.index}-of-{self.count}"


def parse_shard(text: str) -> Shard:
    """``"3/8"`` -> Shard(3, 8).

    Raises:
        InputError: not ``K/N`` with 0 <= K < N.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise InputError("--shard", f"'{text}' is not K/N (for example 0/4)")
    return Shard(int(match[1]), int(match[2]), "--shard")


def shard_from_env(env: Mapping[str, str] | None = None) -> Shard:
    """The shard a SLURM array task or a torchrun process is (else the only shard).

    ``SLURM_ARRAY_TASK_ID`` is taken relative to ``SLURM_ARRAY_TASK_MIN`` so ``--array=1-10``
    works as well as ``--array=0-9``.
    """
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
        index = int(env["SLURM_ARRAY_TASK_ID"]) - first
        return Shard(index, int(env["SLURM_ARRAY_TASK_COUNT"]), "SLURM array")
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return Shard(int(env.get("RANK", "0")), int(env["WORLD_SIZE"]), "torchrun")
    return Shard()


def resolve_shard(text: str | None, env: Mapping[str, str] | None = None) -> Shard:
    """``--shard`` when given, else :func:`shard_from_env`."""
    return parse_shard(text) if text else shard_from_env(env)


def local_device(device: str, env: Mapping[str, str] | None = None) -> str:
    """``auto``/``cuda`` under torchrun -> ``cuda:LOCAL_RANK`` (one GPU per process); else as is."""
    env = os.environ if env is None else env
    if device in ("auto", "cuda") and "LOCAL_RANK" in env:
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(env['LOCAL_RANK']) % torch.cuda.device_count()}"
    return device
