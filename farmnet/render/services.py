"""Service classes: how a render turns a start order into the command it runs.

A block names its service the way Afanasy does (``"service": "blender"``).  On the render, the service
class of that name builds the task's final shell command from the order (and may adjust its environment)
just before the task starts.  The built-ins, with Afanasy's names:

``generic``
    The command as is.  Unknown service names use it too (a job may come from a farm with more services).
``postcmd``
    The system job's post commands (run at a job's deletion).  The command as is, run in the order's
    working directory; or, when the system job sends ``{"command": CMD, "working_directory": DIR}`` as
    the task's command, CMD run in DIR (each deleted job's post command runs in that job's directory).
    A command starting with ``deletefiles`` (what CGRU's ``af.Job.setPostDeleteFiles`` writes) runs
    ``python -m farmnet.render.deletefiles``, so it works on renders without CGRU installed.
``events``
    The system job's events: the task's command is the event data (JSON).  The final command runs
    ``python -m farmnet.sysjob.events --service CLASS`` (CLASS: ``render.sysjob.events_service_class``).  The
    data never goes through shell quoting: up to :data:`EVENT_DATA_ENV_MAX` bytes it is passed in the
    environment variable ``FARMNET_EVENT_DATA``; beyond that (the environment of a process is limited) it
    is written, mode 600, to ``<state_dir>/events/JOB-BLOCK-TASK-RUN.json`` and passed as
    ``--data-file``; the render removes that file when the task ends (:func:`cleanup`).
``wakeonlan``
    The system job's Wake-on-LAN: the command is Afanasy's ``wolwake MAC1 MAC2 ...``; the final command
    is ``python -m farmnet.sysjob.wol --broadcast ADDR --port PORT MAC1 MAC2 ...``
    (``render.sysjob.wol_broadcast``, ``render.sysjob.wol_port``).  The MACs are checked by that
    program, so a bad one is a task error that says so.
``htracker``
    CGRU's Houdini tracker: `` -J JOB_ID`` appended to the command, and exit status 1 counted a success.
Every other CGRU service name (``nuke``, ``hbatch_mantra``, ``maya``, ``movgen``, ``ffmpeg``, ``rsync``,
...; :data:`farmnet.model.catalog.SERVICES`)
    The command as is, as CGRU's service of that name runs it.  When the block names no parser, the
    render uses the parser CGRU's service sets (``nuke`` → ``nuke``;
    :data:`~farmnet.model.catalog.SERVICE_PARSERS`).
``blender`` (and ``blender_cycles``, ``blender_render``, ``blender_internal``)
    Blender's command line, with this render's Blender program (or the bpy module's runner): see
    :mod:`farmnet.render.blender`.

Custom classes are named in the render's configuration, ``service_classes: {maya: "studio.farm:Maya"}``,
and parsers likewise (``parser_classes``): a class is imported once, when the render starts
(:func:`service_registry`, :func:`parser_registry`).  A class that cannot be imported is logged as an error
and its name falls back to the built-in of that name, else to ``generic``: a broken plug-in never stops the
render.  A service class is called with no arguments and must have what :class:`Service` describes.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import attrs
from twisted.logger import Logger

from farmnet.config import RenderConfig
from farmnet.model.catalog import SERVICES
from farmnet.plugins import import_object
from farmnet.render.blender import BlenderService, blender_services
from farmnet.render.parsers import Parser, builtin_parsers
from farmnet.sysjob.wol import normalize_mac

__all__ = [
    "EVENT_DATA_ENV",
    "EVENT_DATA_ENV_MAX",
    "BlenderService",
    "EventsService",
    "GenericService",
    "HtrackerService",
    "PostCmdService",
    "Prepared",
    "Service",
    "WakeOnLanService",
    "builtin_services",
    "cleanup",
    "event_data_path",
    "parser_registry",
    "prepare",
    "service_for",
    "service_registry",
]

_logger = Logger(namespace="farmnet.render.services")

#: The environment variable that carries the event data to ``farmnet.sysjob.events``.
EVENT_DATA_ENV = "FARMNET_EVENT_DATA"
#: Largest event data passed in the environment (Linux allows 128 KiB per variable); more goes in a file.
EVENT_DATA_ENV_MAX = 64 * 1024


class Service(Protocol):
    """What the render needs from a service class."""

    name: str

    def command(self, order: Mapping[str, Any], config: RenderConfig) -> str:
        """The shell command (``/bin/sh -c``) the task runs."""
        ...

    def environment(self, order: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
        """The task's whole environment, given the one the render built (return a new dict)."""
        ...


ServiceFactory = Callable[[], Service]
ParserFactory = Callable[[], Parser]


