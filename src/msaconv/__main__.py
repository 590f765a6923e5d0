"""``python -m msaconv`` is ``msaconv`` (also what ``torchrun -m msaconv`` runs)."""

import sys

from .cli import main

sys.exit(main())
