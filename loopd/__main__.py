"""``python -m loopd`` is the ``loopd`` command."""

import sys

from loopd.cli import main

sys.exit(main())
