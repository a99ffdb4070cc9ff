"""The fake API server's object store: one resourceVersion, history, watches.

Everything here is synchronous and runs on the event loop, so each write is
atomic with respect to every reader; that is what lets a watch register and
replay history without a gap, and what lets the kubelet do read-modify-write
status updates without optimistic-concurrency loops.  Stored objects are never
mutated in place (each write stores a fresh dict), so a ``Change`` can hand
out the stored snapshot to watchers without copying.
"""

from __future__ import annotations

import asyncio
import copy
import random
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import resources as res
from .errors import STALE_DETAIL, StatusError, already_exists, bad_request, conflict, not_found
from .patch import apply_patch
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector

Obj = dict[str, Any]
Key = tuple[str, str, str, str]  # (group, plural, namespace, name)

_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what apiserver's generateName uses
_IMMUTABLE_META = (
    "uid",
    "creationTimestamp",
    "namespace",
    "name",
    "generateName",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
)


def rfc3339(when: datetime | None = None) -> str:
    """A ``metav1.Time`` string (second precision, UTC, ``Z``)."""
    when = when or datetime.now(UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def random_suffix() -> str:
    """Five characters, like the API server appends to ``generateName``."""
    return "".join(random.choice(_NAME_ALPHABET) for _ in range(5))


@dataclass(frozen=True)
class Change:
    """One committed write, as kept in the history and fanned out to watches.

    ``obj`` is the object after the write (for DELETED: the last state with the
    deletion's resourceVersion), ``old`` the state before (None for ADDED).
    Both are shared snapshots: never mutate them.
    """

    type: str
    rt: ResourceType
    obj: Obj
    old: Obj | None
    rv: int


@dataclass(frozen=True)
class Bookmark:
    """A request to tell a watcher it has seen everything up to ``rv``."""

    rv: int


class Subscription:
    """A filtered stream of changes; what a watch (or the kubelet) consumes."""

    def __init__(
        self,
        store: ObjectStore,
        rt: ResourceType | None,
        namespace: str | None = None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> None:
        self.store = store
        self.rt = rt
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.queue: asyncio.Queue[Change | Bookmark | None] = asyncio.Queue()

    def selects(self, obj: Mapping[str, Any]) -> bool:
        """Whether an object passes this subscription's filters."""
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace") != self.namespace:
            return False
        if self.labels is not None and not self.labels.matches(meta.get("labels")):
            return False
        return self.fields is None or self.fields.matches(obj)

    def translate(self, change: Change) -> tuple[str, Obj] | None:
        """The event this watcher sees for ``change``, like the watch cache.

        An object that starts matching the selector is ADDED for this watcher,
        one that stops matching is DELETED, even though neither was created or
        removed; that is the real server's behaviour and backends rely on it.
        """
        if self.rt is not None and change.rt != self.rt:
            return None
        now = self.selects(change.obj)
        if change.type == "ADDED" or change.old is None:
            return ("ADDED", change.obj) if now else None
        if change.type == "DELETED":
            return ("DELETED", change.obj) if now else None
        before = self.selects(change.old)
        if before and now:
            return ("MODIFIED", change.obj)
        if now:
            return ("ADDED", change.obj)
        if before:
            return ("DELETED", change.obj)
        return None

    def request_bookmark(self) -> None:
        """Queue a bookmark behind every change delivered so far."""
        self.queue.put_nowait(Bookmark(self.store.rv))

    def close(self) -> None:
        """Detach and wake the consumer with ``None``."""
        self.store.unsubscribe(self)
        self.queue.put_nowait(None)


class ObjectStore:
    """All objects, the global resourceVersion and the bounded event history."""

    def __init__(self, history: int = 1000) -> None:
        # Start above 0: "0" means "any version" to a watch, so no real list
        # ever returns it, and a list of an empty store must not either.
        self.rv = 1
        self.objects: dict[Key, Obj] = {}
        self.history: deque[Change] = deque()
        self.history_limit = history
        # Every change with rv > history_floor is in ``history``.
        self.history_floor = self.rv
        self.subscriptions: set[Subscription] = set()
        self.name_suffix: Callable[[], str] = random_suffix
        self._changed = asyncio.Event()

    # -- reading -----------------------------------------------------------

    @staticmethod
    def key(rt: ResourceType, namespace: str, name: str) -> Key:
        """The storage key of an object."""
        return (rt.group, rt.plural, namespace, name)

    def peek(self, rt: ResourceType, namespace: str, name: str) -> Obj | None:
        """The stored snapshot (do not mutate), or None."""
        return self.objects.get(self.key(rt, namespace, name))

    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        """A private copy of an object; 404 if absent."""
        obj = self.peek(rt, namespace, name)
        if obj is None:
            raise not_found(rt.plural, name, rt.group)
        return copy.deepcopy(obj)

    def select(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> list[Obj]:
        """Matching snapshots sorted by (namespace, name), like etcd order."""
        sub = Subscription(self, rt, namespace, labels, fields)
        found = [
            obj
            for (group, plural, _, _), obj in self.objects.items()
            if (group, plural) == (rt.group, rt.plural) and sub.selects(obj)
        ]
        return sorted(found, key=lambda o: (o["metadata"]["namespace"], o["metadata"]["name"]))

    # -- writing -----------------------------------------------------------

    def create(self, rt: ResourceType, namespace: str, body: Mapping[str, Any]) -> Obj:
        """POST semantics: generateName, defaults, validation, 409 on clash."""
        if not isinstance(body, Mapping):
            raise bad_request("the request body must be a JSON object")
        res.check_namespace(body, namespace)
        obj: Obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = str(meta["generateName"])[:58] + self.name_suffix()
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(field, None)
        meta.update(
            namespace=namespace,
            uid=str(uuid.uuid4()),
            creationTimestamp=rfc3339(),
            generation=1,
        )
        obj["kind"], obj["apiVersion"] = rt.kind, rt.api_version
        if rt.is_pod:
            res.default_pod(obj)
        res.validate_meta(rt, obj)
        if rt.is_pod:
            res.validate_pod(obj)
        key = self.key(rt, namespace, meta["name"])
        if key in self.objects:
            raise already_exists(rt.plural, meta["name"], rt.group)
        return self._commit("ADDED", rt, key, obj, None)

    def replace(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        subresource: str | None = None,
    ) -> Obj:
        """PUT semantics, with the resourceVersion precondition (409)."""
        if not isinstance(body, Mapping):
            raise bad_request("the request body must be a JSON object")
        old = self.peek(rt, namespace, name)
        if old is None:
            raise not_found(rt.plural, name, rt.group)
        meta = body.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise bad_request(
                f"the name of the object ({meta['name']}) does not match "
                f"the name on the URL ({name})"
            )
        res.check_namespace(body, namespace)
        want = meta.get("resourceVersion")
        if want and str(want) != old["metadata"]["resourceVersion"]:
            raise conflict(rt.plural, name, STALE_DETAIL, rt.group)
        return self._update(rt, old, copy.deepcopy(dict(body)), subresource)

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        body: Any,
        subresource: str | None = None,
    ) -> Obj:
        """PATCH semantics; a resourceVersion in the patched result is a precondition."""
        old = self.peek(rt, namespace, name)
        if old is None:
            raise not_found(rt.plural, name, rt.group)
        new = apply_patch(content_type, copy.deepcopy(old), body)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        want = meta.get("resourceVersion")
        if want and str(want) != old["metadata"]["resourceVersion"]:
            raise conflict(rt.plural, name, STALE_DETAIL, rt.group)
        if meta.get("name", name) != name or meta.get("namespace", namespace) != namespace:
            raise bad_request("a patch may not change metadata.name or metadata.namespace")
        return self._update(rt, old, new, subresource)

    def _update(self, rt: ResourceType, old: Obj, new: Obj, subresource: str | None) -> Obj:
        if subresource == "status":
            status = new.get("status")
            new = copy.deepcopy(old)
            if status is None:
                new.pop("status", None)
            else:
                new["status"] = status
        elif subresource is not None:
            raise not_found(f"{rt.plural}/{subresource}", old["metadata"]["name"], rt.group)
        else:
            meta = new.setdefault("metadata", {})
            for field in _IMMUTABLE_META:
                if field in old["metadata"]:
                    meta[field] = old["metadata"][field]
                else:
                    meta.pop(field, None)
            if rt.has_status:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
            res.validate_meta(rt, new)
            if rt.is_pod:
                res.default_pod_spec(new)
                res.check_pod_update(old, new)
            if new.get("spec") != old.get("spec"):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        new["kind"], new["apiVersion"] = rt.kind, rt.api_version
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old:  # a no-op write neither bumps the version nor emits an event
            return copy.deepcopy(old)
        key = self.key(rt, old["metadata"]["namespace"], old["metadata"]["name"])
        return self._commit("MODIFIED", rt, key, new, old)

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        grace_period: int | None = None,
        preconditions: Mapping[str, Any] | None = None,
    ) -> Obj:
        """DELETE semantics; pods on a node only get a deletionTimestamp."""
        old = self.peek(rt, namespace, name)
        if old is None:
            raise not_found(rt.plural, name, rt.group)
        meta = old["metadata"]
        pre = preconditions or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise conflict(
                rt.plural,
                name,
                f"Precondition failed: UID in precondition: {pre['uid']}, "
                f"UID in object meta: {meta['uid']}",
                rt.group,
            )
        if pre.get("resourceVersion") and str(pre["resourceVersion"]) != meta["resourceVersion"]:
            raise conflict(
                rt.plural,
                name,
                f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}",
                rt.group,
            )
        if rt.is_pod:
            spec, status = old.get("spec") or {}, old.get("status") or {}
            grace = int(
                spec.get("terminationGracePeriodSeconds", 30)
                if grace_period is None
                else grace_period
            )
            bound = bool(spec.get("nodeName"))
            if grace > 0 and bound and status.get("phase") not in res.TERMINAL_PHASES:
                current = meta.get("deletionGracePeriodSeconds")
                if current is not None and int(current) <= grace:
                    return copy.deepcopy(old)  # already terminating at least this fast
                new = copy.deepcopy(old)
                deadline = datetime.now(UTC) + timedelta(seconds=grace)
                new["metadata"]["deletionTimestamp"] = rfc3339(deadline)
                new["metadata"]["deletionGracePeriodSeconds"] = grace
                return self._commit("MODIFIED", rt, self.key(rt, namespace, name), new, old)
        return self._commit("DELETED", rt, self.key(rt, namespace, name), copy.deepcopy(old), old)

    def remove(self, rt: ResourceType, namespace: str, name: str, uid: str | None = None) -> bool:
        """Drop an object at once (the kubelet's final delete); False if gone."""
        old = self.peek(rt, namespace, name)
        if old is None or (uid is not None and old["metadata"]["uid"] != uid):
            return False
        self._commit("DELETED", rt, self.key(rt, namespace, name), copy.deepcopy(old), old)
        return True

    def mutate(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        fn: Callable[[Obj], None],
        uid: str | None = None,
    ) -> Obj | None:
        """Atomic read-modify-write that skips validation (kubelet/test use).

        Returns the stored result, or None when the object is gone (or was
        replaced by a namesake with another uid).  A no-op is not written.
        """
        old = self.peek(rt, namespace, name)
        if old is None or (uid is not None and old["metadata"]["uid"] != uid):
            return None
        new = copy.deepcopy(old)
        fn(new)
        if new == old:
            return old
        return self._commit("MODIFIED", rt, self.key(rt, namespace, name), new, old)

    def _commit(self, type_: str, rt: ResourceType, key: Key, new: Obj, old: Obj | None) -> Obj:
        self.rv += 1
        new["metadata"]["resourceVersion"] = str(self.rv)
        if type_ == "DELETED":
            del self.objects[key]
        else:
            self.objects[key] = new
        change = Change(type_, rt, new, old, self.rv)
        self.history.append(change)
        while len(self.history) > self.history_limit:
            self.history_floor = self.history.popleft().rv
        for sub in list(self.subscriptions):
            sub.queue.put_nowait(change)
        self._changed.set()
        self._changed = asyncio.Event()
        return copy.deepcopy(new)

    # -- watching ----------------------------------------------------------

    def subscribe(
        self,
        rt: ResourceType | None,
        namespace: str | None = None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> Subscription:
        """Start receiving every later change (filtered at ``translate``)."""
        sub = Subscription(self, rt, namespace, labels, fields)
        self.subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering changes to ``sub``."""
        self.subscriptions.discard(sub)

    def changes_since(self, rv: int) -> list[Change]:
        """History after ``rv``; ``410 Expired`` if it was already dropped."""
        if rv < self.history_floor:
            raise StatusError(
                410, f"too old resource version: {rv} ({self.history_floor + 1})", "Expired"
            )
        return [c for c in self.history if c.rv > rv]

    def expire_history(self) -> None:
        """Forget all history, as after an etcd compaction.

        The version is bumped first so that every client holding any version
        it has seen so far gets 410 on resume, while a fresh list returns the
        new version, from which a watch works again.
        """
        self.rv += 1
        self.history.clear()
        self.history_floor = self.rv

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait (without polling) until ``predicate()`` holds after some write."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                if not predicate():
                    raise TimeoutError(f"condition not met within {timeout}s") from None
