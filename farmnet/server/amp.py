"""The server's AMP edge: one `ServerProtocol` per connection, answering the commands
of `farmnet.protocol.commands` from the farm model.

Deliveryless: a render's `Heartbeat` and a monitor's `PollEvents` are answered with a
Deferred the server holds until there is something to say (or the hold time passes), so
an order reaches an idle render one network hop after the scheduler decides, and no
server call ever waits on a slow client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

import farmnet
from farmnet import errors
from farmnet.jobspec import parse_job
from farmnet.protocol import commands as c
from farmnet.protocol.base import FarmAMP
from farmnet.server.actions import READ_ACTIONS, act
from farmnet.server.farm import Farm
from farmnet.server.model import Render, TaskKey
from farmnet.server.outputs import OutputStore

log = Logger()

MAX_PAGE = 10_000  # tasks per ListTasks answer
MAX_OUTPUT_READ = 4 << 20  # bytes per GetTaskOutput answer


class HeldAnswer:
    """A Deferred answered early by `fire`, or with ``timeout_value`` after ``hold`` s."""

    def __init__(self, clock: IReactorTime, hold: float, timeout_value: Callable[[], Any]) -> None:
        self.deferred: defer.Deferred[Any] = defer.Deferred()
        self._timeout_value = timeout_value
        self._call: IDelayedCall | None = clock.callLater(hold, self._timeout)

    @property
    def waiting(self) -> bool:
        return self._call is not None

    def fire(self, value: Any) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
            self.deferred.callback(value)

    def _timeout(self) -> None:
        self._call = None
        self.deferred.callback(self._timeout_value())

    def abandon(self) -> None:
        """The connection is gone: nobody will read the answer."""
        if self._call is not None:
            self._call.cancel()
            self._call = None


class FarmServer:
    """What every connection shares: the farm, the output store and the held answers."""

    def __init__(self, reactor: IReactorTime, farm: Farm, outputs: OutputStore, *,
                 heartbeat_hold: float = 20.0, event_hold: float = 20.0,
                 durable: Callable[[], defer.Deferred[None]] | None = None) -> None:
        self.reactor = reactor
        #: Waits until the farm's changes so far are on disk (the store's sync).
        self.durable = durable or (lambda: defer.succeed(None))
        self.farm = farm
        self.outputs = outputs
        self.heartbeat_hold = heartbeat_hold
        self.event_hold = event_hold
        self.render_connections: dict[int, ServerProtocol] = {}
        self.held: dict[int, HeldAnswer] = {}  # render id → its held heartbeat
        self.connections: set[ServerProtocol] = set()
        self._next_connection = 1
        self._delivering: set[int] = set()
        farm.on_orders = self._orders_for
        farm.observers.append(self._observe)

    def connection_id(self) -> int:
        self._next_connection += 1
        return self._next_connection - 1

    def _orders_for(self, render: Render) -> None:
        # Deliver at the end of this reactor turn, so a solve that gives a render several
        # tasks answers its heartbeat once with all of them.
        if render.id not in self._delivering:
            self._delivering.add(render.id)
            self.reactor.callLater(0, self._deliver, render)

    def _deliver(self, render: Render) -> None:
        self._delivering.discard(render.id)
        held = self.held.get(render.id)
        if held is not None and held.waiting and render.orders:
            del self.held[render.id]
            held.fire({"orders": self.farm.take_orders(render)})

    def _observe(self, what: str, obj: Any) -> None:
        if what == "job_deleted":
            self.outputs.delete_job(obj.id)
        elif what == "task" and obj.state.value not in ("RUN", "WRC"):
            self.outputs.close(obj.key, obj.starts_count)

    def heartbeat(self, render: Render) -> defer.Deferred[dict[str, Any]] | dict[str, Any]:
        self.farm.render_seen(render)
        old = self.held.pop(render.id, None)
        if old is not None:  # a render sends one heartbeat at a time; answer a leftover
            old.fire({"orders": []})
        if render.orders:
            return {"orders": self.farm.take_orders(render)}
        held = HeldAnswer(self.reactor, self.heartbeat_hold, lambda: {"orders": []})
        self.held[render.id] = held
        return held.deferred

    def render_disconnected(self, render: Render, proto: ServerProtocol) -> None:
        if self.render_connections.get(render.id) is not proto:
            return  # replaced by a newer connection of the same render
        del self.render_connections[render.id]
        held = self.held.pop(render.id, None)
        if held is not None:
            held.abandon()
        self.farm.render_lost(render)


class ServerProtocol(FarmAMP):
    """One peer's connection: a render, a monitor or a tool."""

    def __init__(self, server: FarmServer) -> None:
        super().__init__()
        self.server = server
        self.farm = server.farm
        self.kind: str | None = None
        self.user = ""
        self.render: Render | None = None
        self._held_poll: HeldAnswer | None = None
        self._cancel_wait: Callable[[], None] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        self.server.connections.add(self)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.server.connections.discard(self)
        if self._held_poll is not None:
            self._held_poll.abandon()
        if self._cancel_wait is not None:
            self._cancel_wait()
        if self.render is not None:
            self.server.render_disconnected(self.render, self)

    def _need(self, kind: str | None = None) -> None:
        if self.kind is None:
            raise errors.NotAuthenticated("say Hello first")
        if kind is not None and self.kind != kind:
            raise errors.NotAuthenticated(f"this command is for a {kind} connection, not {self.kind}")

    def _need_render(self, render_id: int) -> Render:
        self._need("render")
        if self.render is None or self.render.id != render_id:
            raise errors.NotRegistered(f"render {render_id} is not registered on this connection")
        return self.render

    # --- everyone ----------------------------------------------------------------------

    @c.Hello.responder
    def hello(self, protocol: int, kind: str, user: str, client: str | None = None) -> dict[str, Any]:
        if protocol != c.PROTOCOL_VERSION:
            raise errors.IncompatibleProtocol(
                f"server speaks protocol {c.PROTOCOL_VERSION}, peer {protocol}")
        if kind not in c.KINDS:
            raise errors.InvalidAction(f"kind must be one of {', '.join(c.KINDS)}, not {kind!r}")
        if not user:
            raise errors.PermissionDenied("a user name is required")
        self.kind, self.user = kind, user
        return {"protocol": c.PROTOCOL_VERSION, "server_version": farmnet.__version__,
                "connection_id": self.server.connection_id()}

    # --- renders -----------------------------------------------------------------------

    @c.RegisterRender.responder
    def register_render(self, name: str, capacity: int, max_tasks: int, services: list[str],
                        services_disabled: list[str], platform: str, cpus: int, memory_mb: int,
                        running: list[dict[str, int]], owner: str | None = None) -> dict[str, Any]:
        self._need("render")
        render = self.farm.register_render(
            name, capacity=capacity, max_tasks=max_tasks, services=services,
            services_disabled=services_disabled, platform=platform, cpus=cpus,
            memory_mb=memory_mb, owner=owner or "", running=running)
        old = self.server.render_connections.get(render.id)
        self.server.render_connections[render.id] = self
        self.render = render
        if old is not None and old is not self:
            old.render = None  # its loss must not take the render offline
            old.transport.loseConnection()
        return {"render_id": render.id, "heartbeat_hold": self.server.heartbeat_hold}

    @c.Heartbeat.responder
    def heartbeat(self, render_id: int, running: list, resources: dict | None = None) -> Any:
        return self.server.heartbeat(self._need_render(render_id))

    @staticmethod
    def _key(job_id: int, block: int, task: int) -> TaskKey:
        return (job_id, block, task)

    @c.TaskOutput.responder
    def task_output(self, render_id: int, job_id: int, block: int, task: int, run: int,
                    data: bytes, progress: int | None = None) -> dict[str, Any]:
        render = self._need_render(render_id)
        key = self._key(job_id, block, task)
        if self.farm.task_output(render, key, run, progress) is not None and data:
            self.server.outputs.append(key, run, data)
        return {}

    @c.TaskFinished.responder
    def task_finished(self, render_id: int, job_id: int, block: int, task: int, run: int,
                      time_started: float, time_done: float, message: str,
                      exit_code: int | None = None, signal: int | None = None,
                      resources: dict[str, Any] | None = None) -> dict[str, Any]:
        render = self._need_render(render_id)
        key = self._key(job_id, block, task)
        if message and self.farm.current_task(render, key, run) is not None:
            self.server.outputs.append(key, run, f"\n[farmnet: {message}]\n".encode())
        self.farm.task_finished(render, key, run, exit_code=exit_code, signal=signal,
                                time_started=time_started, time_done=time_done, message=message,
                                peak_memory_mb=(resources or {}).get("peak_memory_mb"))
        self.server.outputs.close(key, run)
        return {}

    # --- tools -------------------------------------------------------------------------

    @c.SubmitJob.responder
    async def submit_job(self, spec: Any) -> dict[str, Any]:
        """Acknowledged once the job is on disk."""
        self._need()
        job_spec, warnings = parse_job(spec, self.farm.settings.max_tasks_per_job)
        job = self.farm.submit(job_spec, self.user)
        await self.server.durable()
        return {"job_id": job.id, "warnings": warnings}

    @c.ListJobs.responder
    def list_jobs(self, user: str | None = None) -> dict[str, Any]:
        self._need()
        return {"jobs": self.farm.list_jobs(user)}

    @c.ShowJob.responder
    def show_job(self, job_id: int) -> dict[str, Any]:
        self._need()
        return {"job": self.farm.show_job(job_id)}

    @c.ListTasks.responder
    def list_tasks(self, job_id: int, offset: int, limit: int, block: int | None = None) -> dict[str, Any]:
        self._need()
        tasks, total = self.farm.list_tasks(job_id, block, offset, max(0, min(limit, MAX_PAGE)))
        return {"tasks": tasks, "total": total}

    @c.GetTaskOutput.responder
    def get_task_output(self, job_id: int, block: int, task: int, run: int, offset: int,
                        limit: int) -> dict[str, Any]:
        self._need()
        t = self.farm.task((job_id, block, task))
        run = run or t.starts_count
        if run < 1 or run > t.starts_count:
            return {"data": b"", "run": run, "next_offset": 0, "complete": True}
        data = self.server.outputs.read(t.key, run, offset, max(0, min(limit, MAX_OUTPUT_READ)))
        still_running = run == t.starts_count and t.state.value in ("RUN", "WRC")
        return {"data": data, "run": run, "next_offset": offset + len(data),
                "complete": not data and not still_running}

    @c.ListRenders.responder
    def list_renders(self) -> dict[str, Any]:
        self._need()
        return {"renders": self.farm.list_renders()}

    @c.ListUsers.responder
    def list_users(self) -> dict[str, Any]:
        self._need()
        return {"users": self.farm.list_users()}

    @c.JobAction.responder
    async def job_action(self, job_ids: list[int], action: str, value: Any = None) -> dict[str, Any]:
        self._need()
        done = act(self.farm, self.user, "jobs", action, {"id": job_ids}, value)
        await self.server.durable()
        return {"done": done}

    @c.Act.responder
    async def act(self, item: str, action: str, filters: Any = None, values: Any = None) -> dict[str, Any]:
        """The one action API; a change is acknowledged once it is on disk."""
        self._need()
        result = act(self.farm, self.user, item, action, filters, values)
        if action not in READ_ACTIONS:
            await self.server.durable()
        return {"result": result}

    # --- monitors ----------------------------------------------------------------------

    @c.PollEvents.responder
    def poll_events(self, after: int, limit: int | None = None) -> Any:
        self._need()
        events = self.farm.events
        limit = max(1, min(limit or 10_000, 10_000))

        def answer() -> dict[str, Any]:
            found, reset = events.since(after, limit)
            last = found[-1]["seq"] if found else events.last
            return {"events": found, "last": last, "reset": reset}

        if after < 0:  # subscribing: where the log is now
            return {"events": [], "last": events.last, "reset": False}
        if after > events.last:  # a sequence from before a server restart
            return {"events": [], "last": events.last, "reset": True}
        if after < events.last:
            return answer()
        if self._held_poll is not None:  # a newer poll replaces a held one
            self._held_poll.fire(answer())
        held = HeldAnswer(self.server.reactor, self.server.event_hold, answer)
        self._held_poll = held
        # Answer at the end of the reactor turn, with every event of that turn.
        cancel = events.wait(lambda: self.server.reactor.callLater(0, lambda: held.fire(answer())))
        self._cancel_wait = cancel

        def resolved(result: Any) -> Any:
            cancel()  # however it was answered, its waiter goes
            if self._held_poll is held:
                self._held_poll = self._cancel_wait = None
            return result

        held.deferred.addBoth(resolved)
        return held.deferred


class ServerFactory(Factory):
    def __init__(self, server: FarmServer) -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> ServerProtocol:
        proto = ServerProtocol(self.server)
        proto.factory = self
        return proto
