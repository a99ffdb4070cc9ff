"""Where workers run. The pool speaks only :class:`poold.backends.base.Backend`."""
