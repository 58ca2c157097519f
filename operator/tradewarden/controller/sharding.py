"""Sharding accounts across operator replicas, arbitrated by Kubernetes Leases (coordination.k8s.io/v1).

Off by default (``shards=0``): one active replica, kopf's peering as before. With ``--shards N``
(``TRADEWARDEN_SHARDS``), every replica watches every account (kopf standalone, no peering) and
serves only the accounts of the shards whose Lease it holds.

The model (every rule is a pure function below, with table tests; ``Sharder`` is the I/O around them):

- An account's shard is a stable hash of ``namespace/name`` modulo N (``shard_of``): it never depends
  on the replicas. A shard's preferred replica is the rendezvous (highest-random-weight) choice among
  the live members (``preferred``), so a replica joining or leaving moves only the shards it gains or
  loses.
- Membership: each replica holds its own Lease ``<group>-member-<identity>`` and renews it every
  ``renew_s``; it is alive to another replica while that replica sees its resourceVersion change at
  least every ``duration_s`` (measured on the observer's own clock, as client-go's leader election
  does: no trust in clocks across machines).
- Ownership: one Lease per shard, ``<group>-shard-<k>``, whose ``holderIdentity`` is the replica
  serving it. It changes hands only by an update carrying the resourceVersion read (the API server
  refuses a stale one: that is the arbitration, no consensus of ours). A replica takes a shard when it
  is the shard's preferred member and the shard is free (no Lease, holder released), or its holder's
  member Lease has expired AND the shard Lease itself has not changed for ``duration_s``.
- A replica serves a shard only after its own successful write of that shard's Lease in the current
  liveness period, and only until ``renewed_at + duration_s - margin_s`` (its last successful member
  renewal): a replica cut off from the API server stops serving ``margin_s`` before anyone may take
  over, which leaves its supervisors ``margin_s`` to stop (they never wait on the exchange to stop).
- Hand-over to a joining replica: the holder sees the shard now prefers another live member, stops
  its supervisors of that shard (draining), and only then releases the Lease (holder cleared); the
  new preferred member takes it on its next tick. A replica stopped with SIGTERM drains and releases
  everything; a killed one is taken over after ``duration_s`` plus one tick.
- Replicas must agree on N: each member Lease carries its N; a replica that sees a live member with
  another N serves nothing until they agree (a rolling change of N pauses, it never serves twice).

The emergency stop survives a move because it lives in the resource (the annotation, and
status.emergencyStop written by the previous holder), which the next holder's supervisor reads when it
starts, exactly as after an operator restart.

API writes: one member renewal per replica per ``renew_s`` (default 3 s: 1,200/h per replica,
independent of the number of accounts), plus one write per shard that moves.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterator, Mapping

log = logging.getLogger(__name__)

ROLE_LABEL = "tradewarden.io/lease-role"
GROUP_LABEL = "tradewarden.io/shard-group"
SHARDS_ANNOTATION = "tradewarden.io/shards"
DEFAULT_DURATION_S = 15.0
GONE_AFTER = 4            # a member Lease quiet for this many durations is deleted (its replica is gone)


# ---- pure rules ----------------------------------------------------------------------------------

def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def shard_of(namespace: str, name: str, shards: int) -> int:
    """The account's shard: a stable hash of namespace/name (the same in every replica and release)."""
    return _h(f"{namespace}/{name}") % shards


def preferred(shard: int, members: frozenset[str] | set[str]) -> str | None:
    """The member a shard prefers: rendezvous hashing, so adding or removing a member moves only
    the shards it gains or loses."""
    return max(members, key=lambda m: (_h(f"{shard}/{m}"), m), default=None)


@dataclass(frozen=True)
class LeaseView:
    """A Lease as one replica has seen it."""
    name: str
    holder: str | None
    resource_version: str
    observed_at: float            # the observer's clock when this resourceVersion was first seen
    shards: int | None = None     # member Leases: the member's shard count


def expired(lease: LeaseView, now: float, duration_s: float) -> bool:
    return now - lease.observed_at >= duration_s


@dataclass(frozen=True)
class Acquire:
    shard: int
    resource_version: str | None       # None: create the Lease


@dataclass(frozen=True)
class Confirm:
    """The Lease says we hold it but we have not written it in this liveness period."""
    shard: int
    resource_version: str


@dataclass(frozen=True)
class Drain:
    shard: int


@dataclass(frozen=True)
class Release:
    shard: int
    resource_version: str


ShardAction = Acquire | Confirm | Drain | Release


def live_members(me: str, members: Mapping[str, LeaseView], now: float, duration_s: float) -> frozenset[str]:
    return frozenset({me} | {m for m, lease in members.items() if m != me and not expired(lease, now, duration_s)})


