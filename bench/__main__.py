"""``python -m bench [SCENARIO.toml ...] [--quick] [--results-dir DIR]``."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
