"""``python -m oplog``: the ``oplog`` command."""

import sys

from oplog.cli import main

sys.exit(main())
