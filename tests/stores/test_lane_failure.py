"""What the store's edge does when a lane fails in a way its connection never reports
(an exception from `send`: a bug, a value it cannot encode), in process over a real
SQLite store: the job is refused with gearmand's QUEUE_ERROR at once, never left
waiting, and the next job is committed by the store itself."""

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
from gearmill.server.store import StoredJob, open_store


class BrokenLane:
    """A lane whose send raises; abort turns it off, as a real lane's does."""

    def __init__(self) -> None:
        self.on = True
        self.aborted: list[str] = []

    def ready(self) -> bool:
        return self.on

    def send(self, job: StoredJob, done: Callable[[str | None], None]) -> None:
        raise OverflowError("length does not fit")

    def abort(self, why: str) -> None:
        self.aborted.append(why)
        self.on = False


async def scenario(
    path: Path,
) -> tuple[list[list[tuple[int, list[bytes]]]], list[bytes], list[str]]:
    store = open_store(f"sqlite:///{path}")
    await store.open()
    lane = BrokenLane()
    store.lane = lane
    broker = Broker(BrokerConfig(handle_prefix=b"H:t"), time.time)

    def flush() -> None:
        if broker.journal is not None:
            broker.journal.drain()
        broker.flush()

    durable = Durable(store, broker, flush)
    durable.start()
    answers = []
    for n, unique in enumerate((b"first", b"second")):
        for _ in range(500):  # after a failure, jobs are refused until the store is back
            if durable.down is None:
                break
            await asyncio.sleep(0.01)
        client = broker.connect(Peer(10 + n, "127.0.0.1", sink=BufferSink()))
        broker.handle(client, T.SUBMIT_JOB_BG, [b"f", unique, b"data"])
        flush()
        got: list[tuple[int, list[bytes]]] = []
        for _ in range(500):  # bounded: the answer comes within a few loop turns
            assert isinstance(client.sink, BufferSink)
            got += Decoder(server=False).feed(client.sink.take())
            if got:
                break
            await asyncio.sleep(0.01)
        answers.append(got)
    await durable.close()
    store = open_store(f"sqlite:///{path}")
    await store.open()
    stored = [j.unique for _, j in await store.load(0, 10)]
    await store.close()
    return answers, stored, lane.aborted


def test_a_lane_that_raises_refuses_its_job_and_the_store_takes_the_next(
    tmp_path: Path,
) -> None:
    (first, second), stored, aborted = asyncio.run(scenario(tmp_path / "queue.db"))
    assert [(kind, args[0]) for kind, args in first] == [(T.ERROR, b"QUEUE_ERROR")]
    assert [kind for kind, _ in second] == [T.JOB_CREATED]
    assert stored == [b"second"]
    assert len(aborted) == 1 and "length does not fit" in aborted[0]
