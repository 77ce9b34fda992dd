"""One tree of errors for the client and worker libraries."""

from __future__ import annotations


class GearmanError(Exception):
    """Root of every gearmill library error."""


class ProtocolError(GearmanError):
    """The peer sent something that is not valid Gearman."""


class ConnectionLost(GearmanError):
    """The connection to a job server broke (a foreground job on it is lost)."""

    def __init__(self, server: str, detail: str = "") -> None:
        self.server = server
        super().__init__(f"connection to {server} lost" + (f": {detail}" if detail else ""))


class NoServersAvailable(GearmanError):
    """No configured job server accepted a connection."""

    def __init__(self, servers: list[str], errors: list[str] | None = None) -> None:
        self.servers = servers
        self.errors = errors or []
        detail = "; ".join(self.errors)
        super().__init__(
            "no job server available among "
            + ", ".join(servers)
            + (f" ({detail})" if detail else "")
        )


class Timeout(GearmanError, TimeoutError):
    """An operation did not finish in the time it was given."""


class ServerError(GearmanError):
    """The job server answered with an ERROR packet."""

    def __init__(self, code: str, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"{code}: {text}")


class JobFailed(GearmanError):
    """The worker reported WORK_FAIL (or the server gave up on the job)."""

    def __init__(self, handle: str, data: bytes = b"") -> None:
        self.handle = handle
        self.data = data
        super().__init__(f"job {handle} failed")


class JobException(JobFailed):
    """The worker reported WORK_EXCEPTION; ``data`` holds what it sent."""

    def __init__(self, handle: str, data: bytes) -> None:
        super().__init__(handle, data)
        self.args = (f"job {handle} raised: {data.decode(errors='replace')}",)
