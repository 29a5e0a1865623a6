"""The web site: live farm pages, statistics, the JSON action API, events and metrics.

One twisted.web :class:`FarmSite` on one port (``server.web.listen``), no other web server or
script engine; each path is a resource of the tree :func:`site_tree` builds (see
:mod:`farmnet.web.resources`). Site map:

======================================  ==========================================================
``/``                                   the farm: counts, unfinished jobs, busy renders (live)
``/jobs`` (``?q=&user=&state=&project=``  jobs a page at a time, sorted (``sort=-id``), filtered,
``department=&sort=&page=&per=``)       checked rows acted on in bulk; rows patched live
``/jobs/ID`` (``?offset=&explain=1``)   a job: blocks (editable), a grid of its tasks by frame
``/jobs/ID/tasks`` (``?state=&host=``)  the job's tasks as a paged, sorted, filtered list
``/jobs/ID/BLOCK/TASK`` (``?run=``)     a task, its runs and output (its tail followed live)
``/renders``, ``/renders/NAME``         renders (paged, sorted, bulk actions); one render: tasks,
                                        resources over time, recent runs, events, actions
``/users``, ``/projects``               users; jobs grouped by project and department
``/jobs/ID/BLOCK/TASK/files/N``         the thumbnail of a file the task wrote (a rendered frame; PNG)
``/stats``, ``/stats/tasks``,           statistics from PostgreSQL: SVG graphs, tables grouped by
``/stats/jobs``, ``/stats/logs``,       user/service/folder/host/..., time filters, the farm log
``/stats/graph.svg``
``/login``, ``/logout``                 the login form (twisted.cred, a session cookie)
``/events``                             the event log as server-sent events
``/api/act`` (POST)                     the one action API, ``{item, action, filters, values}``
``/api/...``                            GET conveniences and ``/api/stats/QUERY`` (JSON)
``/metrics``                            Prometheus (prometheus_client, read at scrape time)
``/static/farmnet.css``, ``.js``        the style sheet and the small script
======================================  ==========================================================

Read-only pages and API are public unless ``server.web.public`` is false; every change
needs a user from ``server.auth.users_file`` (see :mod:`farmnet.web.auth`). With a users
file, task outputs are for ``server.auth.outputs`` (by default the job's owner and admins),
as over AMP.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import attrs
from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web import http, pages, server

from farmnet.config import WebConfig
from farmnet.model.farm import Farm
from farmnet.server.monitors import EventLog
from farmnet.server.outputs import OutputStore
from farmnet.server.throttle import LoginThrottle
from farmnet.web import auth, live, metrics
from farmnet.web.api import JsonApi
from farmnet.web.assets import CSS, JS
from farmnet.web.context import WebContext
from farmnet.web.listpages import ListPages
from farmnet.web.login import LoginPages
from farmnet.web.pages import LivePages
from farmnet.web.previews import PreviewPages
from farmnet.web.resources import Gate, Node, Route
from farmnet.web.routing import Call, Handler, Reply
from farmnet.web.samples import ResourceSamples
from farmnet.web.statspages import StatsPages

__all__ = ["FarmSite", "make_site", "site_tree"]

log = Logger()

ID = "[0-9]{1,12}"
NUMBER = "[0-9]{1,9}"
NAME = "[^/]{1,256}"


def get(handler: Handler, access: str = "read", api: bool = False) -> dict[str, Route]:
    return {"GET": Route(handler, access, api)}


def site_tree(gate: Gate, ctx: WebContext, registry: Any) -> Node:
    """Every path of the site, as a tree of resources."""
    pages, login, api, stats = LivePages(ctx), LoginPages(ctx), JsonApi(ctx), StatsPages(ctx)
    lists = ListPages(ctx)
    root = Node(gate, get(pages.index))
    jobs = root.child("jobs", get(lists.jobs))
    job = jobs.variable_child("job", ID, get(pages.job))
    job.child("tasks", get(lists.tasks))
    frames = PreviewPages(ctx)
    job_task = job.variable_child("block", NUMBER).variable_child("task", ID, get(pages.task))
    job_task.child("files").variable_child("file", NUMBER, get(frames.thumbnail, api=True))
    root.child("renders", get(lists.renders)).variable_child("name", NAME, get(lists.render))
    root.child("users", get(lists.users))
    root.child("projects", get(lists.projects))
    root.child("pools", get(pages.pools))
    statistics = root.child("stats", get(stats.guarded("/stats", stats.graphs)))
    for name, handler in (("tasks", stats.tasks), ("jobs", stats.jobs), ("logs", stats.logs)):
        statistics.child(name, get(stats.guarded(f"/stats/{name}", handler)))
    statistics.child("graph.svg", get(stats.graph_svg, api=True))
    root.child("login", {"GET": Route(login.login_page, "open"), "POST": Route(login.login_post, "open")})
    root.child("logout", {"POST": Route(login.logout, "open")})
    static = root.child("static")
    static.child("farmnet.css", get(asset(CSS, "text/css; charset=utf-8"), "open"))
    static.child("farmnet.js", get(asset(JS, "text/javascript; charset=utf-8"), "open"))
    root.child("events", get(live.sse(ctx.reactor, ctx.events, ctx.streams), api=True))
    root.child("metrics", get(metrics.metrics_handler(registry), api=True))

    api_root = root.child("api", get(api.index, api=True))
    api_root.child("act", {"POST": Route(api.post_act, api=True)})
    for name, handler in (("farm", api.farm), ("whoami", api.whoami), ("renders", api.renders),
                          ("users", api.users)):
        api_root.child(name, get(handler, api=True))
    api_root.child("events", get(live.long_poll(ctx.reactor, ctx.events), api=True))
    api_jobs = api_root.child("jobs", get(api.jobs, api=True))
    api_job = api_jobs.variable_child("job", ID, get(api.job, api=True))
    api_job.child("explain", get(api.explain, api=True))
    api_job.child("tasks", get(api.tasks, api=True))
    api_job.child("files", get(frames.files, api=True))
    api_task = api_job.variable_child("block", NUMBER).variable_child("task", ID, get(api.task, api=True))
    api_task.child("output", get(api.output, api=True))
    api_root.child("renders").variable_child("name", NAME, get(api.render, api=True))
    api_root.child("users").variable_child("name", NAME, get(api.user, api=True))
    api_root.child("stats").variable_child("query", "[a-z_]{1,40}", get(stats.api, api=True))
    return root


def asset(text: str, content_type: str) -> Handler:
    body = text.encode("utf-8")

    async def handler(call: Call) -> Reply:
        return Reply(body, 200, content_type, ((b"cache-control", b"public, max-age=86400"),))

    return handler


class TrackedChannel(http.HTTPChannel):
    """An HTTP connection its site knows of (to count them), one request long.

    Every response says ``Connection: close``, so the client closes first once it has
    the answer (the channel's own close after it, and its timeouts, are the listener's
    client-first close: :mod:`farmnet.server.listening`). A server that kept idle
    keep-alive connections would end them itself, and pile TIME-WAIT sockets on its port.
    """

    _header_deadline: Any = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.channels.add(self)
        # Slowloris: a client trickling its headers byte by byte keeps the idle timeout
        # at bay; the headers must be in within header_timeout of connecting.
        self._header_deadline = self.callLater(self.factory.header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        self._header_deadline = None
        log.debug("web: {peer} sent no complete request headers within {seconds} s: reset",
                  peer=str(self.transport.getPeer()), seconds=self.factory.header_timeout)
        self.transport.abortConnection()

    def allHeadersReceived(self) -> None:
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None
        super().allHeadersReceived()

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        return False

    def connectionLost(self, reason: Any) -> None:
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None
        self.factory.channels.discard(self)
        super().connectionLost(reason)


class FarmSite(server.Site):
    """The site, plus what it needs at shutdown: its event streams ended, its sessions
    expired and its connections closed (:meth:`close`). Plain HTTP/1.1 (put TLS in front
    with an ``ssl:`` endpoint)."""

    requestFactory = auth.FarmRequest
    sessionFactory = auth.FarmSession
    protocol = TrackedChannel

    #: Seconds a client has to send its request headers, from connecting (web.header_timeout).
    header_timeout = 10.0

    def __init__(self, ctx: WebContext, resource: Any, reactor: Any,
                 allowed_hosts: AllowedHosts | None = None) -> None:
        super().__init__(resource, reactor=reactor)
        self.ctx = ctx
        self.channels: set[TrackedChannel] = set()
        self.allowed_hosts = allowed_hosts or AllowedHosts()

    def getResourceFor(self, request: server.Request) -> Any:
        """The resource, for a Host header the site answers to; else 421 (DNS rebinding:
        a page of another site whose name was pointed at this server's address)."""
        host = request.getRequestHostname().decode("ascii", "replace")
        if not self.allowed_hosts.allows(host, request.getHost()):
            log.info("web: refused Host {host!r} from {peer}", host=host,
                     peer=str(request.getClientAddress()))
            return pages.errorPage(
                421, "Misdirected Request",
                f"This server does not answer to the name {host!r} (server.web.allowed_hosts).")
        return super().getResourceFor(request)

    def log(self, request: server.Request) -> None:
        # The access log goes to twisted.logger at debug level, not to a file per request.
        log.debug("web: {line}", line=http.combinedLogFormatter(http.datetimeToLogString(), request))

    async def close(self) -> None:
        """End event streams and expire sessions; the open connections are the listener's
        to close, client first (``Listener.close_connections``)."""
        self.ctx.streams.close_all()
        self.ctx.samples.stop()
        if self.ctx.throttle is not None:
            self.ctx.throttle.stop()
        for session in list(self.sessions.values()):
            session.expire()
        await task.deferLater(self.reactor, 0, lambda: None)


#: The names a site answers to when server.web.allowed_hosts is empty, with this host's name.
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "127.0.0.1", "::1")


