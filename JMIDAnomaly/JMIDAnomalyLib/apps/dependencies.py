"""The Python packages the Slicer module needs, and which of them are missing (Qt-free).

The one list is ``data/requirements-slicer.txt`` (each entry commented there). The module asks
the user before installing anything, on first use, never at import: torch through the PyTorch
extension, the rest through ``slicer.pydeps.pip_ensure`` (Slicer 5.11+), else
``slicer.util.pip_install``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parents[1] / "data" / "requirements-slicer.txt"
#: Packages the PyTorch extension installs (never through pip here).
TORCH_PACKAGES = ("torch", "torchvision")
#: Packages Slicer (or its PyTorch extension) provides: pip never replaces them.
SLICER_PROVIDED = ("SimpleITK", *TORCH_PACKAGES)


def read_requirements(path: str | os.PathLike = REQUIREMENTS) -> list[str]:
    """The requirement lines of a requirements file (comments and blanks dropped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def missing_requirements(
    path: str | os.PathLike = REQUIREMENTS, include_torch: bool = True
) -> list[str]:
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


def install_dependencies(pip_install, pydeps=None, install_torch=None) -> None:
    """Install what :func:`missing_requirements` lists, with the host application's installers.

    Args:
        pip_install: ``pip_install(requirements)`` (``slicer.util.pip_install``), used when
            ``pydeps`` has no ``pip_ensure``.
        pydeps: Slicer's ``slicer.pydeps`` (5.11+): ``pip_ensure`` installs what is missing and
            never replaces :data:`SLICER_PROVIDED`.
        install_torch: installs torch when it is missing (the PyTorch extension's
            ``installTorch``, which picks the build for the machine's GPU); returns None on
            failure.

    Raises:
        RuntimeError: torch is missing and could not be installed.
    """
    if importlib.util.find_spec("torch") is None:
        if install_torch is None or install_torch() is None:
            raise RuntimeError("PyTorch could not be installed (the PyTorch extension installs it)")
    if pydeps is not None and hasattr(pydeps, "pip_ensure"):
        pydeps.pip_ensure(
            pydeps.load_requirements(str(REQUIREMENTS)),
            skip_packages=list(SLICER_PROVIDED),
            requester="JMIDAnomaly",
        )
    else:  # the list holds none of SLICER_PROVIDED
        pip_install(read_requirements())
