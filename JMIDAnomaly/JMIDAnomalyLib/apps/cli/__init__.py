"""The ``jmid`` command line: :mod:`.main` builds the parser from the command groups
(:mod:`.demo`, :mod:`.images`, :mod:`.labels`, :mod:`.training`, :mod:`.analysis`), each a thin
layer over a library call."""
