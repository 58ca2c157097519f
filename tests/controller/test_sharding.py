"""Issue 18: sharding accounts across replicas. Pure rules (table tests) and the Sharder against an
in-memory Lease store with the API server's compare-and-swap semantics; the real API server and two
operator processes are in test_sharding_cluster.py."""
from __future__ import annotations

import asyncio
import collections
import copy

import pytest

from tradewarden.controller.sharding import (Acquire, Confirm, Conflict, Drain, LeaseView, Release, Sharder,
                                             ShardSettings, plan, preferred, shard_of)

D = 15.0


def member(holder: str, observed_at: float = 100.0, shards: int | None = 4) -> LeaseView:
    return LeaseView(f"m-{holder}", holder, "1", observed_at, shards)


def shard(holder: str | None, observed_at: float = 100.0, rv: str = "7") -> LeaseView:
    return LeaseView("s", holder, rv, observed_at)


def test_shard_of_is_stable_and_spreads():
    assert shard_of("ns", "a1", 16) == shard_of("ns", "a1", 16)
    assert shard_of("ns", "a1", 16) != shard_of("ns2", "a1", 16) or shard_of("ns", "a2", 16) != shard_of("ns", "a1", 16)
    counts = collections.Counter(shard_of("ns", f"a{i}", 8) for i in range(800))
    assert len(counts) == 8 and min(counts.values()) > 60


def test_rendezvous_moves_only_the_shards_of_the_member_that_changed():
    two = {k: preferred(k, {"a", "b"}) for k in range(64)}
    three = {k: preferred(k, {"a", "b", "c"}) for k in range(64)}
    moved = [k for k in range(64) if two[k] != three[k]]
    assert moved and all(three[k] == "c" for k in moved)          # only to the new member
    assert 10 < sum(1 for v in three.values() if v == "c") < 35
    assert {preferred(k, {"a"}) for k in range(8)} == {"a"} and preferred(0, set()) is None


def mine(me: str, shards: int, others: set[str]) -> list[int]:
    return [k for k in range(shards) if preferred(k, {me} | others) == me]


def _row(case: str):
    """(members, shard lease of the focus shard, held, draining, counts, focus, expected) for a
    replica "me" beside "b"; k is a shard "me" prefers while b is alive, kb one b prefers, k1 one
    "me" prefers once b is dead."""
    me, now = "me", 200.0
    k = mine(me, 4, {"b"})[0]
    kb = [x for x in range(4) if preferred(x, {me, "b"}) == "b"][0]
    k1 = kb                                   # with b dead, every shard prefers me
    alive = {"b": member("b", observed_at=now - 1)}
    dead = {"b": member("b", observed_at=now - D - 1)}
    none: frozenset = frozenset()
    rows = {
        "free-missing": (alive, None, none, none, {}, k, [Acquire(k, None)]),
        "free-released": (alive, shard(None), none, none, {}, k, [Acquire(k, "7")]),
        "held-by-live-other": (alive, shard("b"), none, none, {}, k, []),
        "held-by-dead-other-recently-changed": (dead, shard("b", observed_at=now - 2), none, none, {}, k1, []),
        "held-by-dead-other-quiet": (dead, shard("b", observed_at=now - D - 1), none, none, {}, k1,
                                     [Acquire(k1, "7")]),
        "not-preferred": (alive, shard(None), none, none, {}, kb, []),
        "join-drains": (alive, shard(me), frozenset({kb}), none, {}, kb, [Drain(kb)]),
        "drained-releases": (alive, shard(me), frozenset({kb}), frozenset({kb}), {}, kb, [Release(kb, "7")]),
        "draining-waits": (alive, shard(me), frozenset({kb}), frozenset({kb}), {kb: 2}, kb, []),
        "kept": (alive, shard(me), frozenset({k}), none, {k: 3}, k, []),
        "restart-confirms": (alive, shard(me), none, none, {}, k, [Confirm(k, "7")]),
        "unwanted-leftover-released": (alive, shard(me), none, none, {}, kb, [Release(kb, "7")]),
        "shard-count-disagreement": ({"b": member("b", observed_at=now - 1, shards=8)}, shard(me),
                                     frozenset({k}), none, {}, k, [Drain(k)]),
    }
    return me, now, rows[case]


@pytest.mark.parametrize("case", [
    "free-missing", "free-released", "held-by-live-other", "held-by-dead-other-recently-changed",
    "held-by-dead-other-quiet", "not-preferred", "join-drains", "drained-releases", "draining-waits", "kept",
    "restart-confirms", "unwanted-leftover-released", "shard-count-disagreement"])
def test_plan_rows(case):
    me, now, (members, lease, held, draining, counts, focus, expect) = _row(case)
    leases = {focus: lease} if lease is not None else {}
    got = [a for a in plan(me, 4, now, D, members, leases, held, draining, counts) if a.shard == focus]
    assert got == expect, case


# ---- the Sharder against an in-memory Lease store with the API server's CAS rules ----

