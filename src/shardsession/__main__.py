"""``python -m shardsession`` runs the command line."""

import sys

from shardsession.cli import main

sys.exit(main())
