"""``python -m benchmarks``: run the suite, print the table, write the JSON."""

from __future__ import annotations

import sys

from benchmarks.runner import main

sys.exit(main())
