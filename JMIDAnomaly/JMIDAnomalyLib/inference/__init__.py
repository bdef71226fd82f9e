"""Analysing CTs with bundles: per-organ ensemble scores (:mod:`.predictor`), explanation
heatmaps (:mod:`.explain`, methods named in :mod:`.methods`), the analyze job and its results
folder (:mod:`.analyze_job`) and the overview PNG (:mod:`.overview`)."""
