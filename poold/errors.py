"""poold's own exceptions: one root, one base per layer, each saying whether the
same call may succeed if made again later (``retriable``), as aiokafka's
``KafkaError.retriable`` does. Third-party errors are wrapped at the layer that
talks to the third party (``raise BackendUnavailable(...) from e``), so a caller
catches a layer's base, or asks ``retriable``, never a library's own classes.

The configuration's error is :class:`poold.config.ConfigError`; the client's
are under :class:`poold.client.errors.PooldError`; both derive from :class:`Error`.
"""

from __future__ import annotations


class Error(Exception):
    """Root of poold's own exceptions; ``str()`` is a sentence for a person."""

    retriable: bool = False
    """True when the cause is temporary (a dropped connection, a full queue, a
    5xx): the same call may succeed later. False: it will fail the same way."""


class DataError(Error):
    """The Kafka data plane (:mod:`poold.data`)."""


class JobError(Error):
    """Job records, their files and exports (:mod:`poold.jobs`)."""


class ModuleError(Error):
    """Modules: inspection, upload, storage (:mod:`poold.runtime`, :mod:`poold.modules`)."""


class BackendError(Error):
    """Where workers run: local processes, Kubernetes (:mod:`poold.backends`)."""


class SchedulerError(Error):
    """The queue, the pool and the scheduler (:mod:`poold.sched`)."""


class RequestError(Error):
    """An HTTP request to poold's API (:mod:`poold.api`)."""
