"""Classifier models: the registry with per-model metadata, the 2.5D MIL and 3D families, the
input layout, ensemble prediction and the model bundle.

Importing the package registers the built-in families (:mod:`.mil`, :mod:`.cnn3d`).
"""

from JMIDAnomalyLib.models import cnn3d, mil  # noqa: F401  (registers the built-in models)
