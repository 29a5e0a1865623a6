"""The farm's configuration: attrs classes loaded from YAML.

Server, renders and clients share one file format (see ``etc/farmnet.yaml``). Values
may use ``${VAR}`` / ``${VAR:-default}`` from the environment so one file serves many
machines. Every mistake in the file is reported at once, each with its key's path, so
a farm is not started, stopped and restarted once per typo. With no file at all the
defaults give a working localhost-only farm.

Each program's section is split in nested sections (``server.scheduling``,
``server.stats``, ...), attrs classes that the services take as they are. Keys of the
older flat format are still read: each is put in its section and named in
``Config.moved``, which the programs log at start.

Conversion is driven by the attrs field types, written once in :func:`_convert`: a new
field of a supported type (``str``, ``int``, ``float``, ``bool``, ``tuple[T, ...]``,
``dict[str, T]``, ``T | None``, ``Any``, a nested attrs section) needs no new loading
code. It is hand-written rather than cattrs so that every error keeps its key path,
what was expected and a did-you-mean, all reported at once.
"""

import difflib
import getpass
import json
import math
import os
import re
import socket
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import yaml
from twisted.internet.endpoints import clientFromString, serverFromString

__all__ = [
    "AfanasyConfig",
    "AuthConfig",
    "ClientConfig",
    "Config",
    "ConfigError",
    "ConnectionsConfig",
    "LimitsConfig",
    "ManholeConfig",
    "RenderConfig",
    "RenderSysJobConfig",
    "ResourcesConfig",
    "SchedulingConfig",
    "ServerConfig",
    "StatsConfig",
    "StoreConfig",
    "SysJobConfig",
    "TasksConfig",
    "WebConfig",
    "default_config_path",
    "default_state_dir",
    "load_config",
    "moved_keys",
]

Environ = Mapping[str, str]
#: A value check: returns a message when the (already converted) value is wrong.
Check = Callable[[Any], str | None]

CONFIG_ENV = "FARMNET_CONFIG"
#: The values of the servers' and renders' log_level setting, least to most severe.
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
ROOT_STATE_DIR = "/var/lib/farmnet"


class ConfigError(Exception):
    """Every problem found in a configuration, so all can be fixed in one pass.

    ``errors`` holds one line per problem, ``"server.listen: expected a string,
    got 12"``: the key's dotted path (list items as ``[i]``) and what is wrong.
    """

    def __init__(self, errors: list[str], source: str | None = None) -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(self.errors)

    def __str__(self) -> str:
        where = f" in {self.source}" if self.source else ""
        lines = "\n".join(f"  {error}" for error in self.errors)
        return f"invalid configuration{where}:\n{lines}"


# --- machine-dependent defaults ----------------------------------------------------


def default_state_dir(environ: Environ | None = None, uid: int | None = None) -> str:
    """Where farmnet keeps state: system-wide for root, per user (XDG) otherwise.

    ``environ`` and ``uid`` default to this process's; they are parameters so the
    choice can be tested without being root.
    """
    env = os.environ if environ is None else environ
    if uid is None:
        # os.geteuid does not exist on Windows, where renders may run too.
        uid = os.geteuid() if hasattr(os, "geteuid") else -1
    if uid == 0:
        return ROOT_STATE_DIR
    xdg = env.get("XDG_STATE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec says to ignore a relative value
        base = xdg
    else:
        home = env.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".local", "state")
    return os.path.join(base, "farmnet")


def default_config_path(environ: Environ | None = None) -> str | None:
    """The file named by ``$FARMNET_CONFIG``, or None: no file means defaults."""
    env = os.environ if environ is None else environ
    return env.get(CONFIG_ENV) or None


def _default_user(environ: Environ) -> str:
    """The login name, read from ``environ`` first like :func:`getpass.getuser`."""
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        if environ.get(name):
            return environ[name]
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers)
        return "unknown"


def _default_hostname(environ: Environ) -> str:
    return socket.gethostname()


def _server_store(environ: Environ) -> str:
    return os.path.join(default_state_dir(environ), "server")


def _render_state_dir(environ: Environ) -> str:
    return os.path.join(default_state_dir(environ), "render")


# --- checks ------------------------------------------------------------------------


def _at_least(low: float) -> Check:
    def check(value: Any) -> str | None:
        return None if value >= low else f"must be >= {low}, got {value!r}"

    return check


def _above(low: float) -> Check:
    def check(value: Any) -> str | None:
        return None if value > low else f"must be > {low}, got {value!r}"

    return check


def _database_uri(value: Any) -> str | None:
    if value == "":
        return None
    if isinstance(value, str) and value.startswith(("postgresql://", "postgres://")):
        return None  # what libpq makes of the rest is checked when the server is built
    return f"must be \"\" or a libpq URI such as postgresql://farmnet@db.example.com/farmnet, got {value!r}"


def _not_empty(value: Any) -> str | None:
    return None if value else "must not be empty"


