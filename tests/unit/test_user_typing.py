"""A user's program checked with ``mypy --strict`` against the installed package
(it ships py.typed): what the libraries hand back is typed, not Any."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

PROGRAM = textwrap.dedent(
    """
    import gearmill

    async def follow(client: gearmill.AsyncClient) -> None:
        job = await client.submit("report", b"2026")
        async for chunk in job:
            reveal_type(chunk)

    def follow_blocking(client: gearmill.Client) -> None:
        for chunk in client.submit("report", b"2026"):
            reveal_type(chunk)

    worker = gearmill.AsyncWorker()
    blocking = gearmill.Worker()

    @worker.function("reverse")
    async def reverse(job: gearmill.WorkerJob) -> bytes:
        return job.data[::-1]

    @blocking.function("upper", timeout=5)
    def upper(job: gearmill.WorkerJob) -> bytes:
        return job.data.upper()

    reveal_type(reverse)
    reveal_type(upper)
    """
)


def test_chunks_and_decorated_functions_keep_their_types(tmp_path: Path) -> None:
    program = tmp_path / "user.py"
    program.write_text(PROGRAM)
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(program)]
    )
    assert status == 0, out + err
    revealed = [
        line.split("Revealed type is ")[1] for line in out.splitlines() if "Revealed" in line
    ]
    assert revealed[:2] == ['"bytes"', '"bytes"'], out  # WORK_DATA chunks
    # a decorated function is still itself (callable in the user's own tests)
    assert revealed[2:] == [
        '"def (job: gearmill.worker.aio.WorkerJob) -> typing.Coroutine[Any, Any, bytes]"',
        '"def (job: gearmill.worker.aio.WorkerJob) -> bytes"',
    ], out
