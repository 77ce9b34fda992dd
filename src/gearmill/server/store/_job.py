"""The stored job, compiled with the job path: the durable writer makes one per
background job and the lanes read its fields, so a native class saves a Python
__init__ and attribute lookups per job. Everything else stores share is in _base."""

from __future__ import annotations

PRIORITY_HIGH, PRIORITY_NORMAL, PRIORITY_LOW = 0, 1, 2


class StoredJob:
    """A background job as a store keeps it (treated as immutable).

    The key is (function, unique), as in gearmand's queue tables; the edge gives every
    background job a non-empty unique (gearmand uses a generated one when the client
    sent none), so that key is unique per job. The store assigns a submission sequence
    number when the job is first added; `load` returns it beside the job.

    A plain class, not a dataclass: mypyc leaves a dataclass's generated __init__
    interpreted (about 2,700 instructions a job, seven setattr calls).
    """

    __slots__ = ("attempts", "data", "function", "priority", "reducer", "unique", "when")

    def __init__(
        self,
        function: bytes,
        unique: bytes,
        data: bytes,
        priority: int = PRIORITY_NORMAL,  # 0 high, 1 normal, 2 low
        when: int = 0,  # epoch seconds for SUBMIT_JOB_EPOCH, 0 = now
        reducer: bytes = b"",
        attempts: int = 0,
    ) -> None:
        self.function = function
        self.unique = unique
        self.data = data
        self.priority = priority
        self.when = when
        self.reducer = reducer
        self.attempts = attempts

    def _fields(self) -> tuple[bytes, bytes, bytes, int, int, bytes, int]:
        return (
            self.function,
            self.unique,
            self.data,
            self.priority,
            self.when,
            self.reducer,
            self.attempts,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoredJob):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # equal by value, and mutable

    def __repr__(self) -> str:
        return (
            f"StoredJob(function={self.function!r}, unique={self.unique!r}, "
            f"data={self.data!r}, priority={self.priority!r}, when={self.when!r}, "
            f"reducer={self.reducer!r}, attempts={self.attempts!r})"
        )