def disagreeing(me_shards: int, members: Mapping[str, LeaseView], live: frozenset[str]) -> list[str]:
    """Live members announcing another shard count."""
    return sorted(m for m in live if m in members and members[m].shards not in (None, me_shards))


def plan(me: str, shards: int, now: float, duration_s: float, members: Mapping[str, LeaseView],
         leases: Mapping[int, LeaseView], held: frozenset[int], draining: frozenset[int],
         serving_count: Mapping[int, int]) -> list[ShardAction]:
    """What to do with every shard this tick. ``members``: member Leases by identity; ``leases``:
    shard Leases by shard; ``held``: shards confirmed by our own write in this liveness period;
    ``serving_count``: supervisors still running per shard."""
    live = live_members(me, members, now, duration_s)
    stand_down = bool(disagreeing(shards, members, live))
    actions: list[ShardAction] = []
    for k in range(shards):
        lease = leases.get(k)
        want = not stand_down and preferred(k, live) == me
        holder = lease.holder if lease is not None else None
        if holder == me:
            if k in held:
                if not want:
                    if k not in draining:
                        actions.append(Drain(k))
                    elif not serving_count.get(k):
                        actions.append(Release(k, lease.resource_version))
            elif want:
                actions.append(Confirm(k, lease.resource_version))
            elif not serving_count.get(k):
                actions.append(Release(k, lease.resource_version))
        elif not want:
            continue
        elif lease is None:
            actions.append(Acquire(k, None))
        elif not holder:
            actions.append(Acquire(k, lease.resource_version))
        else:
            other = members.get(holder)
            holder_dead = other is None or expired(other, now, duration_s)
            if holder_dead and expired(lease, now, duration_s):
                actions.append(Acquire(k, lease.resource_version))
    return actions


# ---- the Lease API -------------------------------------------------------------------------------

def _micro_time(ts: float | None = None) -> str:
    dt = datetime.datetime.fromtimestamp(time.time() if ts is None else ts, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Conflict(Exception):
    """The Lease changed since it was read (or exists already): someone else wrote first."""


class LeaseApi:
    """coordination.k8s.io/v1 Leases of one namespace, through the official client in a small
    thread pool (the client is synchronous)."""

    def __init__(self, namespace: str, api_client: Any | None = None) -> None:
        import concurrent.futures

        import kubernetes

        from .kube import load_config

        self.namespace = namespace
        self._api = kubernetes.client.CoordinationV1Api(api_client or load_config())
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="tw-lease")
        self.writes = 0

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, _request_timeout=10, **kwargs))
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from None
            raise

    async def list(self, group: str) -> list[dict]:
        resp = await self._call(self._api.list_namespaced_lease, self.namespace,
                                label_selector=f"{GROUP_LABEL}={group}", _preload_content=False)
        return json.loads(resp.data).get("items") or []

    async def create(self, body: dict) -> dict:
        resp = await self._call(self._api.create_namespaced_lease, self.namespace, body, _preload_content=False)
        self.writes += 1
        return json.loads(resp.data)

    async def replace(self, name: str, body: dict) -> dict:
        """Update carrying body.metadata.resourceVersion: refused (Conflict) if the Lease changed."""
        resp = await self._call(self._api.replace_namespaced_lease, name, self.namespace, body,
                                _preload_content=False)
        self.writes += 1
        return json.loads(resp.data)

    async def delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            await self._call(self._api.delete_namespaced_lease, name, self.namespace)
            self.writes += 1
        except ApiException as exc:
            if exc.status != 404:
                raise

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ---- the executor ----------------------------------------------------------------------------------

@dataclass
class ShardSettings:
    shards: int
    group: str = "tradewarden"
    namespace: str = "default"
    duration_s: float = DEFAULT_DURATION_S
    identity: str = field(default_factory=lambda: default_identity())

    @property
    def renew_s(self) -> float:
        return max(self.duration_s / 5, 0.5)

    @property
    def margin_s(self) -> float:
        return self.duration_s / 3

    @classmethod
    def from_env(cls, shards: int | None = None, *, namespaces: list[str] | None = None,
                 env: Mapping[str, str] = os.environ) -> "ShardSettings | None":
        n = int(env.get("TRADEWARDEN_SHARDS", "0") or 0) if shards is None else shards
        if n <= 0:
            return None
        namespace = env.get("TRADEWARDEN_LEASE_NAMESPACE") or env.get("POD_NAMESPACE") or \
            (namespaces[0] if namespaces else "default")
        return cls(shards=n, group=env.get("TRADEWARDEN_SHARD_GROUP", "tradewarden"), namespace=namespace,
                   duration_s=float(env.get("TRADEWARDEN_SHARD_LEASE_SECONDS", DEFAULT_DURATION_S)))


