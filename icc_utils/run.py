"""``python -m icc_utils.run --profile default [--only 01 [02 ...]] [-p key value ...] [--resume] [-v] [--list]``

Executes the numbered notebooks in order with papermill (see :mod:`icc_utils.runner`).
"""
from __future__ import annotations

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
