"""fakekube: an in-process fake Kubernetes API server and kubelet for tests.

Import as ``tests.fakekube`` (``tests`` is a package; the bench imports it the
same way from the repository root).
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