def default_identity() -> str:
    """Unique per process (a restarted replica is a new member: its old Leases expire, they are
    never taken back as its own)."""
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}-{secrets.token_hex(3)}"[:50].lower()


class Sharder:
    """Holds this replica's member Lease and its shards' Leases; tells the controller which accounts
    it serves. ``owns`` / ``wait_owned`` / ``serving`` are the controller's three call sites."""

    def __init__(self, settings: ShardSettings, api: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.s = settings
        self.api = api
        self.clock = clock
        self.me = settings.identity
        self.held: set[int] = set()
        self.draining: set[int] = set()
        self.serving_count: dict[int, int] = {}
        self.renewed_at: float | None = None
        self._member_rv: str | None = None
        self._seen: dict[str, LeaseView] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closing = False
        self.moves = 0

    # -- what the controller asks --
    def shard_of(self, namespace: str, name: str) -> int:
        return shard_of(namespace, name, self.s.shards)

    def serving_shards(self) -> frozenset[int]:
        if self._closing or self.renewed_at is None or self.clock() >= self.renewed_at + self.s.duration_s - self.s.margin_s:
            return frozenset()
        return frozenset(self.held - self.draining)

    def owns(self, namespace: str, name: str) -> bool:
        return self.shard_of(namespace, name) in self.serving_shards()

    async def wait_owned(self, namespace: str, name: str, stopped: Callable[[], Awaitable[Any]]) -> bool:
        """Until this replica serves the account (True) or ``stopped`` completes (False)."""
        stop = asyncio.ensure_future(stopped())
        try:
            while not self.owns(namespace, name):
                if stop.done():
                    return False
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait([stop, changed], return_when=asyncio.FIRST_COMPLETED, timeout=self.s.renew_s)
                changed.cancel()
            return True
        finally:
            stop.cancel()

    @contextlib.contextmanager
    def serving(self, namespace: str, name: str) -> Iterator[asyncio.Event]:
        """Count a running supervisor of the account's shard; the event is set when it must stop."""
        k = self.shard_of(namespace, name)
        lost = asyncio.Event()
        self.serving_count[k] = self.serving_count.get(k, 0) + 1

        async def watch() -> None:
            while self.owns(namespace, name):
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait([changed], timeout=min(self.s.renew_s, 1.0))
                changed.cancel()
            lost.set()
        task = asyncio.ensure_future(watch())
        try:
            yield lost
        finally:
            task.cancel()
            self.serving_count[k] -= 1
            if not self.serving_count[k]:
                del self.serving_count[k]
            self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the loop --
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        log.info("sharding: %d shards, member %s, leases in %s (%ss)", self.s.shards, self.me, self.s.namespace,
                 self.s.duration_s)
        while not self._closing:
            t0 = self.clock()
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the API server may be away; serving lapses by itself
                log.warning("sharding tick failed: %s: %s", type(exc).__name__, exc)
            self._notify()
            await asyncio.sleep(max(0.0, self.s.renew_s - (self.clock() - t0)))

    def _lease_body(self, name: str, role: str, holder: str | None, rv: str | None,
                    annotations: dict[str, str] | None = None) -> dict:
        meta: dict[str, Any] = {"name": name, "namespace": self.s.namespace,
                                "labels": {GROUP_LABEL: self.s.group, ROLE_LABEL: role}}
        if rv is not None:
            meta["resourceVersion"] = rv
        if annotations:
            meta["annotations"] = annotations
        now = _micro_time()
        spec: dict[str, Any] = {"holderIdentity": holder, "leaseDurationSeconds": int(self.s.duration_s),
                                "renewTime": now}
        if holder:
            spec["acquireTime"] = now
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def member_name(self, identity: str | None = None) -> str:
        return f"{self.s.group}-member-{identity or self.me}"

    def shard_name(self, k: int) -> str:
        return f"{self.s.group}-shard-{k}"

    async def _renew_member(self) -> None:
        body = self._lease_body(self.member_name(), "member", self.me, self._member_rv,
                                {SHARDS_ANNOTATION: str(self.s.shards)})
        t0 = self.clock()
        if self._member_rv is None:
            got = await self.api.create(body)
        else:
            got = await self.api.replace(self.member_name(), body)
        self._member_rv = got["metadata"]["resourceVersion"]
        self.renewed_at = t0

    def _observe(self, items: list[dict]) -> tuple[dict[str, LeaseView], dict[int, LeaseView]]:
        now = self.clock()
        members: dict[str, LeaseView] = {}
        shards: dict[int, LeaseView] = {}
        seen: dict[str, LeaseView] = {}
        for item in items:
            meta, spec = item.get("metadata") or {}, item.get("spec") or {}
            name, rv = meta.get("name", ""), meta.get("resourceVersion", "")
            prev = self._seen.get(name)
            shards_ann = (meta.get("annotations") or {}).get(SHARDS_ANNOTATION)
            view = LeaseView(name=name, holder=spec.get("holderIdentity") or None, resource_version=rv,
                             observed_at=prev.observed_at if prev and prev.resource_version == rv else now,
                             shards=int(shards_ann) if shards_ann and shards_ann.isdigit() else None)
            seen[name] = view
            role = (meta.get("labels") or {}).get(ROLE_LABEL)
            if role == "member" and view.holder:
                members[view.holder] = view
            elif role == "shard" and name.startswith(f"{self.s.group}-shard-"):
                suffix = name.rsplit("-", 1)[-1]
                if suffix.isdigit() and int(suffix) < self.s.shards:
                    shards[int(suffix)] = view
        self._seen = seen
        return members, shards

    async def tick(self) -> None:
        try:
            await self._renew_member()
        except Conflict:
            self._member_rv = None          # recreated or changed under us: read it again next tick
            items = await self.api.list(self.s.group)
            for item in items:
                if item["metadata"]["name"] == self.member_name():
                    self._member_rv = item["metadata"]["resourceVersion"]
        except Exception as exc:  # noqa: BLE001
            log.warning("sharding: member lease not renewed: %s", type(exc).__name__)
        if self.renewed_at is None or self.clock() >= self.renewed_at + self.s.duration_s - self.s.margin_s:
            if self.held:
                log.warning("sharding: member lease not renewed in time: serving nothing until it is")
            self.held.clear()
            self.draining.clear()
            self._notify()
            return
        members, leases = self._observe(await self.api.list(self.s.group))
        live = live_members(self.me, members, self.clock(), self.s.duration_s)
        odd = disagreeing(self.s.shards, members, live)
        if odd:
            log.error("sharding: members %s use another shard count than %d: serving nothing until they agree",
                      odd, self.s.shards)
        for gone in [m for m, lease in members.items() if m not in live and
                     expired(lease, self.clock(), GONE_AFTER * self.s.duration_s)]:
            await self.api.delete(self.member_name(gone))      # a killed replica's member Lease
        for action in plan(self.me, self.s.shards, self.clock(), self.s.duration_s, members, leases,
                           frozenset(self.held), frozenset(self.draining), dict(self.serving_count)):
            await self._execute(action)

    async def _execute(self, action: ShardAction) -> None:
        k = action.shard
        name = self.shard_name(k)
        try:
            if isinstance(action, (Acquire, Confirm)):
                body = self._lease_body(name, "shard", self.me, action.resource_version)
                if action.resource_version is None:
                    await self.api.create(body)
                else:
                    await self.api.replace(name, body)
                if isinstance(action, Acquire):
                    self.moves += 1
                    log.info("sharding: shard %d acquired", k)
                self.held.add(k)
                self.draining.discard(k)
                self._notify()
            elif isinstance(action, Drain):
                log.info("sharding: shard %d prefers another member: stopping its accounts", k)
                self.draining.add(k)
                self._notify()
            elif isinstance(action, Release):
                await self.api.replace(name, self._lease_body(name, "shard", None, action.resource_version))
                log.info("sharding: shard %d released", k)
                self.held.discard(k)
                self.draining.discard(k)
        except Conflict:
            # someone wrote first: the Lease is theirs; it is read again next tick
            self.held.discard(k)
            self.draining.discard(k)
            self._notify()

    async def close(self, timeout_s: float = 15.0) -> None:
        """Stop serving, wait for the supervisors to stop, release every shard, leave."""
        self._closing = True               # owns() is False from here on
        self._notify()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.draining |= self.held
        self._notify()
        deadline = self.clock() + timeout_s
        while self.serving_count and self.clock() < deadline:
            await asyncio.sleep(0.1)
        if not self.serving_count:
            try:
                _, leases = self._observe(await self.api.list(self.s.group))
                for k, lease in leases.items():
                    if lease.holder == self.me:
                        await self._execute(Release(k, lease.resource_version))
                await self.api.delete(self.member_name())
            except Exception as exc:  # noqa: BLE001 - the others take over after the lease duration
                log.warning("sharding: leases not released on exit: %s", type(exc).__name__)
        self.held.clear()
        with contextlib.suppress(Exception):
            self.api.close()


__all__ = ["Sharder", "ShardSettings", "LeaseApi", "shard_of", "preferred", "plan", "live_members",
           "LeaseView", "Acquire", "Confirm", "Drain", "Release", "Conflict"]
