"""`python -m certrotation`: one pass of the cert-rotation job, as the CronJob runs it."""

from __future__ import annotations

import sys

from certrotation.job import main

if __name__ == "__main__":
    sys.exit(main())
