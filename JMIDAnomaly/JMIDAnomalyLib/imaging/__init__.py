"""Images with their geometry: grids, physical crops and mapping back (:mod:`.geometry`),
reading and writing CTs and label maps (:mod:`.volumes`), segmentation label tables
(:mod:`.label_tables`), organ crops for the classifiers (:mod:`.crops`), the crop cache
(:mod:`.crop_cache`) and ``jmid crop``'s volume export (:mod:`.crop_export`)."""
