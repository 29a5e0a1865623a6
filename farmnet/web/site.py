"""The web site: for now the farm's live state as JSON (the pages come with the
statistics work). Read-only: every mutation goes through the AMP action path."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.web import resource, server

from farmnet import errors
from farmnet.server.farm import Farm


class JSONResource(resource.Resource):
    isLeaf = True

    def __init__(self, produce: Callable[[list[bytes]], Any]) -> None:
        super().__init__()
        self.produce = produce

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        try:
            body = self.produce(request.postpath)
        except (errors.UnknownJob, ValueError) as e:
            request.setResponseCode(404)
            body = {"error": str(e)}
        return json.dumps(body).encode()


def make_site(farm: Farm) -> server.Site:
    root = resource.Resource()
    api = resource.Resource()
    root.putChild(b"api", api)
    api.putChild(b"farm", JSONResource(lambda path: farm.counts()))
    api.putChild(b"renders", JSONResource(lambda path: farm.list_renders()))
    api.putChild(b"users", JSONResource(lambda path: farm.list_users()))
    api.putChild(b"jobs", JSONResource(
        lambda path: farm.show_job(int(path[0])) if path and path[0] else farm.list_jobs()))
    return server.Site(root)
