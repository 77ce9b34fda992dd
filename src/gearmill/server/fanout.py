"""Several journal consumers on one broker (a durable store, a log, tests).

The broker has one journal and one consumer; :func:`attach` puts a
:class:`FanOut` there when a second consumer comes, so no consumer has to
assume it is the only one. Every consumer sees every batch in the order they
were attached. ``held`` peers are released only by the consumer that asked
for ``hold_created`` (a store); the others must ignore them. (Metrics are not
a consumer: see ``journal.Tally``.)
"""

from __future__ import annotations

from .broker import Broker
from .journal import Consumer, Entry
from .model import Peer


class FanOut:
    __slots__ = ("consumers",)

    def __init__(self, *consumers: Consumer) -> None:
        self.consumers: list[Consumer] = list(consumers)

    def consume(self, entries: list[Entry], held: list[Peer]) -> None:
        for consumer in self.consumers:
            consumer.consume(entries, held)


def attach(broker: Broker, consumer: Consumer, hold_created: bool = False) -> None:
    """Add ``consumer`` to the broker's journal (creating it, or fanning out)."""
    journal = broker.journal
    if journal is None:
        broker.attach_journal(consumer, hold_created)
        return
    current = journal.consumer
    if current is None:  # only metrics' tally so far
        journal.consumer = consumer
        journal.hold_created = hold_created
        return
    fan = current if isinstance(current, FanOut) else FanOut(current)
    fan.consumers.append(consumer)
    journal.consumer = fan
    journal.hold_created = journal.hold_created or hold_created
