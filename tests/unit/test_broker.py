"""The broker without sockets: a fake clock drives epoch jobs and timeouts."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gearmill.protocol.codec import Decoder
from gearmill.protocol.packets import PacketType as T
from gearmill.server import admin
from gearmill.server.broker import Broker, BrokerConfig, Peer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make(**kw: object) -> tuple[Broker, Clock]:
    clock = Clock()
    return Broker(BrokerConfig(handle_prefix=b"H:t", **kw), clock), clock  # type: ignore[arg-type]


def peer(broker: Broker) -> Peer:
    return broker.connect(Peer(len(broker.peers) + 10, "127.0.0.1"))


def sent(p: Peer) -> list[tuple[int, list[bytes]]]:
    """Packets queued for ``p`` since the last call."""
    dec = Decoder(server=False)
    events = dec.feed(b"".join(p.out))
    p.out.clear()
    return events


def test_epoch_job_runs_at_its_time_and_wakes_sleepers() -> None:
    b, clock = make()
    c, w = peer(b), peer(b)
    b.handle(w, T.CAN_DO, [b"f"])
    b.handle(w, T.PRE_SLEEP, [])
    b.handle(c, T.SUBMIT_JOB_EPOCH, [b"f", b"u", b"%d" % (clock.now + 5), b"later"])
    assert sent(c) == [(T.JOB_CREATED, [b"H:t:1"])]
    assert sent(w) == []  # not due: no wake-up, and GRAB finds nothing
    b.handle(w, T.GRAB_JOB, [])
    assert sent(w) == [(T.NO_JOB, [])]
    b.handle(w, T.PRE_SLEEP, [])
    assert b.next_deadline() == clock.now + 5
    clock.now += 5
    b.tick()
    assert sent(w) == [(T.NOOP, [])]
    b.handle(w, T.GRAB_JOB, [])
    assert sent(w) == [(T.JOB_ASSIGN, [b"H:t:1", b"f", b"later"])]


def test_epoch_in_the_past_runs_now_and_garbage_means_now() -> None:
    b, _clock = make()
    c, w = peer(b), peer(b)
    b.handle(c, T.SUBMIT_JOB_EPOCH, [b"f", b"", b"12", b"a"])
    b.handle(c, T.SUBMIT_JOB_EPOCH, [b"f", b"", b"junk", b"b"])
    b.handle(w, T.CAN_DO, [b"f"])
    b.handle(w, T.GRAB_JOB, [])
    b.handle(w, T.GRAB_JOB, [])
    assert [e[1][2] for e in sent(w)] == [b"a", b"b"]


def test_can_do_timeout_requeues_and_counts_a_retry() -> None:
    b, clock = make(job_retries=2)
    c, w1, w2 = peer(b), peer(b), peer(b)
    b.handle(c, T.SUBMIT_JOB, [b"slow", b"", b"x"])
    b.handle(w1, T.CAN_DO_TIMEOUT, [b"slow", b"1500"])
    b.handle(w1, T.GRAB_JOB, [])
    assert sent(w1)[0][0] == T.JOB_ASSIGN
    b.handle(w2, T.CAN_DO, [b"slow"])
    b.handle(w2, T.PRE_SLEEP, [])
    clock.now += 1.4
    b.tick()
    assert sent(w2) == []
    clock.now += 0.2
    b.tick()
    assert sent(w2) == [(T.NOOP, [])]
    # the timed-out worker's late result is refused
    b.handle(w1, T.WORK_COMPLETE, [b"H:t:1", b"late"])
    assert sent(w1)[0][1][0] == b"JOB_NOT_FOUND"
    b.handle(w2, T.GRAB_JOB, [])
    assert sent(w2)[0][0] == T.JOB_ASSIGN
    # operators see the retry in "show jobs" (handle, retries, ignored, background)
    assert admin.run(b, c, b"show jobs") == b"H:t:1\t1\t0\t0\n.\n"
    b.handle(w2, T.WORK_COMPLETE, [b"H:t:1", b"ok"])
    assert sent(c)[-1] == (T.WORK_COMPLETE, [b"H:t:1", b"ok"])


def test_timeout_below_one_second_rounds_up() -> None:
    b, clock = make()
    c, w = peer(b), peer(b)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    b.handle(w, T.CAN_DO_TIMEOUT, [b"f", b"10"])
    b.handle(w, T.GRAB_JOB, [])
    assert b.next_deadline() == clock.now + 1.0


def test_retry_limit_drops_and_tells_clients() -> None:
    b, _clock = make(job_retries=1)
    c, w = peer(b), peer(b)
    b.handle(c, T.SUBMIT_JOB, [b"f", b"", b"x"])
    b.handle(w, T.CAN_DO, [b"f"])
    b.handle(w, T.GRAB_JOB, [])
    b.disconnect(w)
    assert sent(c)[-1] == (T.WORK_FAIL, [b"H:t:1"])
    assert b.jobs == {}
    assert b.functions[b"f"].total == 0


def test_default_order_is_most_recent_can_do_first() -> None:
    b, _ = make()
    c, w = peer(b), peer(b)
    for name, ptype, data in (
        (b"fQ1", T.SUBMIT_JOB_LOW_BG, b"low-q1"),
        (b"fQ1", T.SUBMIT_JOB_BG, b"normal-q1"),
        (b"fQ2", T.SUBMIT_JOB_HIGH_BG, b"high-q2"),
        (b"fQ3", T.SUBMIT_JOB_BG, b"normal-q3"),
    ):
        b.handle(c, ptype, [name, b"", data])
    for name in (b"fQ1", b"fQ2", b"fQ3"):
        b.handle(w, T.CAN_DO, [name])
    for _ in range(4):
        b.handle(w, T.GRAB_JOB, [])
    # gearmand 1.1.20's observed order (reference §3.2)
    assert [e[1][2] for e in sent(w)] == [b"normal-q3", b"high-q2", b"normal-q1", b"low-q1"]


def test_global_priority() -> None:
    b, _ = make(global_priority=True)
    c, w = peer(b), peer(b)
    b.handle(c, T.SUBMIT_JOB_LOW_BG, [b"a", b"", b"low"])
    b.handle(c, T.SUBMIT_JOB_HIGH_BG, [b"b", b"", b"high"])
    b.handle(c, T.SUBMIT_JOB_BG, [b"a", b"", b"normal"])
    b.handle(w, T.CAN_DO, [b"b"])
    b.handle(w, T.CAN_DO, [b"a"])
    for _ in range(3):
        b.handle(w, T.GRAB_JOB, [])
    assert [e[1][2] for e in sent(w)] == [b"high", b"normal", b"low"]


def test_round_robin_rotates_functions() -> None:
    b, _ = make(round_robin=True)
    c, w = peer(b), peer(b)
    for i in range(2):
        b.handle(c, T.SUBMIT_JOB_BG, [b"a", b"", b"a%d" % i])
        b.handle(c, T.SUBMIT_JOB_BG, [b"b", b"", b"b%d" % i])
    b.handle(w, T.CAN_DO, [b"a"])
    b.handle(w, T.CAN_DO, [b"b"])
    for _ in range(4):
        b.handle(w, T.GRAB_JOB, [])
    assert [e[1][2] for e in sent(w)] == [b"b0", b"a0", b"b1", b"a1"]


def test_worker_wakeup_limit_rotates() -> None:
    b, _ = make(worker_wakeup=1)
    c = peer(b)
    workers = [peer(b) for _ in range(3)]
    for w in workers:
        b.handle(w, T.CAN_DO, [b"f"])
        b.handle(w, T.PRE_SLEEP, [])
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"1"])
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"2"])
    woken = [len(sent(w)) for w in workers]
    assert woken == [1, 1, 0]


def _sleepers(b: Broker, n: int, *funcs: bytes) -> list[Peer]:
    workers = [peer(b) for _ in range(n)]
    for w in workers:
        for f in funcs or (b"f",):
            b.handle(w, T.CAN_DO, [f])
        b.handle(w, T.PRE_SLEEP, [])
    return workers


def test_one_sleeper_woken_per_queued_job_by_default() -> None:
    b, _ = make()
    c = peer(b)
    workers = _sleepers(b, 3)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"1"])
    assert [sent(w) for w in workers] == [[(T.NOOP, [])], [], []]
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"2"])
    assert [sent(w) for w in workers] == [[], [(T.NOOP, [])], []]
    # the first one takes a job: the second job still has its own worker coming
    b.handle(workers[0], T.GRAB_JOB, [])
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"3"])
    assert [len(sent(w)) for w in workers] == [1, 0, 1]


def test_worker_wakeup_zero_wakes_every_sleeper_like_gearmand() -> None:
    b, _ = make(worker_wakeup=0)
    c = peer(b)
    workers = _sleepers(b, 3)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"1"])
    assert [sent(w) for w in workers] == [[(T.NOOP, [])]] * 3


def test_woken_worker_that_leaves_or_never_answers_is_replaced() -> None:
    b, clock = make()
    c = peer(b)
    w1, *rest = _sleepers(b, 3)
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"1"])
    assert sent(w1) == [(T.NOOP, [])]
    b.disconnect(w1)
    noops = [sent(w) for w in rest]
    assert sorted(noops) == [[], [(T.NOOP, [])]]
    hung, other = rest if noops[0] else rest[::-1]
    # the second one hangs: a second after its NOOP the last one is woken
    clock.now += 0.5
    b.tick()
    assert sent(other) == []
    clock.now += 0.6
    b.tick()
    assert sent(other) == [(T.NOOP, [])] and sent(hung) == []
    b.handle(other, T.GRAB_JOB, [])
    assert sent(other)[0][0] == T.JOB_ASSIGN


def test_woken_worker_taking_another_functions_job_hands_its_wake_on() -> None:
    b, _ = make()
    c = peer(b)
    (both,) = _sleepers(b, 1, b"f", b"g")
    (only_f,) = _sleepers(b, 1, b"f")
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"for f"])
    b.handle(c, T.SUBMIT_JOB_BG, [b"g", b"", b"for g"])
    assert sent(both) == [(T.NOOP, [])] and sent(only_f) == []
    b.handle(both, T.GRAB_JOB, [])  # its latest CAN_DO (g) comes first
    assert sent(both)[0][1][2] == b"for g"
    assert sent(only_f) == [(T.NOOP, [])]


def test_cancel_running_job_discards_result() -> None:
    b, _ = make()
    c, w = peer(b), peer(b)
    b.handle(c, T.SUBMIT_JOB, [b"f", b"", b"x"])
    b.handle(w, T.CAN_DO, [b"f"])
    b.handle(w, T.GRAB_JOB, [])
    assert b.cancel(b"H:t:1")
    assert sent(c)[-1] == (T.WORK_FAIL, [b"H:t:1"])
    b.handle(w, T.WORK_COMPLETE, [b"H:t:1", b"r"])
    assert sent(c) == []
    assert b.jobs == {} and b.functions[b"f"].total == 0


def test_client_leaving_running_job_keeps_worker_going() -> None:
    b, _ = make()
    c, w = peer(b), peer(b)
    b.handle(c, T.SUBMIT_JOB, [b"f", b"u", b"x"])
    b.handle(w, T.CAN_DO, [b"f"])
    b.handle(w, T.GRAB_JOB, [])
    b.disconnect(c)
    # the same unique now starts a fresh job rather than joining the orphan
    c2 = peer(b)
    b.handle(c2, T.SUBMIT_JOB, [b"f", b"u", b"y"])
    assert sent(c2) == [(T.JOB_CREATED, [b"H:t:2"])]
    b.handle(w, T.WORK_COMPLETE, [b"H:t:1", b"r"])
    assert sent(w)[-1][0] == T.JOB_ASSIGN  # the earlier GRAB; no error for the orphan result
    assert b.functions[b"f"].total == 1


def test_background_job_survives_coalesced_foreground_client_leaving() -> None:
    b, _ = make()
    c1, c2, w = peer(b), peer(b), peer(b)
    b.handle(c1, T.SUBMIT_JOB_BG, [b"f", b"u", b"x"])
    b.handle(c2, T.SUBMIT_JOB, [b"f", b"u", b"x"])
    b.disconnect(c2)
    b.handle(w, T.CAN_DO, [b"f"])
    b.handle(w, T.GRAB_JOB, [])
    assert sent(w)[0][0] == T.JOB_ASSIGN


def test_idle_for_graceful_stop() -> None:
    b, _ = make()
    c, w = peer(b), peer(b)
    b.handle(c, T.SUBMIT_JOB_BG, [b"nobody", b"", b"x"])
    assert b.idle()  # queued, but nobody can run it
    b.handle(c, T.SUBMIT_JOB_BG, [b"f", b"", b"x"])
    b.handle(w, T.CAN_DO, [b"f"])
    assert not b.idle()
    b.handle(w, T.GRAB_JOB, [])
    assert not b.idle()
    b.handle(w, T.WORK_COMPLETE, [b"H:t:2", b""])
    assert b.idle()


class _SimWorker:
    """A worker as libraries write them: GRAB until NO_JOB, PRE_SLEEP, GRAB again
    after a NOOP, complete each job it is given. A hung (or departed) one does
    nothing."""

    def __init__(self, b: Broker, abilities: list[bytes], hung: bool) -> None:
        self.b = b
        self.peer = peer(b)
        self.hung = hung
        self.abilities = abilities
        self.awake = True
        self.job: bytes | None = None
        for f in abilities:
            b.handle(self.peer, T.CAN_DO, [f])
        self.act()  # asks for work, finds none and sleeps

    def act(self) -> None:
        if self.hung:
            self.peer.out.clear()
            return
        for kind, _args in sent(self.peer):
            if kind == T.NOOP:
                self.awake = True
        if self.job is not None:
            self.b.handle(self.peer, T.WORK_COMPLETE, [self.job, b"done"])
            self.job = None
        elif self.awake:
            self.b.handle(self.peer, T.GRAB_JOB, [])
            for kind, args in sent(self.peer):
                if kind == T.JOB_ASSIGN:
                    self.job = args[0]
                elif kind == T.NO_JOB:
                    self.awake = False
                    self.b.handle(self.peer, T.PRE_SLEEP, [])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("submit"), st.sampled_from([b"f", b"g"])),
            st.tuples(st.just("act"), st.integers(0, 3)),
            st.tuples(st.just("replace"), st.integers(0, 3), st.integers(1, 3)),
            st.tuples(st.just("hang"), st.integers(0, 3)),
            st.tuples(st.just("leave"), st.integers(0, 3)),
            st.tuples(st.just("time"), st.sampled_from([0.3, 0.6, 1.2])),
        ),
        max_size=60,
    ),
    st.sampled_from([-1, 0, 1]),
)
def test_no_job_is_stranded_while_a_working_worker_can_do_it(
    steps: list[tuple[object, ...]], wakeup: int
) -> None:
    """Whatever happens in between, once the working workers get to act and
    time passes, every queued job some working worker can do gets done."""
    b, clock = make(worker_wakeup=wakeup)
    client = peer(b)
    kinds = {1: [b"f"], 2: [b"g"], 3: [b"f", b"g"]}
    workers = [_SimWorker(b, kinds[1 + i % 3], hung=False) for i in range(4)]
    for step in steps:
        if step[0] == "submit":
            b.handle(client, T.SUBMIT_JOB_BG, [step[1], b"", b"x"])  # type: ignore[list-item]
        elif step[0] == "act":
            workers[step[1]].act()  # type: ignore[index]
        elif step[0] == "replace":
            _, i, kind = step
            b.disconnect(workers[i].peer)  # type: ignore[index]
            workers[i] = _SimWorker(b, kinds[kind], hung=False)  # type: ignore[index]
        elif step[0] == "hang":  # stops answering, asleep or not
            workers[step[1]].hung = True  # type: ignore[index]
        elif step[0] == "leave" and not workers[step[1]].hung:  # type: ignore[index]
            b.disconnect(workers[step[1]].peer)  # type: ignore[index]
            workers[step[1]].hung = True  # type: ignore[index]
        else:
            clock.now += step[1]  # type: ignore[operator]
            b.tick()
    for _ in range(20):  # bounded: each round lets every working worker act, then 1.1 s pass
        for _ in range(4):
            for w in workers:
                w.act()
        clock.now += 1.1
        b.tick()
    can_do = {f for w in workers if not w.hung for f in w.abilities}
    for name, func in b.functions.items():
        if name in can_do:
            assert sum(func.queued) == 0, (name, func.queued, wakeup)
