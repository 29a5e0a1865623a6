"""Requests to handlers: one resource routes every path, knows who asks and answers errors.

Each :class:`Route` is a method, a path pattern, an ``async`` handler taking a
:class:`Call` and returning a :class:`Reply`, and an access rule:

- ``open``: anyone (the login form, the style sheet and script);
- ``read``: anyone when the site is public (``server.web.public``), else logged-in users;
- ``login``: logged-in users only (the handler may be stricter: the farm checks owners).

Who asks is settled before any handler runs: an ``Authorization: Basic`` header is checked
through the portal (a wrong one is a 401 even on a public page), else the session cookie
is looked up. A POST whose ``Origin`` is another site is refused (with the session cookie
being ``SameSite=Strict`` and actions needing a JSON body, that is a third line of defence
against cross-site requests). Handler errors become a proper status: a
:class:`HTTPError` as raised, a farm error by its kind (PermissionDenied 403, unknown
things 404, invalid actions 400), anything else 500 with the traceback in the log only.
API paths answer errors as ``{"error": {"type": ..., "message": ...}}``, pages as HTML.
"""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from farmnet import errors
from farmnet.web import auth
from farmnet.web.markup import Markup

__all__ = ["Call", "Dispatcher", "HTTPError", "Reply", "Route", "STREAMING", "html_reply", "json_reply",
           "redirect"]

log = Logger()

HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"
#: The most a request body may carry.
MAX_BODY = auth.MAX_REQUEST_BODY
#: The longest query argument accepted.
MAX_ARG = 4096

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

REASONS = MappingProxyType({400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                            405: "Method Not Allowed", 413: "Payload Too Large",
                            415: "Unsupported Media Type", 500: "Internal Server Error",
                            503: "Service Unavailable"})


