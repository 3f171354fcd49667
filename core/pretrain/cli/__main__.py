"""``python -m pretrain.cli``."""

from __future__ import annotations

import sys

from pretrain.cli import main

sys.exit(main())
