"""JMIDAnomalyLib: the core library of the JMID Anomaly 3D Slicer extension.

Plain Python, importable and tested outside Slicer. It never imports Qt, CTK or the Slicer
application singletons; MRML is reached through MRML classes with an explicit scene.
"""

from __future__ import annotations

__version__ = "0.1.0"
