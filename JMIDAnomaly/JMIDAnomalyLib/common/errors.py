"""The errors the library raises on purpose.

Every problem with a user's file is an :class:`InputError` that names the file and the problem,
so the CLI and the Slicer modules can show one clear line instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable


class JMIDError(Exception):
    """Base class of the errors this library raises on purpose."""


class InputError(JMIDError, ValueError):
    """A user-supplied file or value cannot be used.

    Args:
        path: the offending file or folder (or a short description of the input).
        problem: what is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def check_known_keys(data: Iterable[str], cls: type, source: str) -> None:
    """Refuse settings that are not fields of a dataclass.

    Args:
        data: the keys read (a configuration file, a worker request, a bundle).
        cls: the dataclass they configure.
        source: where they came from, for the message.

    Raises:
        InputError: naming ``source`` and the unknown keys.
    """
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise InputError(source, f"unknown keys {unknown}")
