"""Log observers for twistd: human-readable text (the default) or JSON lines.

Both show the farm context of an event: its ``job_id``, ``block``, ``task``, ``run``, ``key`` (a task's
``(job_id, block, task)``) and ``render`` fields.

``text``
    twistd's usual ``TIMESTAMP [namespace#level] message`` lines, followed by ``[job_id=3 render=r01]``
    for the context fields the message does not show already; tracebacks indented below.
``json``
    One JSON object per line: :func:`twisted.logger.eventAsJSON` of the event (all its fields, so
    :func:`twisted.logger.eventFromJSON` reads it back), plus plain ``text`` (the formatted message),
    ``level`` ("info"), ``timestamp`` (ISO 8601, UTC), ``traceback`` for a failure, and ``job_id``,
    ``block`` and ``task`` taken from ``key`` when the event has no such fields of its own.  A field the
    event already has under one of these names is left as it is.

Choosing one
    The ``log_format`` setting of the ``server`` and ``render`` sections: ``farmnet.tap`` passes the
    service through :func:`with_log_format`, which gives twistd the observer as the application's
    ``ILogObserver`` component, writing where twistd would (``--logfile``, rotated like twistd's own, or
    stdout with ``--nodaemon``).  On the command line, ``twistd --logger farmnet.logging.json_observer``
    (or ``text_observer``) wins over the setting; such an observer writes to stdout.  With ``--syslog``
    twistd's syslog observer is kept.
"""

from __future__ import annotations

import datetime
import signal
import string
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any

from twisted.application.service import IService, MultiService
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsJSON,
    formatEvent,
    formatTime,
)
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

__all__ = [
    "CONTEXT_FIELDS",
    "LOG_FORMATS",
    "format_json",
    "format_text",
    "json_observer",
    "observer_for",
    "text_observer",
    "with_log_format",
]

#: The values of the ``log_format`` setting.
LOG_FORMATS = ("text", "json")
#: Libraries' namespaces logged from warn up unless log_level is debug.
QUIET_NAMESPACES = ("twisted.protocols.amp",)
#: The fields that place an event on the farm, shown in both formats.
CONTEXT_FIELDS = ("job_id", "block", "task", "run", "key", "render")


def _format_fields(log_format: Any) -> set[str]:
    """The names of the fields a ``log_format`` string shows (``{key}``, ``{key!r}``, ``{key[0]}``...)."""
    if not isinstance(log_format, str):
        return set()
    names = set()
    try:
        for _, field, _, _ in string.Formatter().parse(log_format):
            if field:
                names.add(field.split(".", 1)[0].split("[", 1)[0])
    except ValueError:
        pass
    return names


def _context(event: LogEvent) -> list[tuple[str, Any]]:
    """The context fields of ``event`` that its message does not show."""
    shown = _format_fields(event.get("log_format"))
    return [(name, event[name]) for name in CONTEXT_FIELDS if name in event and name not in shown]


def _traceback(event: LogEvent) -> str | None:
    failure = event.get("log_failure")
    if failure is None:
        return None
    try:
        return str(failure.getTraceback())
    except Exception as e:  # a failure that cannot be formatted must not lose the event
        return f"(unable to format the traceback: {e!r})"


def _level_name(event: LogEvent) -> str | None:
    """The name of the event's LogLevel constant: "info", "warn"..."""
    level = event.get("log_level")
    return level.name if level in LogLevel.iterconstants() else None


def format_text(event: LogEvent) -> str | None:
    """An event as a twistd-style line with its farm context; None for an event with nothing to say."""
    text = formatEvent(event)
    context = _context(event)
    if context:
        fields = " ".join(f"{name}={value}" for name, value in context)
        text = f"{text} [{fields}]" if text else f"[{fields}]"
    traceback = _traceback(event)
    if traceback:
        text = f"{text}\n{traceback.rstrip()}"
    if not text:
        return None
    system = event.get("log_system")
    if system is None:
        system = "{}#{}".format(event.get("log_namespace") or "-", _level_name(event) or "-")
    stamp = formatTime(event.get("log_time"))  # "-" without a time
    return f"{stamp} [{system}] {text}".replace("\n", "\n\t") + "\n"


