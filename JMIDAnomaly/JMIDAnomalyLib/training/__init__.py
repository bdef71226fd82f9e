"""Making model bundles: the job's configuration (:mod:`.config`), labels joined with cached
crops (:mod:`.data`), one fold's training loop and the folds (:mod:`.trainer`), the k-fold job
that writes the bundle (:mod:`.job`), and evaluation of a bundle (:mod:`.evaluation`)."""
