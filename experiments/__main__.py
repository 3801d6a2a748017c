"""``python -m experiments`` runs the ``sigsim`` command line."""

import sys

from experiments.cli import main

sys.exit(main())
