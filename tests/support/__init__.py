"""Helpers the test files share, imported by name (``from tests.support.daemon import
Client``), never from a ``conftest.py`` (pytest loads those as plugins; importing one as a
module makes a second copy of it) and never through ``sys.path``.

- :mod:`tests.support.daemon`: the test tenants' tokens, test settings, a started daemon
  (``serving``), a tenant's HTTP client (``Client``), waiting for a job to run or end.
- :mod:`tests.support.cli`: the ``poold`` command line run as a user runs it.
- :mod:`tests.support.serve`: ``poold serve`` as a process a test may kill.
- :mod:`tests.support.procs`: whether a process is still there; the agents in a slot root.
- :mod:`tests.support.wasm_fixtures`: the real WASI modules the tests run.
- :mod:`tests.support.wasm_encode`: a WebAssembly binary encoder for modules too large to
  write as text.

A free TCP port is the product's own :func:`poold.data.embedded.free_port`. Fixtures stay
in the ``conftest.py`` files; what they need from here they import like any test.
"""
