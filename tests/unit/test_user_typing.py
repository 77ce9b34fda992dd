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
    """
)


def test_job_chunks_are_bytes_to_a_type_checker(tmp_path: Path) -> None:
    program = tmp_path / "user.py"
    program.write_text(PROGRAM)
    out, err, status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(program)]
    )
    assert status == 0, out + err
    revealed = [
        line.split("Revealed type is ")[1] for line in out.splitlines() if "Revealed" in line
    ]
    assert revealed == ['"bytes"', '"bytes"'], out
