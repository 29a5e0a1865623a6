"""The render host: one per machine.

It connects to the server (reconnecting with backoff through `ClientService`),
registers with the tasks it still runs, then long-polls: each `Heartbeat` is answered
when the server has orders for it. Tasks run as child processes (`TaskProcess`); their
output is batched and streamed, and a finish is kept until the server acknowledges it,
so a task that ends while the server is away is reported, once, after reconnecting.
Tasks keep running while the server is away. Output is never dropped: when the server
falls behind (or is away) by `BACKLOG` bytes of a task's output, the render stops reading
that task's output until it has caught up, and the task waits on its writes.
"""

from __future__ import annotations

import os
import platform
import signal as signals
from collections.abc import Mapping
from typing import Any

import attrs
import psutil
from twisted.application import service
from twisted.application.internet import ClientService
from twisted.internet import defer, error
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.protocols import amp

import farmnet
from farmnet import errors
from farmnet.config import RenderConfig
from farmnet.convert import ConversionError, unstructure
from farmnet.messages import (
    CloseOrder,
    ExitOrder,
    HostResources,
    KillOrder,
    Order,
    ReconnectOrder,
    RunResources,
    SleepOrder,
    StartOrder,
    TaskRef,
)
from farmnet.model.catalog import SERVICE_PARSERS
from farmnet.protocol import commands as c
from farmnet.protocol.base import FarmAMP
from farmnet.protocol.endpoints import set_keepalive
from farmnet.render import files, resources, services
from farmnet.render.limits import TaskLimiter
from farmnet.render.parsers import (
    Parser,
    parser_bad_results,
    parser_by_name,
    parser_end,
    parser_errors,
    parser_fatal,
    parser_files,
    parser_finished,
    parser_frame,
    parser_warnings,
)
from farmnet.render.process import TaskExit, TaskProcess

log = Logger()

TaskKey = tuple[int, int, int]

#: Output sent in one TaskOutput at most; the rest follows in the next.
CHUNK = 256 << 10
#: Output of a task read but not yet acknowledged by the server (waiting, or sent): past it
#: the render stops reading the task's output until the server has caught up to half of it,
#: so the task waits on its writes and nothing is dropped.
BACKLOG = 4 << 20
#: Added to the server's hold time before a silent heartbeat means a dead connection.
HEARTBEAT_MARGIN = 15.0
#: After a sleep order, seconds before reconnecting (a suspended host sleeps through them).
SLEEP_QUIET = 30.0
#: Seconds to wait for our own close to complete before aborting the connection.
CLOSE_TIMEOUT = 5.0
#: Seconds after a task ends before the resources are reported (tasks ending together: one report;
#: a heartbeat going out meanwhile takes them, at most once in this time).
REPORT_AFTER_TASK = 0.5
#: TCP keepalive to the server (idle s, interval s, probes): a server gone without a
#: word is found out in about a minute even while a long heartbeat is held.
KEEPALIVE = (30, 10, 3)


class ServerConnection(FarmAMP):
    """The render's AMP connection to the server; knows when it is gone, so the render
    can close its side first and wait for it."""

    def connectionMade(self) -> None:
        super().connectionMade()
        set_keepalive(self.transport, *KEEPALIVE)


@attrs.define(eq=False)
class RunningTask:
    order: StartOrder
    #: The order as the service and parser plugins read it (its wire mapping).
    fields: Mapping[str, Any]
    process: TaskProcess
    parser: Parser
    pending: bytearray = attrs.field(factory=bytearray)
    #: Bytes sent in TaskOutputs the server has not answered yet.
    in_flight: int = 0
    progress: int | None = None
    #: (frames done, percent of the frame) not sent yet, and the last sent.
    frame: tuple[int, int] | None = None
    frame_sent: tuple[int, int] | None = None
    #: The parser's first warning line, until sent (once per run).
    warning: str | None = None
    warning_sent: bool = False
    #: Why the render stopped the task for its parser: "error" or "finished"; None if it did not.
    parser_stop: str | None = None
    flush_call: IDelayedCall | None = None
    timeout_call: IDelayedCall | None = None
    exit: TaskExit | None = None
    #: The files the run wrote (its parser read them) and what is wrong with them, once it ended.
    files: list[str] = attrs.field(factory=list)
    bad_files: list[str] = attrs.field(factory=list)

    @property
    def key(self) -> TaskKey:
        return self.order.key

    @property
    def run(self) -> int:
        return self.order.run

    def reference(self) -> dict[str, int]:
        return {"job_id": self.key[0], "block": self.key[1], "task": self.key[2], "run": self.run}


