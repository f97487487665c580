"""``python -m grokfast ...``: the same as the ``grokfast`` command."""

import sys

from grokfast.cli import main

sys.exit(main())