def _run_check(instance: Any, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    """attrs validator: the field's metadata check, so direct construction is checked too."""
    message = attribute.metadata["check"](value)
    if message:
        raise ValueError(f"{attribute.name}: {message}")


def _setting(
    default: Any = attrs.NOTHING,
    *,
    doc: str,
    check: Check | None = None,
    env_default: Callable[[Environ], Any] | None = None,
    env: str | None = None,
) -> Any:
    """One configuration field: its default, a doc line and an optional check.

    ``env_default`` computes a machine-dependent default from an environment:
    :func:`load_config` calls it with the environment it was given, and plain
    construction calls it with ``os.environ`` (at construction, never at import).
    ``env`` names an environment variable that :func:`load_config` puts over the file
    (a command-line value still wins).
    """
    metadata: dict[str, Any] = {"doc": doc}
    if env is not None:
        metadata["env"] = env
    if check is not None:
        metadata["check"] = check
    if env_default is not None:
        metadata["env_default"] = env_default
        compute = env_default
        default = attrs.Factory(lambda: compute(os.environ))
    return attrs.field(
        default=default,
        validator=_run_check if check is not None else None,
        metadata=metadata,
    )


# --- the classes: one per section; each is what its service takes -----------------


def _section(cls: type, doc: str) -> Any:
    """A nested section: its own mapping in the file, its defaults when left out."""
    return attrs.field(factory=cls, metadata={"doc": doc})


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        if value in choices:
            return None
        return f"must be {', '.join(f'{c!r}' for c in choices[:-1])} or {choices[-1]!r}, got {value!r}"

    return check


class _ParseOnly:
    """Stands for the reactor while an endpoint string is only parsed (nothing listens)."""


def _endpoint_check(parse: Callable[[Any, str], Any], example: str, optional: bool) -> Check:
    """An endpoint string Twisted can parse (""  means off when ``optional``), found at load
    time with every other error instead of when the server starts to listen."""

    def check(value: Any) -> str | None:
        if value == "" and optional:
            return None
        if not isinstance(value, str) or not value:
            return "must not be empty"
        try:
            parse(_ParseOnly(), value)
        except Exception as e:  # ValueError, TypeError, OSError (an ssl: key file)...
            return f"{value!r} is not an endpoint Twisted knows ({e}); e.g. {example!r}"
        return None

    return check


def _client_endpoint(reactor: Any, value: str) -> Any:
    """Each of a comma-separated list (several servers on one PostgreSQL store)."""
    from farmnet.protocol.endpoints import expand_shorthand, split_servers

    return [clientFromString(reactor, expand_shorthand(server)) for server in split_servers(value) or [""]]


_LISTEN = _endpoint_check(serverFromString, "tcp:51100:interface=127.0.0.1", optional=False)
_LISTEN_OR_OFF = _endpoint_check(serverFromString, "tcp:51180:interface=127.0.0.1", optional=True)
_SERVER = _endpoint_check(_client_endpoint, "farm.example.com:51100", optional=False)


def _json_data(value: Any) -> str | None:
    """Custom data goes to events tasks as JSON: YAML dates and the like cannot."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return "must hold only strings, numbers, booleans, null, lists and mappings"
    return None


@attrs.frozen
class SchedulingConfig:
    """The farm-wide rules the farm model obeys (Afanasy's defaults); the Farm takes this."""

    admins: tuple[str, ...] = _setting((), doc="User names with admin rights.")
    errors_retries: int = _setting(
        3, doc="A failed task is ready again while its error count is <= this.", check=_at_least(0))
    errors_avoid_host: int = _setting(
        3, doc="A block stops using a host after this many errors on it.", check=_at_least(0))
    errors_task_same_host: int = _setting(
        3, doc="A task stops using a host after this many errors on it.", check=_at_least(0))
    errors_forgive_time: float = _setting(
        18000.0, doc="Seconds after its last error an avoided host is forgiven.", check=_at_least(0))
    sick_errors_count: int = _setting(
        0, doc="Errors in a row from this many different jobs make a render SICK (0: never).",
        check=_at_least(0))
    task_reconnect_timeout: float = _setting(
        30.0, doc="Seconds a task of a vanished render waits for it before being ready again.",
        check=_at_least(0))
    max_tasks_per_job: int = _setting(1_000_000, doc="The most tasks one job may have.", check=_above(0))
    users_solving: str = _setting(
        "need", doc='How users share the farm: "need" (1.1^priority / (running + 1)) or "order" (priority).',
        check=_one_of("need", "order"))
    solve_by_capacity: bool = _setting(
        True, doc="Need counts running capacity (true) or running tasks (false).")
    tickets: dict[str, int] = _setting(
        attrs.Factory(dict), doc="Licence tickets farm-wide, e.g. {NUKE: 20}: no task starts past them.")
    tickets_per_host: dict[str, int] = _setting(
        attrs.Factory(dict), doc="Licence tickets per render, e.g. {NUKE: 1}.")
    known_services: tuple[str, ...] = _setting(
        (), doc="Service names the renders' own classes (render service_classes) add to CGRU's: "
                "a block naming a service known to neither is submitted with a warning.")
    known_parsers: tuple[str, ...] = _setting(
        (), doc="Parser names the renders' own classes (render parser_classes) add to CGRU's: "
                "a block naming a parser known to neither is submitted with a warning.")
    capacity_reserve_after: float = _setting(
        60.0, doc="Seconds a block may wait for free capacity before renders are kept for it "
                  "(no starvation by capacity; doc/scheduling.md); 0: never.", check=_at_least(0))
    capacity_reserve_renders: int = _setting(
        1, doc="Renders kept at once for the block that waited longest for free capacity.",
        check=_above(0))


@attrs.frozen
class StoreConfig:
    """Where the server keeps the farm's state and task outputs."""

    path: str = _setting(doc="State directory (the farm's state, task outputs).", check=_not_empty,
                         env_default=_server_store)
    output_max_bytes: int = _setting(
        10 * 1024 * 1024, doc="Task output kept by the server per task run, in bytes.", check=_at_least(0))
    backup_interval: float = _setting(
        3600.0, doc="Seconds between online backups of the farm's state into <store>/backups; 0: none.",
        check=_at_least(0))
    backups: int = _setting(24, doc="Backups kept in <store>/backups (the oldest go first).",
                            check=_at_least(1))
    database: str = _setting(
        "", doc='The farm\'s state in PostgreSQL: a libpq URI (postgresql://user@host/db); "" keeps it '
                'in <store>/farm.sqlite. Several servers on one database: one is active, the others '
                'stand by.',
        check=_database_uri)
    cutoff_exit: float = _setting(
        30.0, doc="On PostgreSQL: seconds an active server cut off from its database waits for it, "
                  "acknowledging nothing, before it exits (its renders then move to a standby); 0: for ever.",
        check=_at_least(0))


@attrs.frozen
class ConnectionsConfig:
    """How the server holds, watches and closes its AMP connections."""

    heartbeat_hold: float = _setting(
        60.0, doc="Seconds a render's Heartbeat is held open when there are no orders.", check=_above(0))
    event_hold: float = _setting(
        20.0, doc="Seconds a monitor's PollEvents is held open when there are no events.", check=_above(0))
    zombie_time: float = _setting(
        16.0, doc="Seconds of silence after which a render is offline (zombie).", check=_above(0))
    close_wait: float = _setting(
        2.0, doc="Seconds a peer asked to close has to close first before the server resets it.",
        check=_at_least(0))
    idle_timeout: float = _setting(
        300.0,
        doc="Seconds after which a tool or monitor connection with nothing to do is closed (0: never).",
        check=_at_least(0))
    max_connections: int = _setting(
        0, doc="AMP connections open at once (0: no limit but the open files; the web has its own).",
        check=_at_least(0))


@attrs.frozen
class AuthConfig:
    """Who may connect: renders by a shared secret, tools, monitors and the web by password."""

    render_secret: str = _setting(
        "", doc='Enrolment secret renders must give (their "secret"); "" lets any render register.')
    users_file: str = _setting(
        "",
        doc='Tool and monitor users: a file of user:hash lines; "" accepts any user, from localhost only.')
    outputs: str = _setting(
        "owner",
        doc='With a users_file, who reads task outputs (AMP and web alike): "owner" (the job\'s user and '
            'admins), "users" (any logged-in user) or "public" (also anonymous web readers).',
        check=_one_of("owner", "users", "public"))
    free_failures: int = _setting(
        5, doc="Failed secrets or passwords from one address before it is refused for a while.",
        check=_at_least(0))
    backoff_max: float = _setting(
        60.0, doc="Longest refusal (seconds) of an address after failed logins; each failure doubles it.",
        check=_above(0))


@attrs.frozen
class LimitsConfig:
    """Per-connection limits; past one, that connection (never the server) is closed."""

    max_connections_per_address: int = _setting(
        256, doc="Connections open at once from one peer address (0: no limit).", check=_at_least(0))
    max_box_bytes: int = _setting(
        64 * 1024 * 1024,
        doc="Bytes of one AMP box buffered per connection; a bigger box closes it (0: no limit).",
        check=_at_least(0))
    max_boxes_per_second: float = _setting(
        1000.0, doc="AMP boxes per second per connection; past it, closed (0: no limit).", check=_at_least(0))
    burst_seconds: float = _setting(
        2.0, doc="Seconds of max_boxes_per_second a connection may send in one burst.", check=_above(0))
    max_hello_bytes: int = _setting(
        64 * 1024,
        doc="Bytes of one AMP box buffered for a connection that has not logged in (Hello) yet.",
        check=_at_least(1024))
    max_partial_bytes: int = _setting(
        128 * 1024 * 1024,
        doc="Bytes of unfinished AMP boxes buffered across all connections; the connection that "
            "would pass it is closed (0: no limit).", check=_at_least(0))
    max_unsent_bytes: int = _setting(
        4 * 1024 * 1024,
        doc="Bytes of answers waiting for a peer that does not read; past it the server stops "
            "reading that peer's requests until it catches up.", check=_at_least(64 * 1024))


@attrs.frozen
class WebConfig:
    """The web site: pages, statistics and the JSON API."""

    listen: str = _setting(
        "tcp:51180:interface=127.0.0.1",
        doc='Web site endpoint (Twisted server endpoint string); "" disables it.', check=_LISTEN_OR_OFF)
    public: bool = _setting(
        True, doc="Read-only pages and API for everyone (true) or for logged-in users only (false).")
    max_connections: int = _setting(
        512, doc="Web connections open at once; more are reset as they come (0: no limit).",
        check=_at_least(0))
    max_connections_per_address: int = _setting(
        32, doc="Web connections open at once from one address (0: no limit).", check=_at_least(0))
    header_timeout: float = _setting(
        10.0, doc="Seconds a web client has to send a request's headers, from connecting.",
        check=_above(0))
    idle_timeout: float = _setting(
        60.0, doc="Seconds of silence after which a web connection is ended.", check=_above(0))
    allowed_hosts: tuple[str, ...] = _setting(
        (), doc="Host names the site answers to (DNS rebinding); empty: localhost names, this "
                "host's names and the address it listens on; \"*\": any.")


@attrs.frozen
class AfanasyConfig:
    """CGRU's clients (af.py, afcmd, the DCC submitters) speaking Afanasy's own protocol."""

    listen: str = _setting(
        "tcp:51000:interface=127.0.0.1",
        doc='Endpoint of the Afanasy-compatible listener (Afanasy\'s port is 51000); "" disables it.',
        check=_LISTEN_OR_OFF)
    trust_user_names: bool = _setting(
        False,
        doc="Take the user_name of Afanasy requests on trust from every host, also on a farm with a "
            "users_file (Afanasy's model: it has no passwords). Off: only requests from this host on a farm "
            "without a users_file may submit or change anything; the others may only read.")
    request_timeout: float = _setting(
        10.0, doc="Seconds a connection has to send its whole request; then it gets an error and is closed.",
        check=_above(0))


@attrs.frozen
class ManholeConfig:
    """The admin Python manhole inside the running server; off unless an endpoint is set."""

    telnet: str = _setting(
        "", doc='Manhole over telnet: a loopback TCP or unix (mode 600) endpoint; "" is off.',
        check=_LISTEN_OR_OFF)
    ssh: str = _setting("", doc='Manhole over SSH (public keys): a server endpoint string; "" is off.',
                        check=_LISTEN_OR_OFF)
    passwords: str = _setting(
        "", doc="File of user:hash lines for the telnet manhole (python -m farmnet.server.passwords USER).")
    ssh_host_key: str = _setting(
        "", doc='The SSH manhole\'s host key file; "" is <store>/manhole_host_key, made on first start.')
    authorized_keys: str = _setting(
        "", doc="OpenSSH authorized_keys file for the SSH manhole; log in with a name from admins.")
    max_connections: int = _setting(
        16, doc="Manhole connections open at once, per endpoint (0: no limit).", check=_at_least(0))


@attrs.frozen
class StatsConfig:
    """Statistics (task runs, jobs, farm events) kept in PostgreSQL."""

    enabled: bool = _setting(True, doc="Keep statistics; false turns them off.")
    dsn: str = _setting(
        "",
        doc='libpq connection string of the statistics database; "" runs PostgreSQL embedded in the store.')
    embedded_dir: str = _setting(
        "", doc='Data directory of the embedded PostgreSQL; "" is <store>/postgresql.')
    pg_bin: str = _setting(
        "", doc='Directory of initdb/pg_ctl/postgres; "" searches PATH, then /usr/lib/postgresql/*/bin.')
    spool_max_bytes: int = _setting(
        256 * 1024 * 1024,
        doc="Disk kept for statistics while the database is down, in bytes.", check=_above(0))
    batch_rows: int = _setting(2000, doc="Most rows written in one statement.", check=_above(0))
    flush_interval: float = _setting(
        0.5, doc="Seconds between writes of the rows gathered (a full batch goes at once).", check=_above(0))
    reconnect_max_delay: float = _setting(
        10.0, doc="Longest wait in seconds between reconnection attempts to the database.", check=_above(0))


@attrs.frozen
class SysJobConfig:
    """The system job (Afanasy's): the farm's chores as tasks run by renders."""

    tasklife: float = _setting(
        1800.0,
        doc="A system task older than this (seconds) is an error (af_sysjob_tasklife).", check=_above(0))
    tasksmax: int = _setting(
        1000,
        doc="Most ready or running system tasks; past it commands wait in a stored list.", check=_above(0))
    postcmd_service: str = _setting(
        "postcmd", doc="Service of the system job's block for jobs' post commands.", check=_not_empty)
    events_service: str = _setting(
        "events", doc="Service of the system job's block for events.", check=_not_empty)
    wol_service: str = _setting(
        "wakeonlan", doc="Service of the system job's block for wake-on-LAN.", check=_not_empty)
    cmd_wolwake: str = _setting(
        "wolwake", doc="Wake command put before the MAC addresses of renders to wake.", check=_not_empty)
    custom_data: dict[str, Any] = _setting(
        attrs.Factory(dict),
        doc='Farm-wide custom data under every event\'s, e.g. {events: {RENDER_SICK: {}}}.',
        check=_json_data)


@attrs.frozen
class ServerConfig:
    """The central server: where it listens and logs; the rest is in its sections."""

    listen: str = _setting(
        "tcp:51100:interface=127.0.0.1",
        doc="AMP listener for renders and clients (Twisted server endpoint string).",
        check=_LISTEN)
    log_format: str = _setting(
        "text",
        doc='The server\'s log: "text" (human-readable) or "json" (JSON lines).',
        check=_one_of("text", "json"))
    log_level: str = _setting(
        "info", doc="Least level logged: debug, info, warn, error or critical.", check=_one_of(*LOG_LEVELS))
    log_stats_interval: float = _setting(
        60.0,
        doc="Seconds between statistics lines in the log (connections, renders, tasks, traffic); 0: off.",
        check=_at_least(0))
    store: StoreConfig = _section(StoreConfig, "State directory and task outputs.")
    scheduling: SchedulingConfig = _section(SchedulingConfig, "Farm-wide rules: admins, errors, tickets.")
    connections: ConnectionsConfig = _section(ConnectionsConfig, "Holding, watching and closing connections.")
    auth: AuthConfig = _section(AuthConfig, "Render secret and users' passwords.")
    limits: LimitsConfig = _section(LimitsConfig, "Per-connection limits.")
    web: WebConfig = _section(WebConfig, "The web site.")
    afanasy: AfanasyConfig = _section(AfanasyConfig, "The Afanasy-compatible listener for CGRU's clients.")
    manhole: ManholeConfig = _section(ManholeConfig, "The admin manhole.")
    stats: StatsConfig = _section(StatsConfig, "Statistics in PostgreSQL.")
    sysjob: SysJobConfig = _section(SysJobConfig, "The system job.")


@attrs.frozen
class TasksConfig:
    """How a render runs its tasks."""

    kill_grace: float = _setting(
        10.0, doc="Seconds between SIGTERM and SIGKILL when stopping a task.", check=_at_least(0))
    output_flush: float = _setting(
        0.1, doc="Seconds between output chunks sent to the server.", check=_at_least(0))
    log_max: int = _setting(1024 * 1024, doc="Bytes of log kept per task on the render.", check=_at_least(0))
    memory_limit_mb: int = _setting(
        0, doc="Memory limit of each task in MB (0: none).",
        check=_at_least(0))
    limit_method: str = _setting(
        "auto",
        doc='How task limits are applied: "cgroup" (systemd-run scope), "rlimit" (RLIMIT_AS) or "auto".',
        check=_one_of("auto", "rlimit", "cgroup"))


@attrs.frozen
class ResourcesConfig:
    """What the render reports of its machine (CPU, memory, swap, disk, load)."""

    disk_path: str = _setting("/", doc="The disk whose free space the render reports.", check=_not_empty)
    every: int = _setting(5, doc="Send the resources with every Nth heartbeat; 0: never.", check=_at_least(0))
    interval: float = _setting(
        15.0, doc="Seconds between resource reports between heartbeats (block needs read them); 0: never.",
        check=_at_least(0))
    gpu_interval: float = _setting(
        30.0, doc="Seconds between readings of the GPU's memory (nvidia-smi, when there is one); 0: never.",
        check=_at_least(0))
    properties: str = _setting(
        "", doc="This render's properties (Afanasy's), words blocks' and jobs' need_properties look for.")
    power: int = _setting(
        -1, doc="This render's power (Afanasy's): blocks' need_power is at most it; -1: none.")


@attrs.frozen
class RenderSysJobConfig:
    """How a render runs the system job's tasks (events, wake-on-LAN, sleep)."""

    events_service_class: str = _setting(
        "farmnet.sysjob.events:EventService",
        doc="Class (package.module:Class) that delivers the system job's events (email, webhook).",
        check=_not_empty)
    wol_broadcast: str = _setting(
        "255.255.255.255",
        doc="Broadcast address (IPv4) Wake-on-LAN magic packets are sent to.", check=_not_empty)
    wol_port: int = _setting(
        9, doc="UDP port of Wake-on-LAN magic packets.",
        check=lambda v: None if 0 < v < 65536 else f"must be a port number 1..65535, got {v!r}")
    cmd_wolsleep: str = _setting(
        "systemctl suspend",
        doc="Command run when the server asks this render to sleep (af_render_cmd_wolsleep).",
        check=_not_empty)


@attrs.frozen
class RenderBlenderConfig:
    """How a render runs Blender's tasks (the blender services)."""

    executable: str = _setting(
        "",
        doc='The Blender program a task\'s bare "blender" command runs: a path, or a name looked up on PATH. '
            '"" looks for "blender" on PATH and, without one, renders with the bpy module '
            '(python -m farmnet.render.bpyrunner; pip install farmnet[blender]).')


@attrs.frozen
class RenderConfig:
    """A render (worker) host: which server, what it may run, how it runs tasks."""

    server: str = _setting(
        "tcp:127.0.0.1:51100",
        doc="The server: HOST[:PORT] (port 51100 by default) or a Twisted client endpoint string (several, "
            "comma-separated, for servers on one PostgreSQL store); "
            "$FARMNET_SERVER overrides it.", check=_SERVER, env="FARMNET_SERVER")
    name: str = _setting(doc="Render name shown on the farm (default: the host name).", check=_not_empty,
                         env_default=_default_hostname)
    capacity: int = _setting(
        1100, doc="Capacity units this render offers; a task takes its block's capacity.", check=_above(0))
    max_tasks: int = _setting(
        0, doc="Most tasks run at once; 0 means limited by capacity only.", check=_at_least(0))
    services: tuple[str, ...] = _setting((), doc="Services this render runs; empty means every service.")
    services_disabled: tuple[str, ...] = _setting((), doc="Services this render never runs.")
    reconnect_max_delay: float = _setting(
        5.0, doc="Longest wait in seconds between reconnection attempts to the server.", check=_above(0))
    state_dir: str = _setting(
        doc="The render's state directory.", check=_not_empty, env_default=_render_state_dir)
    owner: str = _setting(
        "", doc="The user this render belongs to: when nimby, only this user's jobs run on it.")
    secret: str = _setting("", doc="The server's auth.render_secret, when it has one.")
    ca: str = _setting(
        "", doc='CA certificate (PEM file) that signed the server\'s TLS certificate; "" for plain TCP.')
    log_format: str = _setting(
        "text",
        doc='The render\'s log: "text" (human-readable) or "json" (JSON lines).',
        check=_one_of("text", "json"))
    log_level: str = _setting(
        "info", doc="Least level logged: debug, info, warn, error or critical.", check=_one_of(*LOG_LEVELS))
    service_classes: dict[str, str] = _setting(
        attrs.Factory(dict), doc='Custom service classes by service name, e.g. {maya: "studio.farm:Maya"}.')
    parser_classes: dict[str, str] = _setting(
        attrs.Factory(dict),
        doc='Custom parser classes by parser name, e.g. {maya: "studio.farm:MayaParser"}.')
    tasks: TasksConfig = _section(TasksConfig, "How tasks are run.")
    resources: ResourcesConfig = _section(ResourcesConfig, "What the render reports of its machine.")
    sysjob: RenderSysJobConfig = _section(RenderSysJobConfig, "System job tasks on this render.")
    blender: RenderBlenderConfig = _section(RenderBlenderConfig, "Blender's tasks on this render.")


@attrs.frozen
class ClientConfig:
    """Command-line tools and other clients of the server."""

    server: str = _setting(
        "tcp:127.0.0.1:51100",
        doc="The server: HOST[:PORT] (port 51100 by default) or a Twisted client endpoint string (several, "
            "comma-separated, for servers on one PostgreSQL store); "
            "$FARMNET_SERVER overrides it.", check=_SERVER, env="FARMNET_SERVER")
    user: str = _setting(doc="User name jobs are submitted as (default: the login name); "
                             "$FARMNET_USER overrides it.", check=_not_empty,
                         env_default=_default_user, env="FARMNET_USER")
    timeout: float = _setting(30.0, doc="Seconds to wait for the server's answer.", check=_above(0))
    reconnect: float = _setting(
        300.0, doc="Seconds to keep trying to reach a server that went away (a restart, an upgrade) "
                   "before giving up; 0 gives up at once.", check=_at_least(0))
    password_file: str = _setting(
        "", doc="File whose first line is the user's password (for a server with a users_file).")
    ca: str = _setting(
        "", doc='CA certificate (PEM file) that signed the server\'s TLS certificate; "" for plain TCP.')


@attrs.frozen
class Config:
    """The whole configuration: one section per program, and the old keys it had to move."""

    server: ServerConfig = _section(ServerConfig, "The central server.")
    render: RenderConfig = _section(RenderConfig, "A render host.")
    client: ClientConfig = _section(ClientConfig, "Command-line tools.")
    #: One line per old (flat) key read, naming its new place: for the programs to log.
    moved: tuple[str, ...] = attrs.field(
        default=(), eq=False, metadata={"doc": "Old keys read, and their new places."})


# --- keys of the flat format (up to farmnet 0.x), still read -----------------------

_MOVED = types.MappingProxyType({
    ServerConfig: types.MappingProxyType({
        "store": "store.path", "output_max_bytes": "store.output_max_bytes",
        **{key: f"scheduling.{key}" for key in (
            "admins", "errors_retries", "errors_avoid_host", "errors_task_same_host", "errors_forgive_time",
            "sick_errors_count", "task_reconnect_timeout", "max_tasks_per_job", "users_solving",
            "solve_by_capacity", "tickets", "tickets_per_host")},
        **{key: f"connections.{key}"
           for key in ("heartbeat_hold", "zombie_time", "close_wait", "idle_timeout")},
        "render_secret": "auth.render_secret", "users_file": "auth.users_file",
        **{key: f"limits.{key}"
           for key in ("max_connections_per_address", "max_box_bytes", "max_boxes_per_second")},
        "web": "web.listen", "web_public": "web.public",
        **{f"manhole_{key}": f"manhole.{key}"
           for key in ("telnet", "ssh", "passwords", "ssh_host_key", "authorized_keys")},
        "stats": "stats.enabled",
        **{f"stats_{key}": f"stats.{key}" for key in (
            "dsn", "embedded_dir", "pg_bin", "spool_max_bytes", "batch_rows", "flush_interval",
            "reconnect_max_delay")},
        "stats_interval": "log_stats_interval",
        **{f"sysjob_{key}": f"sysjob.{key}" for key in (
            "tasklife", "tasksmax", "postcmd_service", "events_service", "wol_service", "custom_data")},
        "render_cmd_wolwake": "sysjob.cmd_wolwake",
    }),
    RenderConfig: types.MappingProxyType({
        "kill_grace": "tasks.kill_grace", "output_flush": "tasks.output_flush",
        "task_log_max": "tasks.log_max",
        "task_memory_limit_mb": "tasks.memory_limit_mb", "task_limit_method": "tasks.limit_method",
        "resources_disk_path": "resources.disk_path", "resources_every": "resources.every",
        **{key: f"sysjob.{key}"
           for key in ("events_service_class", "wol_broadcast", "wol_port", "cmd_wolsleep")},
    }),
})


# --- reading YAML ------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (PyYAML lets the last one win silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # "<<" merge keys may be overridden on purpose
        key = loader.construct_object(key_node)
        try:
            first = seen.setdefault(key, key_node.start_mark.line)
        except TypeError:
            continue  # unhashable: construct_mapping reports it
        if first != key_node.start_mark.line:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {first + 1})",
                key_node.start_mark,
            )
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_yaml(path: str) -> Any:
    """Parse ``path``; a missing or broken file is one error naming it (and the line)."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from exc
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        context = exc.context
        if context and exc.context_mark is not None and exc.context_mark is not mark:
            context += f" (line {exc.context_mark.line + 1})"  # e.g. where an unclosed "[" is
        what = ", ".join(p for p in (context, exc.problem) if p) or str(exc)
        raise ConfigError([f"{where}: YAML syntax error: {what}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: YAML error: {exc}"]) from exc


# --- substitution and conversion ---------------------------------------------------

#: Sentinel for "this value was wrong; its error is already recorded".
_INVALID: Any = object()

_REFERENCE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<body>[^}]*)\}|(?P<open>\{))")
_BODY = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)


def _substitute(text: str, path: str, errors: list[str], environ: Environ | None) -> Any:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``$$`` (a literal ``$``).

    As in the shell, ``:-`` also applies when the variable is set but empty. A lone
    ``$`` not followed by ``{`` or ``$`` stays as it is. ``environ`` None means no
    substitution (command-line values, which the shell already expanded).
    """
    if environ is None or "$" not in text:
        return text
    problems: list[str] = []

    def expand(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        if match["open"]:
            problems.append(f"unterminated '${{' in {text!r}")
            return ""
        body = _BODY.fullmatch(match["body"])
        if body is None:
            problems.append(f"bad substitution {match[0]!r}")
            return ""
        name, default = body["name"], body["default"]
        value = environ.get(name)
        if default is not None and not value:
            return default
        if value is None:
            problems.append(
                f"environment variable {name} is not set (give a default with ${{{name}:-value}})"
            )
            return ""
        return value

    result = _REFERENCE.sub(expand, text)
    errors.extend(f"{path}: {problem}" for problem in problems)
    return _INVALID if problems else result


def _describe(value: Any) -> str:
    """A value as the user wrote it, short enough for an error line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_EXPECTED = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean (true/false)",
}
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _scalar_from_text(text: str, tp: type) -> Any:
    """Parse a string (typically from ``${VAR}``) for a non-string scalar field."""
    word = text.strip()
    if tp is bool:
        if word.lower() in _TRUE:
            return True
        if word.lower() in _FALSE:
            return False
        return _INVALID
    try:
        return tp(word)
    except ValueError:
        return _INVALID


def _convert(value: Any, tp: Any, path: str, errors: list[str], environ: Environ | None) -> Any:
    """Check and convert one raw value to the field type ``tp``.

    Problems are appended to ``errors`` (prefixed with ``path``) and ``_INVALID`` is
    returned, so the caller goes on and every problem gets reported.
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    if origin in (types.UnionType, typing.Union):
        arms = [arm for arm in args if arm is not type(None)]
        if len(arms) != 1:
            raise TypeError(f"unsupported configuration type {tp!r}")
        if value is None:
            return None
        return _convert(value, arms[0], path, errors, environ)

    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if isinstance(value, str):
            text = _substitute(value, path, errors, environ)
            if text is _INVALID:
                return _INVALID
            # Already substituted: the items must not be expanded a second time.
            items = [item.strip() for item in text.split(",") if item.strip()]
            environ = None
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            errors.append(f"{path}: expected a list or a comma-separated string, got {_describe(value)}")
            return _INVALID
        converted = [
            _convert(item, args[0], f"{path}[{index}]", errors, environ) for index, item in enumerate(items)
        ]
        return _INVALID if _INVALID in converted else tuple(converted)

    if origin is dict and len(args) == 2:
        if not isinstance(value, Mapping):
            errors.append(f"{path}: expected a mapping, got {_describe(value)}")
            return _INVALID
        result: dict[Any, Any] = {}
        for raw_key, raw_item in value.items():
            item_path = f"{path}.{raw_key}"
            key = _convert(raw_key, args[0], item_path, errors, None)
            item = _convert(raw_item, args[1], item_path, errors, environ)
            if key is _INVALID or item is _INVALID:
                result = _INVALID
            elif result is not _INVALID:
                result[key] = item
        return result

    if tp is Any:  # free-form data (custom_data): taken as written
        return value
    if tp not in _EXPECTED:
        raise TypeError(f"unsupported configuration type {tp!r}")

    raw = value
    if isinstance(value, str):
        value = _substitute(value, path, errors, environ)
        if value is _INVALID:
            return _INVALID
        if tp is str:
            return value
        parsed = _scalar_from_text(value, tp)
    elif tp is str:
        parsed = _INVALID
    elif isinstance(value, bool):  # bool is an int: check it first
        parsed = value if tp is bool else _INVALID
    elif tp is int:
        parsed = value if isinstance(value, int) else _INVALID
    elif tp is float:
        parsed = float(value) if isinstance(value, int | float) else _INVALID
    else:
        parsed = _INVALID

    if parsed is _INVALID:
        source = f" (from {raw!r})" if raw is not value else ""
        errors.append(f"{path}: expected {_EXPECTED[tp]}, got {_describe(value)}{source}")
        return _INVALID
    if tp is float and not math.isfinite(parsed):
        errors.append(f"{path}: expected a finite number, got {_describe(value)}")
        return _INVALID
    return parsed


# --- loading -----------------------------------------------------------------------


def _sections(cls: type) -> list[str]:
    return [field.name for field in attrs.fields(cls) if attrs.has(field.type)]


def _unknown_key(path: str, key: Any, known: list[str], moved: Mapping[str, str]) -> str:
    """Suggest the closest key of this section, or the new place of a close old key."""
    close = difflib.get_close_matches(str(key), [*known, *moved], n=1)
    if close:
        name = close[0] if close[0] in known else moved[close[0]]
        return f"{path}: unknown key (did you mean {name!r}?)"
    return f"{path}: unknown key (known: {', '.join(known)})"


def _old_value(key: str, value: Any, path: str, errors: list[str], environ: Environ) -> Any:
    """An old key's value in its new form: sysjob_custom_data was JSON in a string."""
    if key != "sysjob_custom_data" or not isinstance(value, str):
        return value
    text = _substitute(value, path, errors, environ)
    if text is _INVALID:
        return {}
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        errors.append(f"{path}: not JSON: {exc}")
        return {}
    if not isinstance(data, dict):
        errors.append(f"{path}: must be a JSON object")
        return {}
    return data


def _move_old_keys(
    cls: type, prefix: str, data: Mapping[str, Any], errors: list[str], moved: dict[str, str],
    environ: Environ,
) -> Mapping[str, Any]:
    """The flat keys of ``data`` put in their sections, each noted in ``moved`` (new path: old).

    A key that is both an old scalar and a new section (``stats``, ``web``, ``store``)
    is old only when its value is not a mapping. Old and new both given is an error.
    """
    table = _MOVED.get(cls, {})
    sections = _sections(cls)
    old = [key for key in data if key in table and not (
        key in sections and (data[key] is None or isinstance(data[key], Mapping)))]
    if not old:
        return data
    result = {key: value for key, value in data.items() if key not in old}
    for key in old:
        where, new = f"{prefix}.{key}", f"{prefix}.{table[key]}"
        value = _old_value(key, data[key], where, errors, environ)
        *section, name = table[key].split(".")
        target = result
        if section:
            inner = result.get(section[0])
            if inner is not None and not isinstance(inner, Mapping):
                continue  # the section itself is wrong: that error comes with it
            target = result[section[0]] = dict(inner or {})
        if name in target:
            errors.append(f"{where}: moved to {new}, which is given too: keep only {new}")
            continue
        target[name] = value
        moved[new] = where
    return result


def _mapping(value: Any, prefix: str, what: str, errors: list[str]) -> Mapping[str, Any]:
    if value is None:  # "server:" with every key commented out
        return {}
    if not isinstance(value, Mapping):
        errors.append(f"{prefix}: {what}, got {_describe(value)}")
        return {}
    return value


def _load_section(
    cls: type,
    prefix: str,
    data: Any,
    overrides: Any,
    environ: Environ,
    errors: list[str],
    moved: dict[str, str],
) -> Any:
    """Build one section (and its sections) from file ``data`` and command-line ``overrides``.

    Returns None when something was wrong (the reasons are in ``errors``).
    """
    before = len(errors)
    fields = {field.name: field for field in attrs.fields(cls)}
    names = list(fields)
    data = _move_old_keys(cls, prefix, _mapping(data, prefix, "expected a mapping", errors), errors, moved,
                          environ)
    overrides = _mapping(overrides, prefix, "overrides must be a mapping", errors)
    given = {key: value for key, value in overrides.items() if value is not None}

    for key in dict.fromkeys([*data, *given]):
        if key not in fields:
            errors.append(_unknown_key(f"{prefix}.{key}", key, names, _MOVED.get(cls, {})))

    values: dict[str, Any] = {}
    for name, field in fields.items():
        path = f"{prefix}.{name}"
        if attrs.has(field.type):
            value = _load_section(field.type, path, data.get(name), given.get(name), environ, errors, moved)
        elif name in given:  # a flag wins; the file's value is not even checked
            value = _convert(given[name], field.type, path, errors, None)
        elif name in data:
            value = _convert(data[name], field.type, path, errors, environ)
        elif "env_default" in field.metadata:
            values[name] = field.metadata["env_default"](environ)
            continue
        else:
            continue
        if value is _INVALID or value is None and attrs.has(field.type):
            continue
        check = field.metadata.get("check")
        message = check(value) if check is not None else None
        if message:
            errors.append(f"{path}: {message}")
            continue
        values[name] = value

    return None if len(errors) > before else cls(**values)


def load_config(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Load the configuration from ``path`` (None: defaults only) and ``overrides``.

    ``environ`` (default ``os.environ``) feeds ``${VAR}`` substitution and the
    machine-dependent defaults. ``overrides`` are command-line values applied on top
    of the file, nested like it (``{"server": {"web": {"listen": ""}}}``), a None value
    meaning "not given"; they are checked like the file but not substituted. Old flat
    keys are read into their sections and listed in ``Config.moved``. Raises
    ConfigError listing every problem.
    """
    env: Environ = os.environ if environ is None else environ
    raw: Any = {} if path is None else _read_yaml(path)
    if raw is None:  # an empty file, or only comments
        raw = {}
    names = _sections(Config)
    if not isinstance(raw, Mapping):
        raise ConfigError(
            [f"{path}: expected a mapping of sections ({', '.join(names)}), got {_describe(raw)}"]
        )
    overrides = _environment_overrides(env, overrides or {})

    errors: list[str] = []
    moved: dict[str, str] = {}
    for key in dict.fromkeys([*raw, *overrides]):
        if key not in names:
            errors.append(_unknown_key(str(key), key, names, {}))
    classes = attrs.fields_dict(Config)
    loaded = {
        name: _load_section(classes[name].type, name, raw.get(name), overrides.get(name), env, errors, moved)
        for name in names
    }
    if errors:
        raise ConfigError([_as_written(error, moved) for error in errors], source=path)
    return Config(**loaded, moved=tuple(f"{old}: moved to {new}" for new, old in moved.items()))


def _environment_overrides(
    env: Environ, overrides: Mapping[str, Mapping[str, Any]]
) -> Mapping[str, Mapping[str, Any]]:
    """``overrides`` with the settings' environment variables (``$FARMNET_SERVER``...)
    filled in where the command line gave nothing: file < environment < command line."""
    merged = {name: dict(values or {}) for name, values in overrides.items()}
    for name, section in attrs.fields_dict(Config).items():
        if not attrs.has(section.type):
            continue
        for key, field in attrs.fields_dict(section.type).items():
            variable = field.metadata.get("env")
            if variable and env.get(variable) and merged.get(name, {}).get(key) is None:
                merged.setdefault(name, {})[key] = env[variable]
    return merged


def _as_written(error: str, moved: Mapping[str, str]) -> str:
    """An error about a moved key also names the key as the file has it."""
    path = re.split(r"[:\[]", error, maxsplit=1)[0]
    for new, old in moved.items():
        if path == new or path.startswith((f"{new}.", f"{new}[")):
            return f"{error} (written as {old})"
    return error


def moved_keys(config: Config, section: str) -> str | None:
    """One warning naming every old key of ``section`` that was read and its new place."""
    lines = [line for line in config.moved if line.startswith(f"{section}.")]
    if not lines:
        return None
    return "old configuration keys, still read but to be moved:\n  " + "\n  ".join(lines)
