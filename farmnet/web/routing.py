"""What a handler sees and gives back: the :class:`Call` it answers, the :class:`Reply` it
makes, the :class:`HTTPError` it raises.

Handlers are ``async`` functions of a Call returning a Reply; the resource tree of
:mod:`farmnet.web.resources` finds them, settles who asks and writes the Reply. A page's
body is a twisted.web.template tag (flattened, so escaped, when written); JSON, assets and
metrics are bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from types import MappingProxyType
from typing import Any

import attrs
from twisted.web import server
from twisted.web.template import Element, Tag, flattenString

__all__ = ["Call", "HTTPError", "Handler", "Reply", "STREAMING", "html_reply", "json_reply", "redirect"]

HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"
DOCTYPE = b"<!DOCTYPE html>\n"
#: The longest query argument accepted.
MAX_ARG = 4096

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
    """``body``: bytes as they are, or a template tag or element flattened after ``prolog``."""

    body: bytes | Tag | Element
    status: int = 200
    content_type: str = HTML
    headers: tuple[tuple[bytes, bytes], ...] = ()
    prolog: bytes = b""

    async def data(self, request: server.Request | None = None) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return self.prolog + await flattenString(request, self.body)


#: A handler that took the request over (it writes and finishes it itself).
STREAMING = Reply(b"", status=0)


def html_reply(page: Tag | Element, status: int = 200) -> Reply:
    return Reply(page, status, HTML, prolog=DOCTYPE)


def json_dumps(data: Any) -> bytes:
    """JSON for the API: NaN and infinities become null (JSON has none)."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [clean(v) for v in value]
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return value

    return json.dumps(clean(data), default=str, separators=(",", ":")).encode("utf-8")


def json_reply(data: Any, status: int = 200) -> Reply:
    return Reply(json_dumps(data), status, JSON)


def redirect(location: str, status: int = 303) -> Reply:
    return Reply(b"", status, HTML, ((b"location", location.encode("utf-8")),))


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"{what} is not UTF-8") from None


@attrs.define
class Call:
    """One request as a handler sees it: ``groups`` are the path's variable parts (``job``,
    ``block``, ``task``, ``name``, ``query``), ``args`` the query (and form) arguments as
    twisted.web parsed them."""

    request: server.Request
    path: str
    groups: dict[str, str]
    #: The logged-in user (None: anonymous) and how ("session" or "basic").
    user: str | None = None
    via: str | None = None

    @property
    def args(self) -> dict[str, list[str]]:
        return {_text(k, "an argument name"): [_text(v, "an argument") for v in values]
                for k, values in (self.request.args or {}).items()}

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
        """A form's fields (twisted.web parsed them into ``request.args``)."""
        if self.content_type() != "application/x-www-form-urlencoded":
            raise HTTPError(415, "send the form as application/x-www-form-urlencoded")
        return {k: v[-1] for k, v in self.args.items()}

    def local_url(self) -> str:
        """This request's path and query, to come back to after a login."""
        return self.request.uri.decode("latin-1")


Handler = Callable[[Call], Awaitable[Reply]]