class GenericService:
    """Afanasy's "generic" service: the order's command and environment as they are."""

    name = "generic"

    def command(self, order: Mapping[str, Any], config: RenderConfig) -> str:
        return str(order.get("command") or "")

    def environment(self, order: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
        return dict(env)


# Used when a post command's directory is missing: the same words as the render's own cd failure.
_POSTCMD_CD = (
    'cd -- {dir} || {{ printf "farmnet: cannot change to working directory %s\\n" {dir} >&2; exit 127; }}'
)


class PostCmdService(GenericService):
    """System job post commands: as is, or ``{"command", "working_directory"}`` run in that directory."""

    name = "postcmd"

    def command(self, order: Mapping[str, Any], config: RenderConfig) -> str:
        command = str(order.get("command") or "")
        if not command.lstrip().startswith("{"):
            return _own_deletefiles(command)
        try:
            data = json.loads(command)
        except ValueError:
            return command  # a post command that happens to start with "{" (a shell group)
        if not isinstance(data, dict) or not isinstance(data.get("command"), str):
            return command
        directory = data.get("working_directory")
        if not isinstance(directory, str) or not directory:
            return _own_deletefiles(data["command"])
        # A newline, not "&&": the post command is any shell text, and stays one unit after the cd.
        return _POSTCMD_CD.format(dir=shlex.quote(directory)) + "\n" + _own_deletefiles(data["command"])


def _own_deletefiles(command: str) -> str:
    """CGRU's ``deletefiles PATH...`` post command, run by farmnet's own module."""
    word, _, rest = command.lstrip().partition(" ")
    if word != "deletefiles":
        return command
    return f"{shlex.quote(sys.executable)} -m farmnet.render.deletefiles {rest}"


def event_data_path(order: Mapping[str, Any], config: RenderConfig) -> str:
    """Where the events service writes a task's event data too big for the environment."""
    name = "{}-{}-{}-{}.json".format(*(int(order.get(k) or 0) for k in ("job_id", "block", "task", "run")))
    return os.path.join(config.state_dir, "events", name)


def _event_data(order: Mapping[str, Any]) -> bytes:
    return str(order.get("command") or "").encode("utf-8")


class EventsService:
    """The system job's events: run ``farmnet.sysjob.events`` with the task's command as its data."""

    name = "events"

    def command(self, order: Mapping[str, Any], config: RenderConfig) -> str:
        argv = [sys.executable, "-m", "farmnet.sysjob.events",
                "--service", config.sysjob.events_service_class]
        data = _event_data(order)
        if len(data) > EVENT_DATA_ENV_MAX:
            path = event_data_path(order, config)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
            argv += ["--data-file", path]
        return shlex.join(argv)

    def environment(self, order: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, str]:
        result = dict(env)
        data = _event_data(order)
        if len(data) > EVENT_DATA_ENV_MAX:
            result.pop(EVENT_DATA_ENV, None)  # the data is in the file
        else:
            result[EVENT_DATA_ENV] = data.decode("utf-8")
        return result


class WakeOnLanService(GenericService):
    """Wake-on-LAN: ``wolwake MAC...`` becomes ``python -m farmnet.sysjob.wol ... MAC...``."""

    name = "wakeonlan"

    def command(self, order: Mapping[str, Any], config: RenderConfig) -> str:
        words = str(order.get("command") or "").split()
        if words:  # the command's name ("wolwake", Afanasy's af_render_cmd_wolwake): anything not a MAC
            try:
                normalize_mac(words[0])
            except ValueError:
                words = words[1:]
        argv = [sys.executable, "-m", "farmnet.sysjob.wol", "--broadcast", config.sysjob.wol_broadcast,
                "--port", str(config.sysjob.wol_port), "--", *words]
        return shlex.join(argv)


# --- CGRU's other services ------------------------------------------------------------------


class HtrackerService(GenericService):
    """CGRU's Houdini tracker: the job's id is passed (``-J ID``), and exit status 1 is a success too."""

    name = "htracker"

    def command(self, order: Mapping[str, Any], config: RenderConfig) -> str:
        command = f"{order.get('command') or ''} -J {int(order.get('job_id') or 0)}"
        # In a subshell on lines of its own, so its own "exit" or a trailing comment cannot skip the check.
        return f"(\n{command}\n)\nstatus=$?; [ $status -eq 1 ] && exit 0; exit $status"


def _generic_named(name: str) -> ServiceFactory:
    """A CGRU service that runs the command as it is (it only picks the block's parser in af.py)."""
    return type(f"GenericService_{name}", (GenericService,),
                {"name": name, "__doc__": GenericService.__doc__})


_OWN: Mapping[str, ServiceFactory] = {
    GenericService.name: GenericService,
    PostCmdService.name: PostCmdService,
    EventsService.name: EventsService,
    WakeOnLanService.name: WakeOnLanService,
    **blender_services(),
    HtrackerService.name: HtrackerService,
}
_BUILTIN: Mapping[str, ServiceFactory] = MappingProxyType({
    **{name: _generic_named(name) for name in sorted(SERVICES) if not name.startswith("blender")},
    **_OWN,
})


def builtin_services() -> Mapping[str, ServiceFactory]:
    """The service classes farmnet ships, by name (read-only)."""
    return _BUILTIN


# --- custom classes ----------------------------------------------------------------------


def _load_classes(
    kind: str,
    classes: Mapping[str, str],
    builtins: Mapping[str, Callable[[], Any]],
    fallback: Callable[[], Any],
    method: str,
) -> Mapping[str, Callable[[], Any]]:
    registry = dict(builtins)
    for name, spec in classes.items():
        try:
            factory = import_object(spec)
            if not callable(factory) or not callable(getattr(factory, method, None)):
                raise ImportError(f"{spec!r} is not a {kind} class (it has no {method}())")
        except ImportError as e:
            use = builtins.get(name, fallback)
            registry[name] = use
            _logger.error(
                "{kind} class {spec!r} for {kind} {name!r} not loaded: {why}; using the {fallback!r} {kind}",
                kind=kind, spec=spec, name=name, why=str(e), fallback=getattr(use, "name", name),
            )
            continue
        registry[name] = factory
        _logger.info("{kind} {name!r}: class {spec!r}", kind=kind, name=name, spec=spec)
    return MappingProxyType(registry)


def service_registry(config: RenderConfig) -> Mapping[str, ServiceFactory]:
    """The built-in services plus ``config.service_classes``, imported now (call once, at render start)."""
    return _load_classes("service", config.service_classes, builtin_services(), GenericService, "command")


def parser_registry(config: RenderConfig) -> Mapping[str, ParserFactory]:
    """The built-in parsers plus ``config.parser_classes``, imported now (call once, at render start)."""
    generic = builtin_parsers()["generic"]
    return _load_classes("parser", config.parser_classes, builtin_parsers(), generic, "feed")


def service_for(name: str, registry: Mapping[str, ServiceFactory] | None = None) -> Service:
    """A service object for one task; an unknown name is ``generic`` (with a warning), "" silently."""
    services = builtin_services() if registry is None else registry
    factory = services.get(name) if name else None
    if factory is None:
        if name:
            _logger.warn("unknown service {service!r}, using 'generic'", service=name)
        return GenericService()
    return factory()


# --- what the render calls --------------------------------------------------------------


@attrs.frozen
class Prepared:
    """A task's final command and environment, and the service that made them."""

    command: str
    environment: dict[str, str]
    service: str


def prepare(
    order: Mapping[str, Any],
    config: RenderConfig,
    env: Mapping[str, str],
    registry: Mapping[str, ServiceFactory] | None = None,
) -> Prepared:
    """The command and environment the render starts for ``order``, by its service.

    Never raises: a service that fails (a custom class's bug, a full disk) makes a command that prints
    why and exits 1, so the task fails the ordinary way and its log says what happened.
    """
    name = str(order.get("service") or "generic")
    try:
        service = service_for(name, registry)
        command = apply_hosts(service, service.command(order, config), order.get("hosts") or ())
        return Prepared(command, service.environment(order, env), service.name)
    except Exception as e:
        _logger.failure("service {service!r} failed to prepare task {order}", service=name,
                        order={k: order.get(k) for k in ("job_id", "block", "task", "run")})
        message = f"farmnet: service {name!r} failed on this render: {type(e).__name__}: {e}"
        return Prepared(f"printf '%s\\n' {shlex.quote(message)} >&2; exit 1", dict(env), name)


def apply_hosts(service: Service, command: str, hosts: Iterable[str]) -> str:
    """A multi-host task's primary: Afanasy's ``@AF_HOSTS@`` becomes its hosts, as the service
    formats them (``hosts_prefix``, ``hosts_separator``; Afanasy's default ``-H a,b``)."""
    hosts = list(hosts)
    if not hosts:
        return command
    prefix = getattr(service, "hosts_prefix", "-H ")
    separator = getattr(service, "hosts_separator", ",")
    return command.replace("@AF_HOSTS@", prefix + separator.join(hosts))


def cleanup(order: Mapping[str, Any], config: RenderConfig) -> None:
    """Remove what :func:`prepare` may have left for ``order`` (the events service's data file).

    Call it when every task ends, whatever its service: a custom class may extend the events service.
    """
    try:
        os.unlink(event_data_path(order, config))
    except FileNotFoundError:
        pass
    except OSError as e:
        _logger.warn("cannot remove event data file: {why}", why=str(e))
