"""The object store behind the emulated API server: one lock, one revision counter, watches.

It follows the API conventions
(https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md):
the server sets ``uid``, ``resourceVersion`` (one global counter, as etcd's revision),
``creationTimestamp`` and ``generation``; a create of an existing name is 409 AlreadyExists; an
update carrying a stale ``resourceVersion`` is 409 Conflict; deletion honours finalizers
(``deletionTimestamp`` set, object removed once ``metadata.finalizers`` is empty) and graceful
deletion of pods (``deletionGracePeriodSeconds``; removed after the grace period times the
sandbox time factor).

Stored objects are never changed in place: every write stores a new dict, so readers may hold
and serialise a stored object without copying. Callers must not mutate what they get back from
the ``*_ref`` methods.
"""

from __future__ import annotations

import copy
import datetime as dt
import queue
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from herd_sandbox.kube import convert, errors
from herd_sandbox.kube.errors import ApiError
from herd_sandbox.kube.resources import Registry, ResourceType

EXITS_AFTER_ANNOTATION = "sandbox.herd.io/exits-after-seconds"

Obj = dict[str, Any]
TypeKey = tuple[str, str]
ObjKey = tuple[str, str]  # (namespace or "", name)

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_LABEL_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def now_rfc3339(offset: float = 0.0) -> str:
    """The current UTC time (plus ``offset`` seconds) as the API formats timestamps."""
    moment = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    """One change: ``type`` is ADDED, MODIFIED or DELETED; ``old`` is the previous object or None."""

    type: str
    key: TypeKey
    obj: Obj
    old: Obj | None
    rv: int


@dataclass
class Watcher:
    """A watch subscription: events of one type, in one namespace (or all), filtered by selectors.

    Events arrive on ``queue`` as ``(type, object)``; ``None`` means the store closed the watch.
    A label or field selector turns an object leaving the selection into DELETED and one
    entering it into ADDED, as the real watch cache does.
    """

    key: TypeKey
    namespace: str | None
    predicate: Callable[[Obj], bool]
    queue: queue.Queue[tuple[str, Obj] | None] = field(default_factory=queue.Queue)

    def offer(self, event: Event) -> None:
        """Queue ``event`` if it concerns this watch."""
        if event.key != self.key:
            return
        if self.namespace and (event.obj.get("metadata") or {}).get("namespace") != self.namespace:
            return
        now = self.predicate(event.obj)
        before = event.old is not None and self.predicate(event.old)
        if event.type == "DELETED":
            if now:
                self.queue.put(("DELETED", event.obj))
        elif now and (before or event.type == "ADDED"):
            self.queue.put((event.type, event.obj))
        elif now:
            self.queue.put(("ADDED", event.obj))
        elif before:
            self.queue.put(("DELETED", event.obj))


Admission = Callable[[str, ResourceType, Obj, Obj | None], Obj]


