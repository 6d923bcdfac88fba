"""``python -m dse_ext …`` runs the ``dse`` command (see :mod:`dse_ext.cli`)."""

import sys

from .cli import main

sys.exit(main())