class HTTPError(Exception):
    """A request that cannot be answered as asked; ``kind`` names it in JSON errors."""

    def __init__(self, status: int, message: str, kind: str | None = None,
                 headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind or REASONS.get(status, "Error").replace(" ", "")
        self.headers = headers or {}


@attrs.frozen
class Reply:
    body: bytes
    status: int = 200
    content_type: str = HTML
    headers: tuple[tuple[bytes, bytes], ...] = ()


#: A handler that took the request over (it writes and finishes it itself).
STREAMING = Reply(b"", status=0)


def html_reply(page: Markup, status: int = 200) -> Reply:
    return Reply(("<!DOCTYPE html>\n" + str.__str__(page)).encode("utf-8"), status, HTML)


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def json_dumps(data: Any) -> bytes:
    """JSON for the API: NaN and infinities become null (JSON has none)."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(data), default=_json_default, separators=(",", ":")).encode("utf-8")


def json_reply(data: Any, status: int = 200) -> Reply:
    return Reply(json_dumps(data), status, JSON)


def redirect(location: str, status: int = 303) -> Reply:
    return Reply(b"", status, HTML, ((b"location", location.encode("utf-8")),))


@attrs.define
class Call:
    """One request as a handler sees it."""

    request: server.Request
    path: str
    groups: dict[str, str]
    #: The logged-in user (None: anonymous) and how ("session" or "basic").
    user: str | None = None
    via: str | None = None
    _args: dict[str, list[str]] | None = None

    @property
    def args(self) -> dict[str, list[str]]:
        if self._args is None:
            query = self.request.uri.partition(b"?")[2]
            try:
                self._args = urllib.parse.parse_qs(query.decode("ascii"), keep_blank_values=True,
                                                   strict_parsing=False, errors="strict",
                                                   max_num_fields=200)
            except (UnicodeDecodeError, ValueError) as e:
                raise HTTPError(400, f"bad query string: {e}") from None
        return self._args

    def arg(self, name: str, default: str | None = None) -> str | None:
        """A query argument ("" counts as not given); 400 if given twice or too long."""
        values = self.args.get(name)
        if not values or values == [""]:
            return default
        if len(values) > 1:
            raise HTTPError(400, f"{name}: given {len(values)} times")
        value = values[0]
        if len(value) > MAX_ARG or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise HTTPError(400, f"{name}: too long or has control characters")
        return value

    def int_arg(self, name: str, default: int | None, low: int, high: int) -> int | None:
        text = self.arg(name)
        if text is None:
            return default
        try:
            value = int(text, 10)
        except ValueError:
            raise HTTPError(400, f"{name}: expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise HTTPError(400, f"{name}: must be from {low} to {high}, got {value}")
        return value

    def body(self) -> bytes:
        content = self.request.content
        if content is None:
            return b""
        content.seek(0, 2)
        if content.tell() > MAX_BODY:
            raise HTTPError(413, f"request body over {MAX_BODY} bytes")
        content.seek(0)
        return content.read()

    def content_type(self) -> str:
        value = self.request.getHeader(b"content-type") or b""
        return value.split(b";")[0].strip().lower().decode("latin-1")

    def json_body(self) -> Any:
        if self.content_type() != "application/json":
            raise HTTPError(415, "send the request as Content-Type: application/json")
        try:
            return json.loads(self.body().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise HTTPError(400, f"the body is not JSON: {e}") from None

    def form(self) -> dict[str, str]:
        if self.content_type() != "application/x-www-form-urlencoded":
            raise HTTPError(415, "send the form as application/x-www-form-urlencoded")
        try:
            fields = urllib.parse.parse_qs(self.body().decode("utf-8"), keep_blank_values=True,
                                           max_num_fields=50)
        except (UnicodeDecodeError, ValueError) as e:
            raise HTTPError(400, f"bad form: {e}") from None
        return {k: v[-1] for k, v in fields.items()}

    def local_url(self) -> str:
        """This request's path and query, to come back to after a login."""
        return self.request.uri.decode("latin-1")


Handler = Callable[[Call], Awaitable[Reply]]


@attrs.frozen
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    access: str = "read"
    #: Errors as JSON (API) rather than as a page.
    api: bool = False

    @classmethod
    def make(cls, method: str, pattern: str, handler: Handler, access: str = "read",
             api: bool | None = None) -> Route:
        if access not in ("open", "read", "login"):
            raise ValueError(f"access: {access!r}")
        return cls(method, re.compile(pattern), handler, access,
                   pattern.startswith("/api") if api is None else api)


ErrorPage = Callable[[Call, int, str], Markup]


def same_origin(request: server.Request) -> bool:
    """False when the request says it comes from a page of another site."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = request.getHeader(b"host") or b""
    parsed = urllib.parse.urlsplit(origin.decode("latin-1"))
    return parsed.scheme in ("http", "https") and parsed.netloc.encode("latin-1") == host


class Dispatcher(resource.Resource):
    """The site's only resource: routes, authenticates, answers."""

    isLeaf = True

    def __init__(self, portal: Portal, public: bool, routes: Sequence[Route], error_page: ErrorPage,
                 login_path: str = "/login") -> None:
        super().__init__()
        self.portal = portal
        self.public = public
        self.routes = list(routes)
        self.error_page = error_page
        self.login_path = login_path

    def render(self, request: server.Request) -> Any:
        defer.ensureDeferred(self._handle(request)).addErrback(
            lambda f: log.failure("web: answering {uri} failed", f, uri=request.uri))
        return server.NOT_DONE_YET

    def _path(self, request: server.Request) -> str:
        try:
            parts = [p.decode("utf-8") for p in request.postpath]
        except UnicodeDecodeError:
            raise HTTPError(400, "the path is not UTF-8") from None
        path = "/" + "/".join(parts)
        return path.rstrip("/") or "/"

    async def _handle(self, request: server.Request) -> None:
        gone: list[bool] = []
        request.notifyFinish().addBoth(lambda _: gone.append(True))
        call = Call(request, "/", {})
        route: Route | None = None
        try:
            call.path = self._path(request)
            route, groups = self._route(request, call.path)
            call.groups = groups
            reply = await self._run(call, route)
        except Exception as e:
            reply = self._error_reply(call, route, e)
        if reply is STREAMING or gone:
            return
        request.setResponseCode(reply.status)
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        request.setHeader(b"content-type", reply.content_type.encode("ascii"))
        for name, value in reply.headers:
            request.setHeader(name, value)
        request.setHeader(b"content-length", str(len(reply.body)).encode("ascii"))
        if request.method != b"HEAD":
            request.write(reply.body)
        request.finish()

    def _route(self, request: server.Request, path: str) -> tuple[Route, dict[str, str]]:
        method = request.method.decode("latin-1")
        if method == "HEAD":
            method = "GET"
        allowed = []
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            if route.method == method:
                return route, match.groupdict()
            allowed.append(route.method)
        if allowed:
            raise HTTPError(405, f"{method} is not allowed here; use {', '.join(sorted(set(allowed)))}",
                            headers={b"allow": ", ".join(sorted(set(allowed))).encode()})
        raise HTTPError(404, f"nothing at {path}")

    async def _run(self, call: Call, route: Route) -> Reply:
        request = call.request
        if route.method != "GET" and not same_origin(request):
            raise HTTPError(403, "cross-site request refused", "CrossSiteRequest")
        try:
            basic = auth.basic_credentials(request)
            if basic is not None:
                user = await auth.login(self.portal, *basic)
                call.user, call.via = user.name, "basic"
        except auth.LoginFailed as e:
            raise self.unauthorized(str(e), basic=True) from None
        if call.user is None:
            call.user = auth.session_user(request)
            call.via = "session" if call.user else None
        if call.user is None and (route.access == "login" or (route.access == "read" and not self.public)):
            if not route.api and route.method == "GET":
                return redirect(f"{self.login_path}?next={urllib.parse.quote(call.local_url(), safe='')}")
            raise self.unauthorized("log in first (session from the login form, or HTTP Basic)")
        return await route.handler(call)

    def unauthorized(self, message: str, basic: bool = True) -> HTTPError:
        headers = {b"www-authenticate": b'Basic realm="farmnet", charset="UTF-8"'} if basic else {}
        return HTTPError(401, message, "NotAuthenticated", headers)

    def _error_reply(self, call: Call, route: Route | None, e: Exception) -> Reply:
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
                reply = html_reply(self.error_page(call, status, message), status)
            except Exception:
                log.failure("web: the error page failed")
                reply = Reply(message.encode("utf-8"), status, "text/plain; charset=utf-8")
        return attrs.evolve(reply, headers=tuple(headers.items()))
