"""Checks every broker unit test gets for free."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gearmill.server import model


@pytest.fixture(autouse=True)
def _shared_empty_queues_stay_empty() -> Iterator[None]:
    """Functions without jobs share one set of empty queues; a job appended there
    instead of to the function's own queues would surface in another function
    (or another broker) later. Every path that queues a job must use own_queues()."""
    yield
    assert all(not q for q in model.NO_QUEUES), "a job was queued on the shared empty queues"
