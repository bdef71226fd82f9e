"""``python -m JMIDAnomalyLib.worker`` (``PythonSlicer -m JMIDAnomalyLib.worker`` in Slicer)."""

import sys

from JMIDAnomalyLib.worker.server import main

if __name__ == "__main__":
    sys.exit(main())
