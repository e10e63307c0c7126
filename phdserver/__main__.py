"""``python -m phdserver`` is the ``phdserver`` command."""

import sys

from phdserver.cli import main

sys.exit(main())
