"""The web site: live farm pages, statistics, the JSON action API, events and metrics.

One twisted.web :class:`FarmSite` on one port (``server.web.listen``), no other web server or
script engine. Site map:

======================================  ==========================================================
``/``                                   the farm: counts, unfinished jobs, busy renders (live)
``/jobs`` (``?user=&state=``)           jobs with progress, state, owner; actions (live)
``/jobs/ID`` (``?offset=&explain=1``)   a job: blocks, a grid of its tasks coloured by state
``/jobs/ID/BLOCK/TASK`` (``?run=``)     a task and its output (live; polled while it runs)
``/renders``, ``/users``                renders (state, tasks, capacity, CPUs, memory), users
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
needs a user from ``server.auth.users_file`` (see :mod:`farmnet.web.auth`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web import http, server

from farmnet.config import WebConfig
from farmnet.server.farm import Farm
from farmnet.server.outputs import OutputStore
from farmnet.web import auth, live, metrics
from farmnet.web.api import JsonApi
from farmnet.web.assets import CSS, JS
from farmnet.web.context import WebContext
from farmnet.web.pages import LivePages, asset
from farmnet.web.routing import Dispatcher, Route
from farmnet.web.statspages import StatsPages

__all__ = ["FarmSite", "make_site", "routes"]

log = Logger()

ID = r"(?P<job>[0-9]{1,12})"
TASK = ID + r"/(?P<block>[0-9]{1,9})/(?P<task>[0-9]{1,12})"
NAME = r"(?P<name>[^/]{1,256})"


def routes(ctx: WebContext, registry: Any) -> list[Route]:
    pages, api, stats = LivePages(ctx), JsonApi(ctx), StatsPages(ctx)
    r = Route.make
    return [
        r("GET", "/", pages.index),
        r("GET", "/jobs", pages.jobs),
        r("GET", f"/jobs/{ID}", pages.job),
        r("GET", f"/jobs/{TASK}", pages.task),
        r("GET", "/renders", pages.renders),
        r("GET", "/users", pages.users),
        r("GET", "/stats", stats.guarded("/stats", stats.graphs)),
        r("GET", "/stats/tasks", stats.guarded("/stats/tasks", stats.tasks)),
        r("GET", "/stats/jobs", stats.guarded("/stats/jobs", stats.jobs)),
        r("GET", "/stats/logs", stats.guarded("/stats/logs", stats.logs)),
        r("GET", "/stats/graph.svg", stats.graph_svg, api=True),
        r("GET", "/login", pages.login_page, access="open"),
        r("POST", "/login", pages.login_post, access="open"),
        r("POST", "/logout", pages.logout, access="open"),
        r("GET", "/static/farmnet.css", asset(CSS, "text/css; charset=utf-8"), access="open"),
        r("GET", "/static/farmnet.js", asset(JS, "text/javascript; charset=utf-8"), access="open"),
        r("GET", "/events", live.sse(ctx.reactor, ctx.farm.events, ctx.streams), api=True),
        r("GET", "/metrics", metrics.metrics_handler(registry), api=True),
        r("GET", "/api", api.index),
        r("POST", "/api/act", api.post_act),
        r("GET", "/api/farm", api.farm),
        r("GET", "/api/whoami", api.whoami),
        r("GET", "/api/events", live.long_poll(ctx.reactor, ctx.farm.events)),
        r("GET", "/api/jobs", api.jobs),
        r("GET", f"/api/jobs/{ID}", api.job),
        r("GET", f"/api/jobs/{ID}/explain", api.explain),
        r("GET", f"/api/jobs/{ID}/tasks", api.tasks),
        r("GET", f"/api/jobs/{TASK}", api.task),
        r("GET", f"/api/jobs/{TASK}/output", api.output),
        r("GET", "/api/renders", api.renders),
        r("GET", f"/api/renders/{NAME}", api.render),
        r("GET", "/api/users", api.users),
        r("GET", f"/api/users/{NAME}", api.user),
        r("GET", r"/api/stats/(?P<query>[a-z_]{1,40})", stats.api),
    ]


class TrackedChannel(http.HTTPChannel):
    """An HTTP connection its site knows of (to count and to close them)."""

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.channels.add(self)

    def connectionLost(self, reason: Any) -> None:
        self.factory.channels.discard(self)
        super().connectionLost(reason)


class FarmSite(server.Site):
    """The site, plus what it needs at shutdown: its event streams ended, its sessions
    expired and its connections closed (:meth:`close`). Plain HTTP/1.1 (put TLS in front
    with an ``ssl:`` endpoint)."""

    requestFactory = auth.FarmRequest
    sessionFactory = auth.FarmSession
    protocol = TrackedChannel

    def __init__(self, ctx: WebContext, resource: Any, reactor: Any) -> None:
        super().__init__(resource, reactor=reactor)
        self.ctx = ctx
        self.channels: set[TrackedChannel] = set()

    def log(self, request: server.Request) -> None:
        # The access log goes to twisted.logger at debug level, not to a file per request.
        log.debug("web: {line}", line=http.combinedLogFormatter(http.datetimeToLogString(), request))

    async def close(self) -> None:
        """End event streams, expire sessions, drop open connections (the port is the
        listener's to stop)."""
        self.ctx.streams.close_all()
        for session in list(self.sessions.values()):
            session.expire()
        for channel in list(self.channels):
            if channel.transport is not None:
                channel.transport.abortConnection()
        await task.deferLater(self.reactor, 0, lambda: None)


def make_site(reactor: Any, farm: Farm | None = None, config: WebConfig | None = None,
              outputs: OutputStore | None = None, stats: Any = None, *, users_file: str = "",
              durable: Callable[[], defer.Deferred[Any]] | None = None, amp: Any = None,
              portal: Portal | None = None) -> FarmSite:
    """The site for ``farm``. ``config`` is the server's ``web`` section (``public``);
    ``users_file`` the logins' password file (``server.auth.users_file``); ``stats`` the
    StatsService (or None); ``durable`` waits until the farm's changes are on disk (actions
    answer after it); ``amp`` the FarmServer (its connections are counted in /metrics);
    ``portal`` replaces the password file's (tests).

    The older ``make_site(farm)`` still works (read-only, no outputs, no statistics)."""
    if farm is None and isinstance(reactor, Farm):
        farm, reactor = reactor, reactor.clock
    if farm is None:
        raise TypeError("make_site: the farm is missing")
    public = config.public if config is not None else True
    if portal is None:
        portal = auth.make_portal(reactor, users_file)
    ctx = WebContext(reactor=reactor, farm=farm, outputs=outputs, portal=portal, stats=stats, public=public,
                     logins=bool(portal.listCredentialsInterfaces()), durable=durable, amp=amp)
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

    registry = metrics.make_registry(metrics.FarmCollector(farm, extra, statistics_up, connections))
    pages = LivePages(ctx)
    dispatcher = Dispatcher(portal, public, routes(ctx, registry), pages.error_page)
    site = FarmSite(ctx, dispatcher, reactor)
    site_box.append(site)
    log.info("web site: {public}, logins {logins}, statistics {stats}",
             public="public" if public else "logged-in users only",
             logins="from " + users_file if ctx.logins and users_file else ("on" if ctx.logins else "off"),
             stats="off" if stats is None else "on")
    return site
