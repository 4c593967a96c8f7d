"""``python -m diver`` runs the ``diver`` command."""

import sys

from diver.cli import main

sys.exit(main())
