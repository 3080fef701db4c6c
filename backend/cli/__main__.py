"""``python -m backend.cli``: the ``fedmomentum`` command (the embedded worker runs this way)."""

import sys

from backend.cli import main

sys.exit(main())
