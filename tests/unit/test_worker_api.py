"""Worker settings that are refused at once, with a message saying how to fix them."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

import gearmill as gm
from gearmill.data import JSON
from gearmill.worker.aio import WorkerJob, _ChildError, _describe

NO_CONNECTION = cast(Any, None)  # reading job.value never talks to a server


def module_level(job: gm.WorkerJob) -> bytes:
    return job.data


def test_process_functions_must_be_plain_and_picklable() -> None:
    w = gm.AsyncWorker("127.0.0.1:1", processes=True)
    w.register("ok", module_level)
    with pytest.raises(ValueError, match=r"picklable: define .*lambda.* at module level"):
        w.register("lambda", lambda job: b"")

    async def coroutine(job: gm.WorkerJob) -> bytes:
        return b""

    with pytest.raises(ValueError, match="coroutine function runs on the worker's event loop"):
        w.register("coroutine", coroutine)


def test_error_description_has_type_and_message() -> None:
    assert _describe(ValueError("bad input")) == "ValueError: bad input"
    assert _describe(KeyError()) == "KeyError"
    assert _describe(_ChildError("ZeroDivisionError", "division by zero", "")) == (
        "ZeroDivisionError: division by zero"
    )


def test_job_value_needs_a_codec() -> None:
    async def scenario() -> None:
        raw = WorkerJob(NO_CONNECTION, b"H:1", b"f", b"", b'{"a": 1}')
        with pytest.raises(AttributeError, match=r"codec=gearmill\.JSON"):
            _ = raw.value
        coded = WorkerJob(NO_CONNECTION, b"H:1", b"f", b"", b'{"a": 1}', codec=JSON)
        assert coded.value == {"a": 1}
        assert coded.data == b'{"a": 1}'

    asyncio.run(scenario())