class RenderService(service.MultiService):
    """The render's connection loop and its tasks. Built by :func:`farmnet.app.render_service`,
    which makes its collaborators from the config's sections."""

    def __init__(self, reactor: Any, config: RenderConfig, *, client: ClientService,
                 limiter: TaskLimiter, service_classes: Mapping[str, services.ServiceFactory],
                 parser_classes: Mapping[str, services.ParserFactory],
                 environ: Mapping[str, str]) -> None:
        super().__init__()
        self.reactor = reactor
        self.config = config
        self.environ = dict(environ)
        self.limiter = limiter
        self.service_classes = service_classes
        self.parser_classes = parser_classes
        self._heartbeats = 0
        #: After obeying a sleep order: stay away this long (the host suspends meanwhile).
        self._quiet_until = 0.0
        self.tasks: dict[TaskKey, RunningTask] = {}
        self.render_id: int | None = None
        self.proto: amp.AMP | None = None
        self.heartbeat_hold = 20.0
        self.client = client
        self.client.setServiceParent(self)
        self._loop: defer.Deferred[None] | None = None
        self._stopping = False
        self.gpu = resources.GpuReader(reactor, config.resources.gpu_interval)
        self._reports = LoopingCall(self._report_resources)
        self._reports.clock = reactor
        self._report_call: IDelayedCall | None = None
        #: A task ended since the resources last went to the server; when they last went.
        self._resources_due = False
        self._sampled_at = float("-inf")
        self._report_armed_at = 0.0
        #: False while connected to a server without report_resources (older): resources then
        #: go with heartbeats only.
        self._server_takes_reports = True

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.limiter.resolve()  # settles the memory-limit method and logs it, once
        self.gpu.start()
        if self.config.resources.interval > 0:
            self._reports.start(self.config.resources.interval, now=False)
        self._loop = defer.ensureDeferred(self._run())

    def stopService(self) -> defer.Deferred[None]:
        """Kill the running tasks (and report them while the connection lasts), then
        disconnect: the render closes its side first (the ClientService's stop), so the
        TIME-WAIT socket is the render's, not the server's."""
        self._stopping = True
        self.gpu.stop()
        if self._reports.running:
            self._reports.stop()
        if self._report_call is not None and self._report_call.active():
            self._report_call.cancel()
        ending = [t.process.done for t in self.tasks.values() if t.exit is None]
        for task in list(self.tasks.values()):
            if task.exit is None:
                task.process.kill("render stopping")
        d = defer.DeferredList(ending, consumeErrors=True)

        def stop_loop(_: Any) -> None:
            if self._loop is not None:
                self._loop.cancel()

        d.addCallback(stop_loop)
        d.addCallback(lambda _: service.MultiService.stopService(self))
        return d

    async def _close(self, proto: ServerConnection) -> None:
        """Close our side of the connection first and wait until it is gone; the
        ClientService then reconnects, with backoff."""
        if proto.lost or proto.transport is None:
            return
        proto.transport.loseConnection()
        gone = proto.when_lost()
        gone.addTimeout(CLOSE_TIMEOUT, self.reactor)
        try:
            await gone
        except defer.TimeoutError:
            proto.transport.abortConnection()

    # --- the connection loop -----------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            proto: ServerConnection | None = None
            pause = 0.2
            try:
                proto = await self.client.whenConnected(failAfterFailures=None)
                await self._session(proto)
            except defer.CancelledError:
                return
            except errors.IncompatibleProtocol as e:
                log.critical("server refused this render: {why}", why=e.message)
                self.reactor.stop()
                return
            except errors.PermissionDenied as e:
                log.error("server refused this render: {why} (check the render's secret); "
                          "retrying", why=e.message)
                pause = self.config.reconnect_max_delay
            except (error.ConnectionDone, error.ConnectionLost, amp.ProtocolSwitched,
                    errors.NotRegistered, defer.TimeoutError) as e:
                log.info("connection to the server ended ({why}); reconnecting", why=type(e).__name__)
            except Exception:
                log.failure("render session failed; reconnecting")
            finally:
                self.proto = None
            if proto is not None and not proto.lost and not self._stopping:
                await self._close(proto)  # a session ends with our close: the next one reconnects
            if self.client.running and not self._stopping:
                try:
                    await deferLater(self.reactor, max(pause, self._quiet_until - self.reactor.seconds()))
                except defer.CancelledError:  # stopped while pausing before a reconnect
                    return

    async def _session(self, proto: ServerConnection) -> None:
        await proto.callRemote(c.Hello, protocol=c.PROTOCOL_VERSION, kind="render",
                               user=self.config.name, client=f"farmnet-render/{farmnet.__version__}",
                               secret=self.config.secret or None, features=list(c.FEATURES))
        answer = await proto.callRemote(
            c.RegisterRender, name=self.config.name, capacity=self.config.capacity,
            max_tasks=self.config.max_tasks, services=list(self.config.services),
            services_disabled=list(self.config.services_disabled), platform=platform.platform(),
            cpus=os.cpu_count() or 1, memory_mb=psutil.virtual_memory().total >> 20,
            running=self._running(), owner=self.config.owner or None, macs=mac_addresses(),
            facts=resources.facts(self.config.resources.properties, self.config.resources.power))
        self.render_id, self.proto = answer["render_id"], proto
        self._server_takes_reports = True
        self.heartbeat_hold = answer["heartbeat_hold"]
        log.info("registered as render {render_id} with {count} task(s) running",
                 render_id=self.render_id, count=len(self.tasks))
        for task in list(self.tasks.values()):  # finishes the server has not heard of yet
            self._flush(task)
            if task.exit is not None:
                self._report_finished(task)
        while True:
            self._heartbeats += 1
            every = self.config.resources.every
            sample = (self._sample()
                      if every and ((self._heartbeats - 1) % every == 0 or self._due_now()) else None)
            d = proto.callRemote(c.Heartbeat, render_id=self.render_id, running=self._running(),
                                 resources=sample)
            d.addTimeout(self.heartbeat_hold + HEARTBEAT_MARGIN, self.reactor)
            try:
                answer = await d
            except defer.TimeoutError:
                log.warn("server silent past the heartbeat hold: dropping the connection")
                proto.transport.abortConnection()
                raise
            except ConversionError as e:  # a server of another make: obey none of it
                log.error("malformed heartbeat answer from the server: {why}; reconnecting", why=e)
                await self._close(proto)
                return
            for order in answer["orders"]:
                if isinstance(order, CloseOrder | ReconnectOrder):
                    # Replaced, idle or the server stopping: we close first, then reconnect.
                    log.info("server asked this render to {order} ({reason})", order=order.order,
                             reason=order.reason)
                    await self._close(proto)
                    return
                if isinstance(order, SleepOrder):
                    await self._go_to_sleep(proto)
                    return
                self._obey(order)

    async def _go_to_sleep(self, proto: ServerConnection) -> None:
        """Wake-on-LAN: run the sleep command, then leave (the server shows WOL sleeping);
        reconnect after a quiet time, which the suspended host sleeps through."""
        log.info("server asked this render to sleep: {command}", command=self.config.sysjob.cmd_wolsleep)
        sleeper = TaskProcess(self.reactor, self.config.sysjob.cmd_wolsleep, env=self.environ, cwd=None,
                              on_output=lambda data: None)
        sleeper.start()
        result = await sleeper.done
        if not result.success:
            log.error("sleep command failed: {log}", log=sleeper.log.decode("utf-8", "replace"))
            return
        self._quiet_until = self.reactor.seconds() + SLEEP_QUIET
        await self._close(proto)

    def _sample(self) -> HostResources:
        """The resources, to send now (they are not due any more)."""
        self._resources_due = False
        self._sampled_at = self.reactor.seconds()
        return resources.sample(self.config.resources.disk_path, self.gpu.latest)

    def _due_now(self) -> bool:
        """Whether a task's end is to be reported and the last report is REPORT_AFTER_TASK old."""
        return self._resources_due and self.reactor.seconds() - self._sampled_at >= REPORT_AFTER_TASK

    def _report_resources(self) -> None:
        """Fresh resources between held heartbeats (every resources.interval, and when a task
        ends), so that a block's needs see memory and disk as they are."""
        proto, render_id = self.proto, self.render_id
        if proto is None or render_id is None or not self._server_takes_reports:
            return
        d = proto.callRemote(c.ReportResources, render_id=render_id, resources=self._sample())
        d.addErrback(self._reports_refused)
        d.addErrback(self._report_failed, "resources")

    def _reports_refused(self, failure: Any) -> None:
        failure.trap(amp.UnhandledCommand)
        log.info("the server takes no report_resources (an older server): resources go with heartbeats")
        self._server_takes_reports = False

    def _report_soon(self) -> None:
        """One report for tasks ending together, once the memory they held is given back.  A busy
        render's heartbeats take it (one per REPORT_AFTER_TASK at most); an idle one's report goes
        alone."""
        self._resources_due = True
        if self._report_call is None or not self._report_call.active():
            self._arm_report()

    def _arm_report(self) -> None:
        self._report_armed_at = self.reactor.seconds()
        self._report_call = self.reactor.callLater(REPORT_AFTER_TASK, self._report_due)

    def _report_due(self) -> None:
        if not self._resources_due:
            return  # a heartbeat took them
        if self._sampled_at >= self._report_armed_at:
            self._arm_report()  # sent meanwhile: the heartbeats may take them from now on, else this
            return
        self._report_resources()

    def _running(self) -> list[TaskRef]:
        return [t.order.ref() for t in self.tasks.values()]

    # --- orders ------------------------------------------------------------------------

    def _obey(self, order: Order) -> None:
        if isinstance(order, StartOrder):
            self._start(order)
        elif isinstance(order, KillOrder):
            task = self.tasks.get(order.key)
            if task is not None and task.run == order.run and task.exit is None:
                task.process.kill(order.reason or "killed by the server")
            elif task is None:
                log.info("kill of unknown task {key} run {run}", key=order.key, run=order.run)
        elif isinstance(order, ExitOrder):
            log.info("server asked this render to exit")
            self.reactor.stop()

    def _start(self, order: StartOrder) -> None:
        key = order.key
        old = self.tasks.get(key)
        if old is not None and old.exit is not None and old.run < order.run:
            # The server starts a newer run: it has closed the old one, whose report
            # (still unacknowledged) it would only find stale.
            log.info("task {key} run {run} is over for the server; starting run {new}", key=key,
                     run=old.run, new=order.run)
            del self.tasks[key]
        elif old is not None:
            log.warn("task {key} is already here; start ignored", key=key)
            return
        fields = unstructure(order, StartOrder)
        env = {**self.environ, **order.environment}
        env["FARMNET_RENDER"] = self.config.name
        prepared = services.prepare(fields, self.config, env, self.service_classes)  # the service's command
        directory = order.working_directory or os.getcwd()
        if order.skip_existing_files and files.all_exist(
                order.files, directory, order.file_size_min, order.file_size_max):
            prepared = attrs.evolve(
                prepared, command="echo 'farmnet: the task files exist: command skipped (skipexistingfiles)'")
        holder: list[RunningTask] = []
        process = TaskProcess(
            self.reactor, prepared.command, env=prepared.environment,
            cwd=order.working_directory or None,
            on_output=lambda data: self._output(holder[0], data), log_max=self.config.tasks.log_max,
            kill_grace=self.config.tasks.kill_grace,
            memory_limit_mb=self.config.tasks.memory_limit_mb, limiter=self.limiter)
        # A block that names no parser gets its service's, as af.py gives it (CGRU's table).
        parser = order.parser or SERVICE_PARSERS.get(order.service) or "generic"
        task = RunningTask(order, fields, process, parser_by_name(parser, self.parser_classes, fields))
        holder.append(task)
        self.tasks[key] = task
        process.start()
        if order.max_run_time > 0:
            # The server kills the run at this age; this is for when it cannot (away).
            task.timeout_call = self.reactor.callLater(
                order.max_run_time, process.kill, f"task_max_run_time of {order.max_run_time} s exceeded")
        process.done.addCallback(lambda result: self._exited(task, result))

    # --- output and finish -------------------------------------------------------------

    def _output(self, task: RunningTask, data: bytes) -> None:
        progress = task.parser.feed(data)
        if progress is not None:
            task.progress = progress
        self._read_parser(task)
        task.pending += data
        if len(task.pending) + task.in_flight >= BACKLOG:
            task.process.pause_output()  # resumed by _sent once the server caught up
        if task.flush_call is None:
            task.flush_call = self.reactor.callLater(self.config.tasks.output_flush, self._flush, task)

    def _read_parser(self, task: RunningTask) -> None:
        """What the parser found besides progress: where in its frames the task is, its first warning,
        and the lines that stop it (an error, as Afanasy's render stops a task at once; the end of
        the work, for programs that do not exit by themselves)."""
        parser = task.parser
        where = parser_frame(parser)
        if where is not None and where != task.frame_sent:
            task.frame = where
        if not task.warning_sent and task.warning is None:
            warnings = parser_warnings(parser)
            if warnings:
                task.warning = warnings[0]
        if task.exit is not None or task.parser_stop is not None:
            return
        errors = parser_errors(parser)
        if errors:
            task.parser_stop = "error"
            task.process.kill(f"{parser.name} parser found an error: {errors[0]}")
        elif parser_finished(parser):
            task.parser_stop = "finished"
            task.process.kill(f"{parser.name} parser read that the work is done")

    def _flush(self, task: RunningTask) -> None:
        if task.flush_call is not None and task.flush_call.active():
            task.flush_call.cancel()
        task.flush_call = None
        proto = self.proto
        if proto is None or not (task.pending or task.progress is not None or task.frame is not None
                                 or task.warning is not None):
            return
        while task.pending or task.progress is not None or task.frame is not None or task.warning is not None:
            data = bytes(task.pending[:CHUNK])
            del task.pending[:CHUNK]
            task.in_flight += len(data)
            frame, percent_frame = task.frame if task.frame is not None else (None, None)
            d = proto.callRemote(c.TaskOutput, render_id=self.render_id, **task.reference(), data=data,
                                 progress=task.progress, frame=frame, percent_frame=percent_frame,
                                 warning=task.warning)
            d.addBoth(self._sent, task, len(data)).addErrback(self._report_failed, "output")
            task.progress = None
            if task.frame is not None:
                task.frame_sent, task.frame = task.frame, None
            if task.warning is not None:
                task.warning, task.warning_sent = None, True

    def _sent(self, result: Any, task: RunningTask, size: int) -> Any:
        """A TaskOutput answered (or lost with its connection): read the task's output again
        once half the backlog is through."""
        task.in_flight -= size
        if len(task.pending) + task.in_flight <= BACKLOG // 2:
            task.process.resume_output()
        return result

    def _exited(self, task: RunningTask, result: TaskExit) -> None:
        services.cleanup(task.fields, self.config)
        if task.timeout_call is not None and task.timeout_call.active():
            task.timeout_call.cancel()
        task.exit = result
        parser_end(task.parser)  # its last unfinished line, and a judgement of the whole run
        self._read_parser(task)
        task.files = parser_files(task.parser)
        task.bad_files = missing_or_empty(task.files, task.order.working_directory)
        self._flush(task)
        if self.proto is not None:
            self._report_finished(task)
            self._report_soon()  # what the task held is free again

    def _report_finished(self, task: RunningTask) -> None:
        result = task.exit
        assert result is not None
        exit_code, signal, message = self._verdict(task, result)
        if exit_code == 0 and signal is None and task.bad_files:
            # Exit status 0 yet failed (a frame Blender said it saved is missing or empty): reported
            # without an exit status, as a failure, like a run under task_min_run_time.
            count = len(task.bad_files)
            message = f"output file {task.bad_files[0]}" + (f" (and {count - 1} more)" if count > 1 else "")
            exit_code = None
        order = task.order
        if exit_code == 0 and signal is None and order.check_rendered_files:
            problem = files.rendered_files_problem(order.files, order.working_directory or os.getcwd(),
                                                   order.file_size_min, order.file_size_max)
            if problem is not None:  # an error, as Afanasy's checkrenderedfiles makes it
                message, exit_code = f"exit status 0, but {problem}", None
        d = self.proto.callRemote(
            c.TaskFinished, render_id=self.render_id, **task.reference(),
            exit_code=exit_code, signal=signal, time_started=result.time_started,
            time_done=result.time_done, message=message, fatal=parser_fatal(task.parser) or None,
            resources=None if result.peak_memory_mb is None else RunResources(result.peak_memory_mb),
            files=task.files or None)

        def acknowledged(answer: dict[str, Any]) -> None:
            if self.tasks.get(task.key) is task:
                del self.tasks[task.key]
            for next_order in answer.get("orders") or ():  # finish_orders: the next task at once
                if self._stopping:  # its task is freed when this render registers without it
                    log.info("stopping: {order} order ignored", order=next_order.order)
                    continue
                self._obey(next_order)

        d.addCallbacks(acknowledged, self._report_failed, errbackArgs=("finish",))

    @staticmethod
    def _verdict(task: RunningTask, result: TaskExit) -> tuple[int | None, int | None, str]:
        """The exit code, signal and message reported for a run, its parser's findings included.

        As Afanasy's render: an error line fails the run whatever its exit status; a bad result fails
        a run that exited 0; a parser that read the end of the work makes the run it stopped done.
        A run the parser fails is reported without exit code when its process exited 0.
        """
        parser = task.parser
        name = parser.name
        errors, bad = parser_errors(parser), parser_bad_results(parser)
        exit_code, signal = result.exit_code, result.signal
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            return (None if exit_code == 0 else exit_code), signal, \
                f"{name} parser found an error: {errors[0]}{more}"
        if task.parser_stop == "finished" and result.killed is not None:
            return 0, None, f"{name} parser read that the work is done"
        message = ""
        if result.killed:
            message = f"killed: {result.killed}"
        elif result.reason:
            message = result.reason
        elif signal is not None:
            message = f"ended by signal {signals.Signals(signal).name}"
        elif exit_code:
            message = f"exit status {exit_code}"
        elif bad:
            return None, None, f"{name} parser found a bad result: {bad[0]}"
        else:
            warnings = parser_warnings(parser)
            if warnings:
                message = f"{name} parser found a warning: {warnings[0]}"
        return exit_code, signal, message

    def _report_failed(self, failure: Any, what: str) -> None:
        # A lost connection is retried after reconnecting; anything else is logged.
        if not failure.check(error.ConnectionDone, error.ConnectionLost, errors.NotRegistered):
            log.failure("sending task {what} failed", failure, what=what)


def missing_or_empty(files: list[str], working_directory: str) -> list[str]:
    """Which of the files a run says it wrote are missing or empty (a zero-byte frame is a failed
    write: a full disk, a crash while saving), each with what is wrong."""
    bad = []
    for name in files:
        path = os.path.join(working_directory or os.getcwd(), os.path.expanduser(name))
        try:
            size = os.stat(path).st_size
        except OSError as e:
            bad.append(f"{name} is missing ({e.strerror})")
            continue
        if size == 0:
            bad.append(f"{name} is empty (0 bytes)")
    return bad


def mac_addresses() -> list[str]:
    """This host's MAC addresses (for wake-on-LAN), loopback and empty ones left out."""
    macs = []
    for name, addresses in psutil.net_if_addrs().items():
        for address in addresses:
            if address.family == psutil.AF_LINK and address.address and name != "lo":
                mac = address.address.lower().replace("-", ":")
                if mac != "00:00:00:00:00:00" and mac not in macs:
                    macs.append(mac)
    return macs

