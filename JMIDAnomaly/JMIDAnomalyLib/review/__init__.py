"""The reading and error-analysis flow, Qt-free, driven by the Slicer Widget and the browser
page alike: :mod:`.controller` (what both front ends call), :mod:`.reading` (analyses of scene
volumes through the worker, results into the scene), :mod:`.error_analysis` (stepping through a
model's mistakes) with :mod:`.queue` and :mod:`.feedback`. Importing it needs no torch."""
