"""``python -m homeserver``."""

from __future__ import annotations

import sys

from homeserver.cli import main

sys.exit(main())
