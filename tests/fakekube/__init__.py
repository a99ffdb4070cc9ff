"""fakekube: an in-process fake Kubernetes API server and kubelet for tests.

Import as ``fakekube`` (pytest puts ``tests/`` on ``sys.path`` because it has
no ``__init__.py``) or as ``tests.fakekube`` if ``tests`` becomes a package;
the modules only use relative imports so both work.
"""

from .errors import StatusError
from .kubelet import FakeKubelet
from .podspec import DEFAULT_COMMAND_MAP, expand
from .server import FakeApiServer, RecordedRequest
from .store import Change, ObjectStore

__all__ = [
    "DEFAULT_COMMAND_MAP",
    "Change",
    "FakeApiServer",
    "FakeKubelet",
    "ObjectStore",
    "RecordedRequest",
    "StatusError",
    "expand",
]
