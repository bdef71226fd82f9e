"""Atomic output: write under a temporary name beside the target, rename when complete.

A crash or an exception leaves no half-written file or folder, and the target keeps whatever it
had before. Every writer of the library goes through :func:`atomic_output`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from JMIDAnomalyLib.common.errors import InputError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _temporary_sibling(path: Path, is_dir: bool) -> Path:
    """A unique name in the same folder that keeps the file's extensions (writers pick by them).

    tempfile creates it private (0600/0700); it gets the permissions a plain file or folder
    would have, since it becomes the user's output.
    """
    if is_dir:
        name = tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(name, 0o777 & ~_UMASK)
        return Path(name)
    suffix = "".join(path.suffixes)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_UMASK)
    return Path(name)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or an exception inside the block leaves no half-written output: the temporary is
    removed and ``path`` keeps whatever it had before.

    Args:
        path: the final file (or folder, with ``is_dir=True``).
        is_dir: produce a folder instead of a file. An existing folder at ``path`` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path, is_dir)
    try:
        yield tmp
        if is_dir:
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


def check_replaceable(path: str | os.PathLike, marker: str) -> None:
    """Refuse an output folder that would replace something that is not ours.

    Args:
        path: the output folder (``--out``).
        marker: a file every earlier output of this kind holds (``scores.json``...).

    Raises:
        InputError: ``path`` is a file, or a folder holding files but no ``marker``.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(path, "is a file, not a results folder; it is left as it is")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise InputError(
            path, f"holds files but no {marker} (not an earlier result); choose another folder"
        )
