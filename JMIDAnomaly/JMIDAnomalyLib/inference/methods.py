"""The explanation methods, by name: one definition for the CLI, the analysis job, the worker
requests and both front ends. Torch-free, so the Slicer module can list them before its
dependencies are installed; :mod:`.explain` implements them."""

from __future__ import annotations

OCCLUSION = "occlusion"
HIRESCAM = "hirescam"
NO_EXPLANATION = "none"
#: In the order the front ends offer them; the first is the default.
EXPLAIN_METHODS = (OCCLUSION, HIRESCAM, NO_EXPLANATION)


def check_explain_method(method: str) -> str:
    """``method`` when it is one of :data:`EXPLAIN_METHODS`.

    Raises:
        InputError: naming the method and the choices.
    """
    from JMIDAnomalyLib.common.errors import InputError

    if method not in EXPLAIN_METHODS:
        raise InputError("explain", f"unknown method {method!r}; use {', '.join(EXPLAIN_METHODS)}")
    return method
