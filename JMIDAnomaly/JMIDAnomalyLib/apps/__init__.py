"""The programs on top of the library: the ``jmid`` command line (:mod:`.cli`), the browser
review (:mod:`.webreview`), JMIDTrainer's Logic (:mod:`.trainer`) and the list of Python
packages the Slicer module installs on first use (:mod:`.dependencies`)."""
