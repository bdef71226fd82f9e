"""The background analysis worker: its process (:mod:`.server`, run as
``python -m JMIDAnomalyLib.worker``), the non-blocking client the front ends use
(:mod:`.client`) and the protocol between them (:mod:`.protocol`)."""
