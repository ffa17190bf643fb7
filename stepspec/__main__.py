"""``python -m stepspec`` is the ``stepspec`` command."""

import sys

from .cli import main

sys.exit(main())
