"""The site's twisted.web resource tree: a :class:`Node` per path segment, and the
:class:`Gate` every request passes on its way to a handler.

A Node has fixed children (``putChild``), at most one variable child (a job id, a render
name: its value reaches the handler as ``Call.groups``) and a :class:`Route` per method
for its own path. Each route has an access rule:

- ``open``: anyone (the login form, the style sheet and script);
- ``read``: anyone when the site is public (``server.web.public``), else logged-in users;
- ``login``: logged-in users only (the handler may be stricter: the farm checks owners).

The Gate settles who asks before any handler runs (:func:`farmnet.web.auth.request_user`:
HTTP Basic through the portal, else the session cookie), refuses a POST whose ``Origin`` is
another site (with ``SameSite=Strict`` cookies and JSON-only actions, a third line of
defence against cross-site requests) and turns errors into a status: a :class:`HTTPError`
as raised, a farm error by its kind (PermissionDenied 403, unknown things 404, invalid
actions 400), anything else 500 with the traceback in the log only. API paths answer
errors as ``{"error": {"type": ..., "message": ...}}``, pages as HTML.

Not twisted.web.guard's ``HTTPAuthSessionWrapper``: it wants every request logged in (or
an anonymous avatar that cannot see the session), and answers failures with its own
plain 401 page or a 500, where this site answers JSON errors and reads public pages
without a login.
"""

from __future__ import annotations

import copy
import re
import urllib.parse
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.template import Element, Tag

from farmnet import errors
from farmnet.server.throttle import LoginThrottle
from farmnet.web import auth
from farmnet.web.routing import STREAMING, Call, Handler, HTTPError, Reply, html_reply, json_reply, redirect

__all__ = ["Gate", "Node", "Route"]

log = Logger()

SECURITY_HEADERS = MappingProxyType({
    b"content-security-policy": (b"default-src 'none'; script-src 'self'; style-src 'self'; "
                                 b"img-src 'self' data:; connect-src 'self'; form-action 'self'; "
                                 b"frame-ancestors 'none'; base-uri 'none'"),
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"same-origin",
    b"cache-control": b"no-store",
})

#: HTTP status of each farm error.
FARM_ERROR_STATUS: Mapping[type[errors.FarmError], int] = MappingProxyType({
    errors.PermissionDenied: 403,
    errors.NotAuthenticated: 401,
    errors.UnknownJob: 404,
    errors.UnknownTask: 404,
    errors.UnknownRender: 404,
    errors.NotRegistered: 404,
    errors.InvalidAction: 400,
    errors.JobSpecError: 400,
})


@attrs.frozen
class Route:
    handler: Handler
    access: str = attrs.field(default="read", validator=attrs.validators.in_(("open", "read", "login")))
    #: Errors as JSON (API) rather than as a page.
    api: bool = False


ErrorPage = Callable[[Call, int, str], Tag | Element]


