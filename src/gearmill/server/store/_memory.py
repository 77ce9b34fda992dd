"""The memory store: today's behaviour, nothing survives the process."""

from __future__ import annotations

from collections.abc import Sequence

from ._base import (
    DeadLetter,
    Key,
    SingleServer,
    StoredJob,
    StoredSchedule,
    check_job,
    check_schedule,
)


class MemoryStore(SingleServer):
    durable = False

    def __init__(self, url: str = "memory") -> None:
        self.url = url
        # Insertion order is sequence order: a re-add keeps the first, a remove deletes.
        self._jobs: dict[Key, tuple[int, StoredJob]] = {}
        self._seq = 0
        self._dead: dict[int, DeadLetter] = {}
        self._dead_seq = 0
        self._schedules: dict[str, StoredSchedule] = {}

    async def open(self) -> None:
        pass

    async def commit(self, add: Sequence[StoredJob], remove: Sequence[Key]) -> None:
        for job in add:
            check_job(job)
        for key in remove:
            self._jobs.pop(key, None)
        for job in add:
            key = (job.function, job.unique)
            if key not in self._jobs:
                self._seq += 1
                self._jobs[key] = (self._seq, job)

    async def load(self, after: int, limit: int) -> list[tuple[int, StoredJob]]:
        out: list[tuple[int, StoredJob]] = []
        for seq, job in self._jobs.values():
            if seq > after:
                out.append((seq, job))
                if len(out) >= limit:
                    break
        return out

    async def last_seq(self) -> int:
        return max((seq for seq, _ in self._jobs.values()), default=0)

    async def queued_counts(self, after: int, upto: int) -> list[tuple[bytes, int, int]]:
        counts: dict[tuple[bytes, int], int] = {}
        for seq, job in self._jobs.values():
            if after < seq <= upto:
                key = (job.function, job.priority)
                counts[key] = counts.get(key, 0) + 1
        return [(f, p, n) for (f, p), n in counts.items()]

    async def load_queued(
        self, function: bytes, priority: int, after: int, limit: int
    ) -> list[tuple[int, StoredJob]]:
        out: list[tuple[int, StoredJob]] = []
        for seq, job in self._jobs.values():
            if seq > after and job.function == function and job.priority == priority:
                out.append((seq, job))
                if len(out) >= limit:
                    break
        return out

    async def find(self, keys: Sequence[Key]) -> list[Key]:
        return [k for k in keys if k in self._jobs]

    async def count(self) -> int:
        return len(self._jobs)

    async def ping(self) -> None:
        return None

    async def size_bytes(self) -> int:
        return sum(
            len(j.function) + len(j.unique) + len(j.data) + len(j.reducer)
            for _, j in self._jobs.values()
        )

    async def import_gearmand(self, source: str | None = None) -> int:
        return 0

    async def add_dead(self, dead: Sequence[DeadLetter]) -> list[int]:
        for d in dead:
            check_job(d.job)
        ids = []
        for d in dead:
            self._dead_seq += 1
            self._dead[self._dead_seq] = d
            ids.append(self._dead_seq)
        return ids

    async def list_dead(self, after: int, limit: int) -> list[tuple[int, DeadLetter]]:
        return [(i, d) for i, d in self._dead.items() if i > after][:limit]

    async def remove_dead(self, ids: Sequence[int]) -> None:
        for i in ids:
            self._dead.pop(i, None)

    async def put_schedule(self, schedule: StoredSchedule) -> None:
        check_schedule(schedule)
        self._schedules[schedule.name] = schedule

    async def list_schedules(self) -> list[StoredSchedule]:
        return [self._schedules[n] for n in sorted(self._schedules)]

    async def remove_schedule(self, name: str) -> bool:
        return self._schedules.pop(name, None) is not None

    async def close(self) -> None:
        pass
