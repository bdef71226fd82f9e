"""``python -m JMIDAnomalyLib ...``: the ``jmid`` command (e.g. under ``torchrun -m``)."""

import sys

from JMIDAnomalyLib.apps.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
