"""MRML: images and label maps as volume and segmentation nodes and back, scene files
(:mod:`.mrml`), and a case or an analysis put into a scene (:mod:`.cases`). Uses MRML classes
only, with the scene passed in (``slicer-core`` outside Slicer)."""
