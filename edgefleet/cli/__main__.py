"""``python -m edgefleet.cli``: the ``edgefleet`` command."""

import sys

from edgefleet.cli.main import main

sys.exit(main())
