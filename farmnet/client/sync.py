"""The blocking face of `farmnet.client`, for scripts that run without a reactor.

Maya, Houdini and Nuke run Python in their own loop; there a submit script wants a plain
function call. `SyncFarmClient` runs the async client in a reactor thread started by
crochet, and waits for each answer with a timeout. crochet starts that thread when the
first `SyncFarmClient` is made, never at import, so importing this module costs nothing
in a host application that never submits.

    with SyncFarmClient() as farm:                   # server and user from the config
        job_id, warnings = farm.submit(load_spec("shot010.json"))
        job = farm.wait(job_id, timeout=3600)
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import crochet
from twisted.internet import defer

from farmnet.client import FarmClient, ServerTimeout, connect, find_password, load_spec
from farmnet.config import default_config_path, load_config

__all__ = ["SyncFarmClient", "load_spec"]

T = TypeVar("T")

#: Added to the client's timeout when waiting on the reactor thread, so the async call's
#: own timeout (a clearer error) fires first.
MARGIN = 5.0


@crochet.run_in_reactor
def _in_reactor(call: Callable[[], Awaitable[T]]) -> defer.Deferred[T]:
    """Run ``call()`` (a coroutine function) in the reactor thread."""
    return defer.ensureDeferred(call())  # type: ignore[arg-type]


class SyncFarmClient:
    """A `FarmClient` with blocking methods. ``server``, ``user`` and ``timeout``
    default to the client section of the configuration (``config`` or
    ``$FARMNET_CONFIG``). Use it as a context manager, or call `close`."""

    def __init__(self, server: str | None = None, user: str | None = None, *,
                 timeout: float | None = None, config: str | None = None, kind: str = "tool",
                 password: str | None = None) -> None:
        settings = load_config(config or default_config_path(os.environ), os.environ,
                               overrides={"client": {"server": server, "user": user,
                                                     "timeout": timeout}}).client
        if password is None:  # $FARMNET_PASSWORD, else the configuration's password_file
            password = find_password(None, settings.password_file)
        crochet.setup()  # idempotent: the first client starts the reactor thread
        from twisted.internet import reactor

        self.timeout = settings.timeout
        self.reconnect = settings.reconnect
        self.server = settings.server
        self.user = settings.user
        self._client: FarmClient = self._run(
            lambda: connect(reactor, settings.server, settings.user, kind=kind,
                            timeout=settings.timeout, password=password, ca=settings.ca,
                            reconnect=settings.reconnect))

    def _run(self, call: Callable[[], Awaitable[T]], bounded: bool = True) -> T:
        """Run ``call`` in the reactor and wait the client's timeout (plus a margin); not
        ``bounded`` for calls made of many server calls, each bounded by the async client."""
        # A call may ride a server restart first (connecting again for up to `reconnect` s).
        timeout = self.timeout + self.reconnect + MARGIN if bounded else None
        result = _in_reactor(call)
        try:
            return result.wait(timeout)
        except crochet.TimeoutError:
            result.cancel()
            raise ServerTimeout(f"no answer from the server at {self.server} within {timeout} s") from None

    # --- the same calls as FarmClient ------------------------------------------------

    def submit(self, spec: dict[str, Any]) -> tuple[int, list[str]]:
        return self._run(lambda: self._client.submit(spec))

    def jobs(self, user: str | None = None) -> list[dict[str, Any]]:
        return self._run(lambda: self._client.jobs(user))

    def job(self, job_id: int) -> dict[str, Any]:
        return self._run(lambda: self._client.job(job_id))

    def tasks(self, job_id: int, block: int | None = None) -> list[dict[str, Any]]:
        return self._run(lambda: self._client.tasks(job_id, block), bounded=False)

    def output(self, job_id: int, block: int, task: int, run: int = 0) -> bytes:
        return self._run(lambda: self._client.output(job_id, block, task, run), bounded=False)

    def output_files(self, job_id: int) -> list[dict[str, Any]]:
        return self._run(lambda: self._client.output_files(job_id))

    def renders(self) -> list[dict[str, Any]]:
        return self._run(self._client.renders)

    def users(self) -> list[dict[str, Any]]:
        return self._run(self._client.users)

    def action(self, job_ids: list[int], action: str, value: Any = None) -> list[int]:
        return self._run(lambda: self._client.action(job_ids, action, value))

    def act(self, item: str, action: str, filters: dict[str, Any] | None = None,
            values: Any = None) -> Any:
        return self._run(lambda: self._client.act(item, action, filters, values))

    def wait(self, job_id: int, timeout: float | None = None) -> dict[str, Any]:
        """Block until the job is DON or ERR and return it; `TimeoutError` after
        ``timeout`` seconds (None: as long as it takes)."""
        result = _in_reactor(lambda: self._client.wait(job_id))
        try:
            return result.wait(timeout)
        except crochet.TimeoutError:
            result.cancel()
            raise TimeoutError(f"job {job_id} did not finish within {timeout:g} s") from None

    def close(self) -> None:
        """Close the connection and wait (briefly) until it is gone."""
        self._run(self._client.aclose)

    def __enter__(self) -> SyncFarmClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
