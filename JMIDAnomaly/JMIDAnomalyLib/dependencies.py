"""The Python packages the Slicer module needs, and which of them are missing (Qt-free).

The one list is ``data/requirements-slicer.txt`` (each entry commented there). The module asks
the user before installing anything, on first use, never at import: torch through the PyTorch
extension, the rest through ``slicer.pydeps.pip_ensure`` (Slicer 5.11+), else
``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent / "data" / "requirements-slicer.txt"
#: Packages the PyTorch extension installs (never through pip here).
TORCH_PACKAGES = ("torch", "torchvision")


def read_requirements(path: str | os.PathLike = REQUIREMENTS) -> list[str]:
    """The requirement lines of a requirements file (comments and blanks dropped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def missing_requirements(path: str | os.PathLike = REQUIREMENTS,
                         include_torch: bool = True) -> list[str]:  # fmt: skip
    """The requirements not satisfied in this Python (not installed, or a version outside the
    range), plus ``torch``/``torchvision`` when ``include_torch`` and they are not installed."""
    from packaging.requirements import Requirement

    missing = []
    wanted = read_requirements(path)
    if include_torch:
        wanted = [*TORCH_PACKAGES, *wanted]
    for line in wanted:
        requirement = Requirement(line)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(line)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{line} (found {version})")
    return missing