def format_json(event: LogEvent) -> str:
    """An event as one line of JSON (see the module docstring)."""
    record = dict(event)  # observers must not change the event: others see it too
    record.setdefault("text", formatEvent(event))
    level = _level_name(event)
    if level is not None:
        record.setdefault("level", level)
    when = event.get("log_time")
    if isinstance(when, int | float):
        stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="milliseconds")
        record.setdefault("timestamp", stamp.replace("+00:00", "Z"))
    traceback = _traceback(event)
    if traceback is not None:
        record.setdefault("traceback", traceback)
    key = event.get("key")
    if isinstance(key, tuple | list) and len(key) == 3:
        for name, value in zip(("job_id", "block", "task"), key, strict=True):
            record.setdefault(name, value)
    # eventAsJSON writes no newline of its own: every string in it is escaped.
    return eventAsJSON(record) + "\n"


def text_observer(out: IO[str] | None = None) -> ILogObserver:
    """Human-readable lines to ``out`` (default stdout); usable as ``twistd --logger``."""
    return FileLogObserver(out if out is not None else sys.stdout, format_text)


def json_observer(out: IO[str] | None = None) -> ILogObserver:
    """JSON lines to ``out`` (default stdout); usable as ``twistd --logger``."""
    return FileLogObserver(out if out is not None else sys.stdout, format_json)


def observer_for(log_format: str, out: IO[str] | None = None, log_level: str = "info") -> ILogObserver:
    """The observer of the ``log_format`` ("text" or "json") and ``log_level`` settings: events below
    the level (debug, by default) are dropped before they are formatted."""
    if log_format == "json":
        observer = json_observer(out)
    elif log_format == "text":
        observer = text_observer(out)
    else:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    if log_level == "debug":
        return observer
    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.levelWithName(log_level))
    # Twisted's AMP logs two lines per connection at info: every CLI call, every render
    # reconnection. farmnet logs what a connection did in its own words instead.
    for namespace in QUIET_NAMESPACES:
        predicate.setLogLevelForNamespace(namespace, max(LogLevel.warn, LogLevel.levelWithName(log_level)))
    return FilteringLogObserver(observer, [predicate])


def _twistd_log_file(options: Mapping[str, Any]) -> Callable[[], IO[str]] | None:
    """How to open where twistd would write its log, from its parsed options (as UnixAppLogger does);
    None when twistd is better left to it (syslog, or a daemon told to log to stdout, which it refuses).
    """
    if options.get("syslog"):
        return None
    logfile = options.get("logfile") or ""
    nodaemon = bool(options.get("nodaemon"))
    if logfile == "-" or (nodaemon and not logfile):
        if not nodaemon:
            return None
        return lambda: sys.stdout
    path = logfile or "twistd.log"

    def open_file() -> IO[str]:
        log_file = LogFile.fromFullPath(path)
        # twistd rotates its log file on SIGUSR1 unless something else handles that signal.
        if not signal.getsignal(signal.SIGUSR1):

            def rotate(signum: int, frame: Any) -> None:
                from twisted.internet import reactor

                reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

            signal.signal(signal.SIGUSR1, rotate)
        return log_file  # type: ignore[return-value]  # has write() and flush()

    return open_file


class _LogFormatRoot(MultiService):
    """The root of a farmnet twistd application that sets its log observer.

    twistd makes the application, adds the plugin's service to it, and then starts logging to the
    application's ``ILogObserver`` component if it has one (and no ``--logger`` was given): adding this
    service sets that component.
    """

    def __init__(self, service: IService, log_format: str, log_level: str,
                 open_log: Callable[[], IO[str]]) -> None:
        super().__init__()
        self._log_format = log_format
        self._log_level = log_level
        self._open_log = open_log
        service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver, None) is None:
            observer = observer_for(self._log_format, self._open_log(), self._log_level)
            parent.setComponent(ILogObserver, observer)
        super().setServiceParent(parent)


def with_log_format(service: IService, log_format: str, twistd_options: Mapping[str, Any] | None,
                    log_level: str = "info") -> IService:
    """``service``, to be returned by the twistd plugin, made to log in ``log_format`` ("text" or "json")
    from ``log_level`` up.

    ``twistd_options`` are twistd's own parsed options (the ``parent`` of the plugin's options), for
    ``--logfile``, ``--nodaemon``, ``--syslog`` and ``--logger``; None (not run by twistd) returns
    ``service`` unchanged, as does ``--logger`` or ``--syslog``.  Otherwise ``service`` is returned inside
    a parent service which, once twistd adds it to the application, makes the observer twistd logs to.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    if twistd_options is None or twistd_options.get("logger"):
        return service
    open_log = _twistd_log_file(twistd_options)
    if open_log is None:
        return service
    return _LogFormatRoot(service, log_format, log_level, open_log)
