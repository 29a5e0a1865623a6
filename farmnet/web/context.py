"""What every part of the web site shares: the farm, outputs, statistics, settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.cred.portal import Portal
from twisted.internet import defer

from farmnet.model.farm import Farm
from farmnet.server.monitors import EventLog
from farmnet.server.outputs import OutputStore
from farmnet.server.throttle import LoginThrottle
from farmnet.web.live import Streams

__all__ = ["WebContext"]


@attrs.define(eq=False)
class WebContext:
    reactor: Any
    farm: Farm
    #: The farm's events as records (the /events stream and long-poll).
    events: EventLog
    outputs: OutputStore | None
    portal: Portal
    #: The statistics service (``status``, ``queries``), or None: statistics not run here.
    stats: Any = None
    #: Read-only pages and API for everyone (else only for logged-in users).
    public: bool = True
    #: Logins possible at all (a password file is configured).
    logins: bool = False
    #: Who reads task outputs: "owner", "users" or "public" (`Policy.check_may_read_output`).
    output_readers: str = "public"
    #: Waits until the farm's changes so far are on disk (the store's sync).
    durable: Callable[[], defer.Deferred[Any]] | None = None
    #: The AMP side (connection counts for /metrics), if known.
    amp: Any = None
    streams: Streams = attrs.field(factory=Streams)
    #: Failed logins back off per address (`farmnet.server.throttle`).
    throttle: LoginThrottle | None = None
    #: Renders' resources sampled over time (their pages' charts); made by make_site.
    samples: Any = None
    #: Thumbnails of rendered frames (`farmnet.server.previews.Previews`), or None.
    previews: Any = None
