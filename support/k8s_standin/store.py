"""The object store: one resourceVersion counter, the objects, and a log of changes.

Why: the API server's consistency model is etcd's. Every write gets a new, increasing
`metadata.resourceVersion`; a list carries the version it was read at; a watch from
version N replays every change after N, in order, and an expired N gets `410 Gone`
("Resource versions" and "Efficient detection of changes" in
https://kubernetes.io/docs/reference/using-api/api-concepts/). The store keeps the
last changes in memory for that, and wakes waiting watches on each write.
"""

import collections
import copy
import threading

LOG_SIZE = 20000


class Store:
    def __init__(self):
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.rv = 0
        self.objects = {}  # (resource, namespace or "", name) -> object
        # (rv, type, resource, old object or None, new object)
        self.log = collections.deque(maxlen=LOG_SIZE)
        self.stopping = False

    def get(self, resource, ns, name):
        with self.lock:
            obj = self.objects.get((resource, ns or "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def list(self, resource, ns=None):
        with self.lock:
            keys = sorted(k for k in self.objects if k[0] == resource and (ns is None or k[1] == (ns or "")))
            return [copy.deepcopy(self.objects[k]) for k in keys], str(self.rv)

    def write(self, resource, obj):
        """Store obj (create or replace) under a new resourceVersion; returns a copy."""
        with self.lock:
            meta = obj["metadata"]
            key = (resource, meta.get("namespace", ""), meta["name"])
            old = self.objects.get(key)
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            new = copy.deepcopy(obj)
            self.objects[key] = new
            self.log.append((self.rv, "MODIFIED" if old is not None else "ADDED", resource, old, new))
            self.changed.notify_all()
            return copy.deepcopy(new)

    def remove(self, resource, ns, name):
        """Remove the object; the DELETED event carries it at a new resourceVersion."""
        with self.lock:
            old = self.objects.pop((resource, ns or "", name), None)
            if old is None:
                return None
            self.rv += 1
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self.rv)
            self.log.append((self.rv, "DELETED", resource, old, gone))
            self.changed.notify_all()
            return copy.deepcopy(gone)

    def oldest(self):
        """The oldest resourceVersion a watch can start from."""
        with self.lock:
            return self.log[0][0] - 1 if len(self.log) == LOG_SIZE else 0

    def since(self, rv, resource):
        """The changes of one resource after rv, and the version they were read at."""
        with self.lock:
            return [e for e in self.log if e[0] > rv and e[2] == resource], self.rv

    def wait(self, rv, timeout):
        """Block until something newer than rv is written, or timeout."""
        with self.lock:
            if self.rv <= rv and not self.stopping:
                self.changed.wait(timeout)
            return self.rv