@attrs.frozen
class AllowedHosts:
    """The Host header names a site answers to: ``names`` (``*``: any), and always the
    address the request came to (an address cannot be rebound to another site)."""

    names: frozenset[str] = frozenset(LOCAL_NAMES)

    @classmethod
    def from_config(cls, config: WebConfig) -> AllowedHosts:
        if config.allowed_hosts:
            return cls(frozenset(name.lower().rstrip(".") for name in config.allowed_hosts))
        hostname = socket.gethostname().lower()
        names = {*LOCAL_NAMES, hostname, hostname.split(".")[0]}
        interface = _listen_interface(config.listen)
        if interface:
            names.add(interface.lower())
        return cls(frozenset(names))

    def allows(self, host: str, local: Any) -> bool:
        host = host.lower().rstrip(".")
        if "*" in self.names or host in self.names:
            return True
        return host == str(getattr(local, "host", "")).lower()


def _listen_interface(description: str) -> str:
    """``interface=`` of a server endpoint string ("" when it listens on every address)."""
    for part in description.split(":"):
        if part.startswith("interface="):
            value = part.split("=", 1)[1]
            return "" if value in ("0.0.0.0", "::") else value
    return ""


def make_site(reactor: Any, farm: Farm | None = None, config: WebConfig | None = None,
              outputs: OutputStore | None = None, stats: Any = None, *, users_file: str = "",
              durable: Callable[[], defer.Deferred[Any]] | None = None, amp: Any = None,
              portal: Portal | None = None, events: EventLog | None = None,
              login_link: auth.TokenChecker | None = None, output_readers: str | None = None,
              throttle: LoginThrottle | None = None, sample_resources: bool = False,
              previews: Any = None) -> FarmSite:
    """The site for ``farm``. ``config`` is the server's ``web`` section (``public``);
    ``users_file`` the logins' password file (``server.auth.users_file``); ``stats`` the
    StatsService (or None); ``durable`` waits until the farm's changes are on disk (actions
    answer after it); ``amp`` the FarmServer (its connections are counted in /metrics);
    ``portal`` replaces the password file's (tests); ``events`` the farm's
    event log (a new one follows ``farm`` when not given); ``login_link`` lets the holder
    of the server's printed link log in (a farm without a password file);
    ``output_readers`` who reads task outputs (``server.auth.outputs``; default: "owner"
    when there are passwords, else "public"); ``throttle`` backs failed logins off per
    address (shared with the AMP side); ``sample_resources`` samples the renders' resources
    from now on (else from the first render page), for their charts; ``previews`` makes the
    thumbnails of rendered frames (`farmnet.server.previews.Previews`).

    The older ``make_site(farm)`` still works (read-only, no outputs, no statistics)."""
    if farm is None and isinstance(reactor, Farm):
        farm, reactor = reactor, reactor.clock
    if farm is None:
        raise TypeError("make_site: the farm is missing")
    public = config.public if config is not None else True
    if portal is None:
        portal = auth.make_portal(reactor, users_file, login_link=login_link)
    if events is None:
        events = EventLog(farm)
    logins = bool(portal.listCredentialsInterfaces())
    if output_readers is None:  # a farm without passwords keeps its outputs open, as before
        output_readers = "owner" if auth.passwords_accepted(portal) else "public"
    ctx = WebContext(reactor=reactor, farm=farm, events=events, outputs=outputs, portal=portal, stats=stats,
                     public=public, logins=logins, output_readers=output_readers, durable=durable, amp=amp,
                     throttle=throttle if throttle is not None else LoginThrottle(reactor),
                     samples=ResourceSamples(reactor, farm), previews=previews)
    if sample_resources:
        ctx.samples.start()
    site_box: list[FarmSite] = []

    def extra() -> dict[str, tuple[str, float]]:
        figures: dict[str, tuple[str, float]] = {
            "farmnet_web_event_streams": ("Open server-sent event streams.", len(ctx.streams.open)),
        }
        if site_box:
            figures["farmnet_web_connections"] = ("Open HTTP connections.", len(site_box[0].channels))
        return figures

    def connections() -> dict[str, int] | None:
        registry = getattr(amp, "registry", None)
        if registry is not None and hasattr(registry, "counts"):
            return dict(registry.counts())
        if getattr(amp, "connections", None) is not None:
            return {"all": len(amp.connections)}
        return None

    def statistics_up() -> bool | None:
        return None if stats is None else bool(getattr(stats, "enabled", False))

    registry = metrics.make_registry(metrics.FarmCollector(farm, events, extra, statistics_up, connections))
    gate = Gate(portal, public, LoginPages(ctx).error_page, ctx.throttle)
    allowed = AllowedHosts.from_config(config) if config is not None else None
    site = FarmSite(ctx, site_tree(gate, ctx, registry), reactor, allowed)
    if config is not None:
        site.timeOut = config.idle_timeout  # then ended client first (the listener)
        site.header_timeout = config.header_timeout
    site_box.append(site)
    log.info("web site: {public}, logins {logins}, statistics {stats}",
             public="public" if public else "logged-in users only",
             logins="from " + users_file if users_file else ("by the login link" if ctx.logins else "off"),
             stats="off" if stats is None else "on")
    return site
