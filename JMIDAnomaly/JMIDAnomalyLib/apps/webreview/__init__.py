"""``jmid review``: the browser front end (:mod:`.app`, the trame application; :mod:`.page`,
its widgets) of the reading and error-analysis flow of :mod:`JMIDAnomalyLib.review`."""
