"""The web console: static pages served at /console/ (see poold/api/console.py)."""
