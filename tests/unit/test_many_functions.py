"""A worker with many functions finds work among the functions that have jobs
(Core._select_ready): it must pick exactly the job the one-by-one scan of its
abilities would, with or without --round-robin and --global-priority."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gearmill.protocol.codec import Decoder
from gearmill.protocol.packets import PacketType as T
from gearmill.server.broker import Broker, BrokerConfig, Peer

FUNCTIONS = 60  # above MANY_ABILITIES, and more than the functions with jobs
SUBMIT = {0: T.SUBMIT_JOB_HIGH_BG, 1: T.SUBMIT_JOB_BG, 2: T.SUBMIT_JOB_LOW_BG}

op = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, FUNCTIONS - 1), st.integers(0, 2)),
    st.tuples(st.just("grab"), st.just(0), st.just(0)),
    st.tuples(st.just("can_do"), st.integers(0, FUNCTIONS - 1), st.just(0)),
    st.tuples(st.just("cant_do"), st.integers(0, FUNCTIONS - 1), st.just(0)),
)


def expected(
    abilities: list[int], queues: dict[int, list[list[bytes]]], by_priority: bool
) -> tuple[int, int] | None:
    """(ability index, priority) of the job the scan of the abilities picks."""
    if by_priority:
        for priority in (0, 1, 2):
            for i, f in enumerate(abilities):
                if queues[f][priority]:
                    return i, priority
        return None
    for i, f in enumerate(abilities):
        for priority in (0, 1, 2):
            if queues[f][priority]:
                return i, priority
    return None


@settings(max_examples=300, deadline=None)
@given(st.booleans(), st.booleans(), st.lists(op, max_size=80))
def test_picks_what_the_scan_would(
    round_robin: bool, by_priority: bool, ops: list[tuple[str, int, int]]
) -> None:
    b = Broker(
        BrokerConfig(handle_prefix=b"H:t", round_robin=round_robin, global_priority=by_priority),
        lambda: 1000.0,
    )
    client = b.connect(Peer(1, "127.0.0.1"))
    worker = b.connect(Peer(2, "127.0.0.1"))
    abilities: list[int] = []  # the model: most recent CAN_DO first
    queues: dict[int, list[list[bytes]]] = {f: [[], [], []] for f in range(FUNCTIONS)}
    for f in range(FUNCTIONS):
        b.handle(worker, T.CAN_DO, [b"f%d" % f])
        abilities.insert(0, f)
    for kind, f, priority in ops:
        if kind == "submit":
            b.handle(client, SUBMIT[priority], [b"f%d" % f, b"", b"x"])
            (_, args), *_ = Decoder(server=False).feed(b"".join(client.out))
            client.out.clear()
            queues[f][priority].append(args[0])
        elif kind == "can_do":
            b.handle(worker, T.CAN_DO, [b"f%d" % f])
            abilities.insert(0, f)
        elif kind == "cant_do":
            b.handle(worker, T.CANT_DO, [b"f%d" % f])
            abilities = [a for a in abilities if a != f]
        else:
            b.handle(worker, T.GRAB_JOB, [])
            events = Decoder(server=False).feed(b"".join(worker.out))
            worker.out.clear()
            want = expected(abilities, queues, by_priority)
            if want is None:
                assert events == [(T.NO_JOB, [])]
                continue
            i, p = want
            func = abilities[i]
            handle = queues[func][p].pop(0)
            assert events == [(T.JOB_ASSIGN, [handle, b"f%d" % func, b"x"])]
            if round_robin and len(abilities) > 1:
                abilities.append(abilities.pop(i))
            b.handle(worker, T.WORK_COMPLETE, [handle, b""])
            worker.out.clear()