def same_origin(request: server.Request) -> bool:
    """False when the request says it comes from a page of another site."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = request.getHeader(b"host") or b""
    parsed = urllib.parse.urlsplit(origin.decode("latin-1"))
    return parsed.scheme in ("http", "https") and parsed.netloc.encode("latin-1") == host


def _path(request: server.Request) -> str:
    try:
        parts = [p.decode("utf-8") for p in request.prepath + request.postpath]
    except UnicodeDecodeError:
        raise HTTPError(400, "the path is not UTF-8") from None
    return ("/" + "/".join(parts)).rstrip("/") or "/"


@attrs.define
class Gate:
    """What every request goes through: who asks, may they, and the answer or its error."""

    portal: Portal
    public: bool
    error_page: ErrorPage
    #: Failed HTTP Basic logins back off per address.
    throttle: LoginThrottle | None = None
    login_path: str = "/login"

    def render(self, request: server.Request, routes: Mapping[str, Route], groups: Mapping[str, str]) -> Any:
        defer.ensureDeferred(self._handle(request, routes, groups)).addErrback(
            lambda f: log.failure("web: answering {uri} failed", f, uri=request.uri))
        return server.NOT_DONE_YET

    async def _handle(self, request: server.Request, routes: Mapping[str, Route],
                      groups: Mapping[str, str]) -> None:
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        call = Call(request, "/", dict(groups))
        route: Route | None = None
        try:
            call.path = _path(request)
            route = self._route(request, call.path, routes)
            reply = await self._run(call, route)
            body = await reply.data(request)
        except Exception as e:
            reply = await self._error_reply(call, route, e)
            body = await reply.data(request)
        if reply is STREAMING or gone:
            return
        request.setResponseCode(reply.status)
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", reply.content_type.encode("ascii"))
        for name, value in reply.headers:
            request.setHeader(name, value)
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    @staticmethod
    def _route(request: server.Request, path: str, routes: Mapping[str, Route]) -> Route:
        method = request.method.decode("latin-1")
        route = routes.get("GET" if method == "HEAD" else method)
        if route is not None:
            return route
        if routes:
            allowed = ", ".join(sorted(routes))
            raise HTTPError(405, f"{method} is not allowed here; use {allowed}",
                            headers={b"allow": allowed.encode()})
        raise HTTPError(404, f"nothing at {path}")

    async def _run(self, call: Call, route: Route) -> Reply:
        request = call.request
        if request.method not in (b"GET", b"HEAD") and not same_origin(request):
            raise HTTPError(403, "cross-site request refused", "CrossSiteRequest")
        try:
            call.user, call.via = await auth.request_user(self.portal, request, self.throttle)
        except auth.LoginFailed as e:
            raise unauthorized(str(e)) from None
        if call.user is None and (route.access == "login" or (route.access == "read" and not self.public)):
            if not route.api and request.method in (b"GET", b"HEAD"):
                return redirect(f"{self.login_path}?next={urllib.parse.quote(call.local_url(), safe='')}")
            raise unauthorized("log in first (session from the login form, or HTTP Basic)")
        return await route.handler(call)

    async def _error_reply(self, call: Call, route: Route | None, e: Exception) -> Reply:
        if isinstance(e, HTTPError):
            status, kind, message, headers = e.status, e.kind, e.message, e.headers
        elif isinstance(e, errors.FarmError):
            status = next((s for cls, s in FARM_ERROR_STATUS.items() if isinstance(e, cls)), 400)
            kind, message, headers = type(e).__name__, e.message, {}
        else:
            log.failure("web: {method} {uri} failed", method=call.request.method, uri=call.request.uri)
            status, kind, message, headers = 500, "InternalError", "internal error (see the server log)", {}
        # The browser's own Basic prompt only for scripts and direct visits, not our pages' fetches.
        if call.request.getHeader(b"x-requested-with") == b"farmnet":
            headers = {k: v for k, v in headers.items() if k != b"www-authenticate"}
        api = route.api if route is not None else call.path.startswith("/api")
        if api:
            reply = json_reply({"error": {"type": kind, "message": message}}, status)
        else:
            try:
                page = html_reply(self.error_page(call, status, message), status)
                reply = attrs.evolve(page, body=await page.data(call.request), prolog=b"")
            except Exception:
                log.failure("web: the error page failed")
                reply = Reply(message.encode("utf-8"), status, "text/plain; charset=utf-8")
        return attrs.evolve(reply, headers=tuple(headers.items()))


def unauthorized(message: str) -> HTTPError:
    return HTTPError(401, message, "NotAuthenticated", {b"www-authenticate": auth.CHALLENGE})


class Node(resource.Resource):
    """One path segment: fixed children, at most one variable child, and routes by method
    for its own path (none: 404; not this method: 405 with ``Allow``)."""

    def __init__(self, gate: Gate, routes: Mapping[str, Route] | None = None) -> None:
        super().__init__()
        self.gate = gate
        self.routes = MappingProxyType(dict(routes or {}))
        self.groups: Mapping[str, str] = MappingProxyType({})
        self.variable: tuple[str, re.Pattern[str], Node] | None = None

    def child(self, segment: str, routes: Mapping[str, Route] | None = None) -> Node:
        """The fixed child ``segment`` (made with ``routes`` if it is new)."""
        name = segment.encode("utf-8")
        if name not in self.children:
            self.putChild(name, Node(self.gate, routes))
        node = self.children[name]
        assert isinstance(node, Node)
        return node

    def variable_child(self, name: str, pattern: str, routes: Mapping[str, Route] | None = None) -> Node:
        """The child matching ``pattern``; the segment reaches handlers as ``groups[name]``."""
        node = Node(self.gate, routes)
        self.variable = (name, re.compile(pattern), node)
        return node

    def getChildWithDefault(self, path: bytes, request: server.Request) -> resource.Resource:
        if path == b"" and not request.postpath:
            return self  # a trailing slash
        child, found = self.children.get(path), {}
        if child is None and self.variable is not None:
            name, pattern, node = self.variable
            text = path.decode("utf-8", "replace")
            if pattern.fullmatch(text):
                child, found = node, {name: text}
        if not isinstance(child, Node):
            return Missing(self.gate)
        if not (self.groups or found):
            return child
        bound = copy.copy(child)  # the same node, knowing the path's variable parts so far
        bound.groups = MappingProxyType({**self.groups, **found})
        return bound

    def render(self, request: server.Request) -> Any:
        return self.gate.render(request, self.routes, self.groups)


class Missing(Node):
    """Nothing here, nor under it: 404 (or 400 for a path that is not UTF-8)."""

    isLeaf = True
