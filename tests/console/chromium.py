"""How the console's browser tests (and tests/console/screenshots.py) start Chromium.

Debian's package, never a browser that Playwright downloads. ``launch()``
gives each browser a fresh, temporary user-data dir of its own.
"""

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
