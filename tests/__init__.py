"""poold's test suite: a package, so its helpers are imported by name (``tests.support``)."""