class MemLeases:
    def __init__(self) -> None:
        self.items: dict[str, dict] = {}
        self.rv = 0
        self.down = False
        self.writes = 0

    def _bump(self, body: dict) -> dict:
        self.rv += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.items[body["metadata"]["name"]] = body
        self.writes += 1
        return copy.deepcopy(body)

    async def list(self, group: str) -> list[dict]:
        if self.down:
            raise ConnectionError("api server away")
        return [copy.deepcopy(v) for v in self.items.values()]

    async def create(self, body: dict) -> dict:
        if self.down:
            raise ConnectionError("api server away")
        if body["metadata"]["name"] in self.items:
            raise Conflict("exists")
        return self._bump(body)

    async def replace(self, name: str, body: dict) -> dict:
        if self.down:
            raise ConnectionError("api server away")
        cur = self.items.get(name)
        if cur is None or cur["metadata"]["resourceVersion"] != body["metadata"].get("resourceVersion"):
            raise Conflict("changed")
        return self._bump(body)

    async def delete(self, name: str) -> None:
        self.items.pop(name, None)

    def close(self) -> None:
        pass

    def holders(self) -> dict[int, str | None]:
        return {int(n.rsplit("-", 1)[1]): v["spec"]["holderIdentity"] for n, v in self.items.items() if "-shard-" in n}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def sharder(store: MemLeases, clock: Clock, ident: str, shards: int = 8) -> Sharder:
    return Sharder(ShardSettings(shards=shards, identity=ident, duration_s=D), store, clock=clock)


async def settled_pair() -> tuple[MemLeases, Clock, Sharder, Sharder]:
    """Replicas a and b, three ticks each: the shards split between them."""
    store, clock = MemLeases(), Clock()
    a, b = sharder(store, clock, "a"), sharder(store, clock, "b")
    for _ in range(3):
        await a.tick()
        await b.tick()
    return store, clock, a, b


def test_two_replicas_split_then_one_dies_and_the_other_takes_over_after_the_lease_duration():
    async def go() -> None:
        store, clock, a, b = await settled_pair()
        sa, sb = a.serving_shards(), b.serving_shards()
        assert sa | sb == frozenset(range(8)) and not sa & sb and sa and sb
        # b dies (no more ticks): a keeps its own shards and takes b's only once b's member lease
        # and the shard leases have been quiet for the lease duration on a's clock
        for step in range(7):
            clock.t += 2.5
            await a.tick()
            assert not (a.serving_shards() & sb) or clock.t - 1000 >= D, step
            # b would stop serving by itself, margin_s before anyone may take over
        assert b.serving_shards() == frozenset()
        for _ in range(3):
            clock.t += 2.5
            await a.tick()
        assert a.serving_shards() == frozenset(range(8))
        assert set(store.holders().values()) == {"a"}
    asyncio.run(go())


def test_a_joining_replica_gets_its_shards_only_after_the_holder_drained_and_released():
    async def go() -> None:
        store, clock = MemLeases(), Clock()
        a = sharder(store, clock, "a")
        await a.tick()
        await a.tick()
        assert a.serving_shards() == frozenset(range(8))
        # a supervisor of every shard is running on a
        a.serving_count = {k: 1 for k in range(8)}
        b = sharder(store, clock, "b")
        await b.tick()                      # b joins: all shards held by a (alive): b serves nothing
        assert b.serving_shards() == frozenset()
        await a.tick()                      # a sees b: drains b's shards, still holds them
        moving = frozenset(range(8)) - a.serving_shards()
        assert moving and all(store.holders()[k] == "a" for k in moving)
        await b.tick()
        assert b.serving_shards() == frozenset()       # not released yet: nothing served twice
        for k in moving:                    # a's supervisors of those shards stopped
            del a.serving_count[k]
        await a.tick()                      # released
        assert all(store.holders()[k] is None for k in moving)
        await b.tick()
        assert b.serving_shards() == moving and not (a.serving_shards() & moving)
    asyncio.run(go())


def test_a_replica_cut_off_from_the_api_server_stops_serving_before_anyone_may_take_over():
    async def go() -> None:
        store, clock, a, b = await settled_pair()
        mine_a = a.serving_shards()
        # a loses the API server; b keeps going. a's own view lapses margin_s before b's takeover.
        a_cut_at = clock.t
        lapse_a = None
        taken_b = None

        class Cut:
            def __getattr__(self, name):
                async def fail(*args, **kw):
                    raise ConnectionError("cut")
                return fail

            def close(self):
                pass
        a.api = Cut()
        while clock.t - a_cut_at < 3 * D:
            clock.t += 0.5
            if lapse_a is None and not a.serving_shards():
                lapse_a = clock.t
            if int(clock.t * 2) % 6 == 0:
                await b.tick()
                if taken_b is None and b.serving_shards() & mine_a:
                    taken_b = clock.t
        assert lapse_a is not None and taken_b is not None
        assert taken_b - lapse_a >= a.s.margin_s - 0.5, (lapse_a - a_cut_at, taken_b - a_cut_at)
    asyncio.run(go())


def test_close_waits_for_the_supervisors_then_releases_and_leaves():
    async def go() -> None:
        store, clock = MemLeases(), Clock()
        a = sharder(store, clock, "a", shards=4)
        await a.tick()
        await a.tick()
        with a.serving("ns", "x") as lost:
            assert a.owns("ns", "x")
            closing = asyncio.ensure_future(a.close(timeout_s=5))
            await asyncio.sleep(1.2)
            assert lost.is_set() and not closing.done()      # still waiting for this supervisor
            assert all(h == "a" for h in store.holders().values())
        await closing
        assert set(store.holders().values()) == {None} and "tradewarden-member-a" not in store.items
    asyncio.run(go())