class Store:
    """All objects of the emulated cluster.

    Args:
        registry: the resource table (CRD rows are added to it by admission).
        history: how many events are kept for watches that resume from a resourceVersion; older
            ones answer 410 Expired ``too old resource version``.
        time_factor: real seconds per simulated second for grace periods (0.01 makes a 30 s
            grace period last 0.3 s).
    """

    def __init__(self, registry: Registry, history: int = 5000, time_factor: float = 1.0) -> None:
        self.registry = registry
        self.lock = threading.RLock()
        self.time_factor = time_factor
        self._objects: dict[TypeKey, dict[ObjKey, Obj]] = {}
        self._by_uid: dict[str, tuple[TypeKey, ObjKey]] = {}
        self._rv = 1
        self._history: deque[Event] = deque(maxlen=max(1, history))
        self._oldest_rv = 0
        self._watchers: list[Watcher] = []
        self._listeners: list[Callable[[Event], None]] = []
        self._admission: dict[TypeKey, list[Admission]] = {}
        self._due: dict[tuple[TypeKey, ObjKey], tuple[float, str]] = {}
        self._applied: dict[str, dict[str, Obj]] = {}  # uid → field manager → last applied configuration
        self.changed = threading.Condition(self.lock)

    # -- plumbing -----------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """The current global resourceVersion (an integer, sent as a string)."""
        with self.lock:
            return self._rv

    def add_admission(self, key: TypeKey, hook: Admission) -> None:
        """Run ``hook(operation, rtype, new, old) -> new`` on every CREATE/UPDATE of ``key`` objects."""
        self._admission.setdefault(key, []).append(hook)

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` (under the store lock; keep it short) after every change."""
        with self.lock:
            self._listeners.append(listener)

    def _emit(self, etype: str, key: TypeKey, obj: Obj, old: Obj | None) -> None:
        event = Event(etype, key, obj, old, self._rv)
        if len(self._history) == self._history.maxlen:
            self._oldest_rv = self._history[0].rv
        self._history.append(event)
        for watcher in self._watchers:
            watcher.offer(event)
        for listener in self._listeners:
            listener(event)
        self.changed.notify_all()

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _bucket(self, key: TypeKey) -> dict[ObjKey, Obj]:
        return self._objects.setdefault(key, {})

    @staticmethod
    def _okey(rtype: ResourceType, namespace: str | None, name: str) -> ObjKey:
        return ((namespace or "") if rtype.namespaced else "", name)

    # -- reads --------------------------------------------------------------------------

    def get_ref(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        """The stored object (do not mutate). Raises ApiError 404 NotFound."""
        with self.lock:
            obj = self._bucket(rtype.key).get(self._okey(rtype, namespace, name))
        if obj is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        return obj

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj:
        """A private copy of the object. Raises ApiError 404 NotFound."""
        return copy.deepcopy(self.get_ref(rtype, namespace, name))

    def find(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        """The stored object (do not mutate) or None."""
        with self.lock:
            return self._bucket(rtype.key).get(self._okey(rtype, namespace, name))

    def by_uid(self, uid: str) -> Obj | None:
        """The stored object with this uid, any type, or None."""
        with self.lock:
            where = self._by_uid.get(uid)
            return self._objects[where[0]].get(where[1]) if where else None

    def list_ref(
        self, rtype: ResourceType, namespace: str | None = None, predicate: Callable[[Obj], bool] | None = None
    ) -> tuple[list[Obj], int]:
        """Stored objects (do not mutate), sorted by namespace and name, and the list resourceVersion."""
        with self.lock:
            bucket = self._bucket(rtype.key)
            rv = self._rv
            keys = sorted(bucket)
            items = [bucket[k] for k in keys if not namespace or k[0] == namespace]
        if predicate is not None:
            items = [o for o in items if predicate(o)]
        return items, rv

    # -- writes -------------------------------------------------------------------------

    def _admit(self, op: str, rtype: ResourceType, obj: Obj, old: Obj | None) -> Obj:
        for hook in self._admission.get(rtype.key, []):
            obj = hook(op, rtype, obj, old)
        return obj

    def _validate_meta(self, rtype: ResourceType, obj: Obj, name: str) -> None:
        if not name:
            raise errors.invalid(rtype.kind, rtype.group, "", [("FieldValueRequired", "metadata.name",
                                                                   "Required value: name or generateName is required")])
        pattern = _LABEL_NAME_RE if rtype.plural in ("namespaces", "services") else _NAME_RE
        if len(name) > 253 or not pattern.match(name):
            raise errors.invalid(rtype.kind, rtype.group, name, [(
                "FieldValueInvalid", "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric '
                "characters, '-' or '.', and must start and end with an alphanumeric character")])

    def _check_namespace(self, rtype: ResourceType, namespace: str | None) -> None:
        if not rtype.namespaced:
            return
        if not namespace:
            raise errors.bad_request("the namespace of the object does not match the namespace on the request")
        ns = self._bucket(("", "namespaces")).get(("", namespace))
        if ns is None:
            raise errors.not_found("namespaces", "", namespace)
        if (ns.get("metadata") or {}).get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f'{rtype.plural} "{namespace}" is forbidden: unable to create new content '
                           f"in namespace {namespace} because it is being terminated",
                           {"name": namespace, "kind": rtype.plural})

    def create(self, rtype: ResourceType, namespace: str | None, obj: Obj) -> Obj:
        """Store a new object and return it (the stored copy; do not mutate).

        Sets ``uid``, ``resourceVersion``, ``creationTimestamp``, ``generation`` (1) and, for
        namespaced types, ``metadata.namespace``; ``generateName`` gets a random suffix.

        Raises:
            ApiError: 409 AlreadyExists, 404 when the namespace does not exist, 422 Invalid name,
                403 when the namespace is terminating, 400 on a namespace mismatch.
        """
        obj = copy.deepcopy(convert.to_storage(rtype, obj))
        rtype = self.registry.storage_type(rtype)
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and namespace and body_ns != namespace:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent "
                                         "on the request")
            namespace = namespace or body_ns
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name", "")
        self._validate_meta(rtype, obj, name)
        obj["apiVersion"] = rtype.api_version
        obj["kind"] = rtype.kind
        with self.lock:
            self._check_namespace(rtype, namespace)
            bucket = self._bucket(rtype.key)
            okey = self._okey(rtype, namespace, name)
            if okey in bucket:
                raise errors.already_exists(rtype.plural, rtype.group, name)
            for drop in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
                meta.pop(drop, None)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = now_rfc3339()
            meta["generation"] = 1
            obj = self._admit("CREATE", rtype, obj, None)
            obj["metadata"]["resourceVersion"] = self._next_rv()
            bucket[okey] = obj
            self._by_uid[obj["metadata"]["uid"]] = (rtype.key, okey)
            self._emit("ADDED", rtype.key, obj, None)
            return obj

    def update(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        obj: Obj,
        subresource: str | None = None,
        check_version: bool = True,
    ) -> Obj:
        """Replace an object (PUT semantics) and return the stored result.

        With ``subresource="status"`` only ``status`` (and labels/annotations) change; on the main
        resource of a type that has a status subresource, ``status`` is kept from the old object,
        as the real server does. ``metadata.generation`` increases when anything outside
        ``metadata`` and ``status`` changes. Removing the last finalizer from an object being
        deleted removes it.

        Raises:
            ApiError: 404 NotFound; 409 Conflict when ``metadata.resourceVersion`` is set and stale
                (or the uid differs); 400 when the body names another object.
        """
        obj = copy.deepcopy(convert.to_storage(rtype, obj))
        rtype = self.registry.storage_type(rtype)
        meta = obj.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(f'the name of the object ({meta["name"]}) does not match the name on the URL '
                                     f"({name})")
        with self.lock:
            bucket = self._bucket(rtype.key)
            okey = self._okey(rtype, namespace, name)
            old = bucket.get(okey)
            if old is None:
                raise errors.not_found(rtype.plural, rtype.group, name)
            old_meta = old["metadata"]
            sent_rv = meta.get("resourceVersion")
            if check_version and sent_rv and sent_rv != old_meta["resourceVersion"]:
                raise errors.conflict(rtype.plural, rtype.group, name)
            if meta.get("uid") and meta["uid"] != old_meta["uid"]:
                raise errors.conflict(rtype.plural, rtype.group, name)
            has_status = rtype.subresource("status") is not None
            if subresource == "status":
                new = copy.deepcopy(old)
                new["status"] = obj.get("status")
                if new["status"] is None:
                    new.pop("status")
                for keep in ("labels", "annotations"):
                    if keep in meta:
                        new["metadata"][keep] = meta[keep]
                obj = new
            else:
                obj["apiVersion"] = rtype.api_version
                obj["kind"] = rtype.kind
                if has_status:
                    if "status" in old:
                        obj["status"] = copy.deepcopy(old["status"])
                    else:
                        obj.pop("status", None)
                meta = obj["metadata"]
                for fixed in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
                    if fixed in old_meta:
                        meta[fixed] = old_meta[fixed]
                    else:
                        meta.pop(fixed, None)
                meta["name"] = name
                if rtype.namespaced:
                    meta["namespace"] = old_meta.get("namespace")
                spec_new = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
                spec_old = {k: v for k, v in old.items() if k not in ("metadata", "status")}
                meta["generation"] = old_meta.get("generation", 1) + (1 if spec_new != spec_old else 0)
                if old_meta.get("deletionTimestamp"):
                    added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
                    if added:
                        raise errors.invalid(rtype.kind, rtype.group, name, [(
                            "FieldValueForbidden", "metadata.finalizers",
                            "Forbidden: no new finalizers can be added if the object is being deleted")])
            obj = self._admit("UPDATE", rtype, obj, old)
            if {**obj, "metadata": {**obj["metadata"], "resourceVersion": old_meta["resourceVersion"]}} == old:
                return old  # no-op updates keep the resourceVersion, as the real server does
            obj["metadata"]["resourceVersion"] = self._next_rv()
            if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers") \
                    and not self._pending(rtype.key, okey):
                return self._remove(rtype.key, okey, obj)
            bucket[okey] = obj
            self._emit("MODIFIED", rtype.key, obj, old)
            return obj

    def modify(
        self, rtype: ResourceType, namespace: str | None, name: str, change: Callable[[Obj], Obj | None],
        subresource: str | None = None,
    ) -> Obj | None:
        """Read-modify-write under the lock: ``change`` gets a private copy and edits it in place
        (or returns a replacement). Returns the stored result, or None when the object is gone."""
        with self.lock:
            current = self.find(rtype, namespace, name)
            if current is None:
                return None
            draft = copy.deepcopy(current)
            result = change(draft)
            return self.update(rtype, namespace, name, draft if result is None else result,
                               subresource=subresource, check_version=False)

    def _pending(self, key: TypeKey, okey: ObjKey) -> bool:
        due = self._due.get((key, okey))
        return due is not None and due[0] > time.monotonic()

    def applied(self, uid: str, manager: str) -> Obj | None:
        """The configuration ``manager`` last applied (server-side apply) to the object ``uid``."""
        with self.lock:
            return self._applied.get(uid, {}).get(manager)

    def remember_applied(self, uid: str, manager: str, config: Obj) -> None:
        """Record what ``manager`` applied to ``uid`` (forgotten when the object is removed)."""
        with self.lock:
            self._applied.setdefault(uid, {})[manager] = copy.deepcopy(config)

    def _remove(self, key: TypeKey, okey: ObjKey, obj: Obj) -> Obj:
        bucket = self._bucket(key)
        old = bucket.pop(okey, None)
        self._by_uid.pop(obj["metadata"]["uid"], None)
        self._applied.pop(obj["metadata"]["uid"], None)
        self._due.pop((key, okey), None)
        if obj["metadata"]["resourceVersion"] == (old or {}).get("metadata", {}).get("resourceVersion"):
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = self._next_rv()
        self._emit("DELETED", key, obj, old)
        return obj

    def delete(
        self,
        rtype: ResourceType,
        namespace: str | None,
        name: str,
        grace_period: int | None = None,
        preconditions: dict[str, str] | None = None,
    ) -> tuple[Obj, bool]:
        """Delete an object; returns (object, removed_now).

        Objects with finalizers get ``deletionTimestamp`` and stay until the finalizers are
        removed. Pods bound to a node and not finished get a graceful deletion: grace is
        ``grace_period`` or ``spec.terminationGracePeriodSeconds`` (default 30); the pod is
        removed by :meth:`reap` after grace × time factor real seconds; ``grace_period=0`` removes
        at once. A pod's containers ignore SIGTERM and run out the grace period unless the pod is
        annotated ``sandbox.herd.io/exits-after-seconds: "<s>"`` (it exits that long after
        SIGTERM, if sooner). Namespaces go Terminating (their content is removed by the controllers).

        Raises:
            ApiError: 404 NotFound; 409 Conflict when a precondition (uid, resourceVersion) fails.
        """
        with self.lock:
            okey = self._okey(rtype, namespace, name)
            bucket = self._bucket(rtype.key)
            old = bucket.get(okey)
            if old is None:
                raise errors.not_found(rtype.plural, rtype.group, name)
            meta = old["metadata"]
            for field_name in ("uid", "resourceVersion"):
                want = (preconditions or {}).get(field_name)
                if want and want != meta.get(field_name):
                    label = "UID" if field_name == "uid" else "ResourceVersion"
                    raise ApiError(409, "Conflict", f"Precondition failed: {label} in precondition: {want}, "
                                   f"{label} in object meta: {meta.get(field_name)}",
                                   {"name": name, "group": rtype.group, "kind": rtype.plural})
            grace = self._grace(rtype, old, grace_period)
            finalizers = list(meta.get("finalizers") or [])
            if rtype.key == ("", "namespaces"):
                finalizers = finalizers or ["kubernetes"]
            if not finalizers and grace <= 0:
                return self._remove(rtype.key, okey, old), True
            new = copy.deepcopy(old)
            new_meta = new["metadata"]
            if rtype.key == ("", "namespaces"):
                new.setdefault("status", {})["phase"] = "Terminating"
            due_in = grace * self.time_factor
            exits_after = (meta.get("annotations") or {}).get(EXITS_AFTER_ANNOTATION)
            if rtype.key == ("", "pods") and exits_after is not None:
                try:
                    due_in = min(grace, max(0.0, float(exits_after))) * self.time_factor
                except ValueError:
                    pass
            existing = self._due.get((rtype.key, okey))
            if grace > 0 and (existing is None or time.monotonic() + due_in < existing[0]):
                self._due[(rtype.key, okey)] = (time.monotonic() + due_in, meta["uid"])
                new_meta["deletionTimestamp"] = now_rfc3339(grace)
                new_meta["deletionGracePeriodSeconds"] = grace
            elif not new_meta.get("deletionTimestamp"):
                new_meta["deletionTimestamp"] = now_rfc3339()
                new_meta["deletionGracePeriodSeconds"] = 0
            if new == old:
                return old, False
            new_meta["resourceVersion"] = self._next_rv()
            bucket[okey] = new
            self._emit("MODIFIED", rtype.key, new, old)
            return new, False

    def _grace(self, rtype: ResourceType, obj: Obj, requested: int | None) -> int:
        if rtype.key != ("", "pods"):
            return 0
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return 0
        if requested is not None:
            return max(0, int(requested))
        return int(spec.get("terminationGracePeriodSeconds", 30))

    def reap(self, hold: Callable[[TypeKey, Obj], bool] | None = None) -> int:
        """Remove objects whose grace period ran out and that have no finalizers; returns how many.

        Args:
            hold: ``(key, object) -> True`` keeps an object that is due (and asks again next time):
                a pod on a node whose kubelet is gone is never confirmed terminated.
        """
        removed = 0
        with self.lock:
            moment = time.monotonic()
            for (key, okey), (due, uid) in list(self._due.items()):
                if due > moment:
                    continue
                obj = self._bucket(key).get(okey)
                if obj is not None and obj["metadata"]["uid"] == uid and hold is not None and hold(key, obj):
                    self._due[(key, okey)] = (moment + 1.0, uid)  # ask again later (or on the next change)
                    continue
                self._due.pop((key, okey), None)
                if obj is None or obj["metadata"]["uid"] != uid:
                    continue
                if obj["metadata"].get("finalizers"):
                    continue
                self._remove(key, okey, obj)
                removed += 1
        return removed

    def next_due(self) -> float | None:
        """Monotonic time of the next graceful removal, or None."""
        with self.lock:
            return min((d for d, _ in self._due.values()), default=None)

    def force_remove(self, rtype: ResourceType, namespace: str | None, name: str) -> bool:
        """Remove an object now, ignoring finalizers and grace (the garbage collector's path)."""
        with self.lock:
            okey = self._okey(rtype, namespace, name)
            obj = self._bucket(rtype.key).get(okey)
            if obj is None:
                return False
            self._remove(rtype.key, okey, obj)
            return True

    def remove_type(self, key: TypeKey) -> None:
        """Drop every object of a storage key (a deleted CRD's custom resources)."""
        with self.lock:
            for okey, obj in list(self._bucket(key).items()):
                self._remove(key, okey, obj)

    def namespaced_keys(self) -> Iterable[TypeKey]:
        """Storage keys that currently hold namespaced objects."""
        with self.lock:
            return [k for k, b in self._objects.items() if any(ok[0] for ok in b)]

    def list_namespace(self, key: TypeKey, namespace: str) -> list[ObjKey]:
        """Object keys of one storage key in one namespace."""
        with self.lock:
            return [ok for ok in self._bucket(key) if ok[0] == namespace]

    # -- watches ------------------------------------------------------------------------

    def watch(
        self,
        rtype: ResourceType,
        namespace: str | None,
        predicate: Callable[[Obj], bool],
        resource_version: str | None,
        initial: bool | None = None,
    ) -> tuple[Watcher, list[tuple[str, Obj]]]:
        """Start a watch; returns the watcher and the events to send before live ones.

        ``resource_version`` None or ``"0"`` starts with ADDED events for every current object
        (as the real server does); a number replays the retained events after it.
        ``initial=True`` forces the ADDED events (``sendInitialEvents``).

        Raises:
            ApiError: 410 Expired ``too old resource version`` when events after it were dropped;
                400 for a non-numeric version.
        """
        with self.lock:
            watcher = Watcher(rtype.key, namespace if rtype.namespaced else None, predicate)
            backlog: list[tuple[str, Obj]] = []
            if initial or resource_version in (None, "", "0"):
                items, _ = self.list_ref(rtype, namespace if rtype.namespaced else None, predicate)
                backlog = [("ADDED", o) for o in items]
            else:
                try:
                    since = int(resource_version)
                except ValueError as exc:
                    raise errors.bad_request(f"invalid resource version {resource_version!r}") from exc
                if since < self._oldest_rv:
                    raise errors.gone(f"too old resource version: {since} ({self._oldest_rv + 1})")
                probe = Watcher(watcher.key, watcher.namespace, predicate)
                for event in self._history:
                    if event.rv > since:
                        probe.offer(event)
                while not probe.queue.empty():
                    item = probe.queue.get_nowait()
                    if item is not None:
                        backlog.append(item)
            self._watchers.append(watcher)
            return watcher, backlog

    def watcher_count(self, key: TypeKey) -> int:
        """How many watches of storage key ``key`` are open."""
        with self.lock:
            return sum(1 for w in self._watchers if w.key == key)

    def unwatch(self, watcher: Watcher) -> None:
        """Stop feeding ``watcher``."""
        with self.lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def close_watches(self) -> None:
        """End every watch (the server is stopping)."""
        with self.lock:
            for watcher in self._watchers:
                watcher.queue.put(None)
            self._watchers.clear()
