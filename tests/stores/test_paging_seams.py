"""Paging (--memory-jobs) in process, over a real SQLite store: the moments a socket test
cannot aim at. A submission that arrives while the page holding its unique id's stored
row is being read must join that row once: the job runs once, with the first
submission's data, and no stored job is skipped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from gearmill.protocol.codec import Decoder
from gearmill.protocol.packets import PacketType as T
from gearmill.server.broker import Broker, BrokerConfig, Peer
from gearmill.server.durable import Durable
from gearmill.server.sink import BufferSink
from gearmill.server.store import Store, StoredJob, open_store

STORED = 10  # rows stored before the server starts; the last has unique "kept"
BUDGET = 4  # so replay loads four and pages the rest in, two at a time


def events(peer: Peer) -> list[tuple[int, list[bytes]]]:
    assert isinstance(peer.sink, BufferSink)
    return Decoder(server=False).feed(peer.sink.take())


def paged_durable(store: Store) -> tuple[Broker, Durable, Callable[[], None]]:
    """A broker, its store writer (a memory budget of BUDGET jobs, not yet started) and
    the flush the server gives it, wired as the server wires them."""
    broker = Broker(BrokerConfig(handle_prefix=b"H:t"), time.time)

    def flush() -> None:
        if broker.journal is not None:
            broker.journal.drain()
        broker.flush()

    return broker, Durable(store, broker, flush, budget=BUDGET), flush


async def drain_once(path: Path) -> tuple[list[bytes], list[int], int]:
    store = open_store(f"sqlite:///{path}")
    await store.open()
    rows = [StoredJob(b"f", b"u%d" % i, b"d%d" % i) for i in range(STORED - 1)]
    await store.commit([*rows, StoredJob(b"f", b"kept", b"first")], [])

    broker, durable, flush = paged_durable(store)
    durable.start()  # as the server does: the journal first, then replay
    await durable.replay()
    assert sum(broker.stored[b"f"]) == STORED - BUDGET  # "kept" is among those stored

    client = broker.connect(Peer(10, "127.0.0.1", sink=BufferSink()))
    totals: list[int] = []
    load = store.load_queued
    # stored-only jobs when the submission came: the page is queued once fewer are left
    # (the load runs in a task of its own, so its caller resumes a loop turn later, and
    # a worker asking in between would take the new job before the page could stand for
    # it: then that job runs, once, with its own data)
    landed: list[int] = []

    async def load_then_submit(
        function: bytes, priority: int, after: int, limit: int
    ) -> list[tuple[int, StoredJob]]:
        page = await load(function, priority, after, limit)
        if any(job.unique == b"kept" for _, job in page):
            # the client's submission lands while the page is on its way
            landed.append(sum(broker.stored[b"f"]))
            broker.handle(client, T.SUBMIT_JOB_BG, [b"f", b"kept", b"third"])
            flush()
        return page

    store.load_queued = load_then_submit  # type: ignore[method-assign]

    worker = broker.connect(Peer(11, "127.0.0.1", sink=BufferSink()))
    broker.handle(worker, T.CAN_DO, [b"f"])
    ran: list[bytes] = []
    for _ in range(2000):  # bounded: ten jobs need a few dozen turns
        if landed and sum(broker.stored.get(b"f", [0])) >= landed[0]:
            await asyncio.sleep(0.001)  # the page with "kept" is not queued yet
            continue
        broker.handle(worker, T.GRAB_JOB, [])
        flush()
        (kind, args), *_ = events(worker)
        if kind == T.JOB_ASSIGN:
            ran.append(args[2])
            broker.handle(worker, T.WORK_COMPLETE, [args[0], b""])
            flush()
            totals.append(broker.function(b"f").total + sum(broker.stored.get(b"f", [0])))
        elif not broker.stored and durable.resident == 0 and not durable.adds:
            break
        await asyncio.sleep(0.001)
    created = events(client)
    assert [kind for kind, _ in created] == [T.JOB_CREATED]  # acknowledged once committed
    await durable.close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    left = await store.count()
    await store.close()
    return ran, totals, left


def test_a_submission_arriving_while_its_stored_row_is_paged_in_joins_it_once(
    tmp_path: Path,
) -> None:
    ran, totals, left = asyncio.run(drain_once(tmp_path / "queue.db"))
    expected = sorted([b"d%d" % i for i in range(STORED - 1)] + [b"first"])
    assert sorted(ran) == expected  # every stored job once; "kept" with its first data
    # what status counts (in memory plus stored-only) falls by one per finished job
    assert totals == list(range(STORED - 1, -1, -1))
    assert left == 0


async def drain_claimed(path: Path) -> tuple[list[bytes], int]:
    """A server on a shared store claims rows in pages (server/cluster.py); in Redis a
    later page may hold older rows. The second page is claimed while the first page's
    jobs are being read: every claimed job must still run in this run."""
    store = open_store(f"sqlite:///{path}")
    await store.open()
    await store.commit([StoredJob(b"f", b"u%d" % i, b"d%d" % i) for i in range(STORED)], [])
    rows = await store.load_queued(b"f", 1, 0, STORED)
    broker, durable, flush = paged_durable(store)
    durable.start()
    await durable.start_shared()
    load = store.load_queued
    older = rows[: STORED // 2]

    async def load_while_claiming(
        function: bytes, priority: int, after: int, limit: int
    ) -> list[tuple[int, StoredJob]]:
        page = await load(function, priority, after, limit)
        if older:  # the claim of the older page lands while this page is read
            durable.queue_stored(older[:])
            older.clear()
        return page

    store.load_queued = load_while_claiming  # type: ignore[method-assign]
    durable.queue_stored(rows[STORED // 2 :])  # the first page: the newer rows
    worker = broker.connect(Peer(11, "127.0.0.1", sink=BufferSink()))
    broker.handle(worker, T.CAN_DO, [b"f"])
    ran: list[bytes] = []
    for _ in range(2000):  # bounded: ten jobs need a few dozen turns
        broker.handle(worker, T.GRAB_JOB, [])
        flush()
        (kind, args), *_ = events(worker)
        if kind == T.JOB_ASSIGN:
            ran.append(args[2])
            broker.handle(worker, T.WORK_COMPLETE, [args[0], b""])
            flush()
        elif not broker.stored and not durable.busy and not durable.removes:
            break
        await asyncio.sleep(0.001)
    await durable.close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    left = await store.count()
    await store.close()
    return ran, left


def test_jobs_claimed_while_a_page_is_read_are_not_passed_over(tmp_path: Path) -> None:
    ran, left = asyncio.run(drain_claimed(tmp_path / "queue.db"))
    assert sorted(ran) == sorted(b"d%d" % i for i in range(STORED))  # each once, this run
    assert left == 0
