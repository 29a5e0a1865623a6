"""The JSON API: ``POST /api/act`` and GET conveniences, all through the one action API.

``POST /api/act`` takes ``{"item", "action", "filters", "values"}`` (brender's shape, as the
CLI's ``Act`` over AMP) and calls :func:`farmnet.server.actions.act`, so the web site has
no mutation path of its own and the farm's permission checks (owner or admin) apply. It
answers ``{"result": ...}``, or ``{"error": {"type", "message"}}`` with 400 (invalid), 401
(not logged in), 403 (PermissionDenied), 404 (unknown job, task, render) or 415 (not
JSON). Reads (list, show, explain) follow the site's read rule; every other action needs a
logged-in user: the session of the login form or HTTP Basic. With a session the body must
be ``Content-Type: application/json``, which a page of another site cannot send without
the browser asking first (and the cookie is SameSite=Strict anyway). A change is answered
once it is on disk, as over AMP.

GET conveniences answer ``{"result": ...}`` the same way: ``/api/farm``, ``/api/jobs``
(``?user=&state=&project=&department=&name=&q=&sort=&offset=&limit=``), ``/api/jobs/ID``,
``/api/jobs/ID/explain``, ``/api/jobs/ID/tasks`` (``?block=&state=&host=&q=&sort=&offset=&limit=``),
``/api/jobs/ID/B/T``, ``/api/jobs/ID/B/T/output`` (``?run=&offset=&limit=``), ``/api/renders``,
``/api/renders/NAME``, ``/api/users``, ``/api/users/NAME``, ``/api/whoami``; ``/api/events`` is
the event log's long-poll.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from farmnet import errors
from farmnet.server.actions import ITEMS, JOB_LIST_KEYS, MAX_PAGE, READ_ACTIONS, act
from farmnet.web.context import WebContext
from farmnet.web.routing import Call, HTTPError, Reply, json_reply

__all__ = ["JsonApi", "MAX_OUTPUT_READ"]

log = Logger()

MAX_OUTPUT_READ = 1 << 20
ACT_KEYS = frozenset({"item", "action", "filters", "values"})


class JsonApi:
    def __init__(self, ctx: WebContext) -> None:
        self.ctx = ctx

    async def _act(self, call: Call, item: str, action: str, filters: Any = None, values: Any = None) -> Any:
        ctx = self.ctx
        if action not in READ_ACTIONS:
            if call.user is None:
                raise HTTPError(401, f"{item} {action} needs a login: the login form's session or HTTP Basic",
                                "NotAuthenticated",
                                headers={b"www-authenticate": b'Basic realm="farmnet", charset="UTF-8"'})
            log.info("web: {user} {item} {action} {filters}", user=call.user, item=item, action=action,
                     filters=filters)
        result = act(ctx.farm, call.user or "", item, action, filters, values)
        if action not in READ_ACTIONS and ctx.durable is not None:
            await ctx.durable()
        return result

    async def post_act(self, call: Call) -> Reply:
        body = call.json_body()
        if not isinstance(body, dict):
            raise HTTPError(400, 'expected {"item": ..., "action": ..., "filters": {...}, "values": ...}')
        unknown = set(body) - ACT_KEYS
        if unknown:
            raise HTTPError(400, f"unknown keys {', '.join(sorted(map(str, unknown)))}; "
                                 f"expected {', '.join(sorted(ACT_KEYS))}")
        item, action = body.get("item"), body.get("action")
        if not isinstance(item, str) or item not in ITEMS:
            raise errors.InvalidAction(f"item: one of {', '.join(ITEMS)}")
        if not isinstance(action, str) or not action or len(action) > 64:
            raise errors.InvalidAction("action: a string, e.g. list, show, pause")
        filters = body.get("filters")
        if filters is not None and not isinstance(filters, dict):
            raise errors.InvalidAction("filters: expected an object")
        result = await self._act(call, item, action, filters, body.get("values"))
        return json_reply({"result": result})

    # --- GET conveniences ----------------------------------------------------------------

    async def index(self, call: Call) -> Reply:
        return json_reply({"result": {
            "act": "POST /api/act {item, action, filters, values}",
            "items": list(ITEMS),
            "get": ["/api/farm", "/api/jobs?user=&state=&project=&department=&q=&sort=&offset=&limit=",
                    "/api/jobs/ID", "/api/jobs/ID/explain",
                    "/api/jobs/ID/tasks?block=&state=&host=&q=&sort=&offset=&limit=",
                    "/api/jobs/ID/BLOCK/TASK",
                    "/api/jobs/ID/BLOCK/TASK/output?run=&offset=&limit=", "/api/renders", "/api/renders/NAME",
                    "/api/users", "/api/users/NAME", "/api/events?after=&timeout=", "/api/whoami",
                    "/api/stats/QUERY?...", "/events (server-sent events)", "/metrics (Prometheus)"],
        }})

    async def farm(self, call: Call) -> Reply:
        ctx = self.ctx
        data = dict(ctx.farm.counts())
        data["last_event"] = ctx.events.last
        data["users"] = len(ctx.farm.users)
        if ctx.stats is not None:
            data["statistics"] = ctx.stats.status
        return json_reply({"result": data})

    async def whoami(self, call: Call) -> Reply:
        user = call.user
        return json_reply({"result": {"user": user, "via": call.via,
                                      "admin": bool(user) and self.ctx.farm.is_admin(user),
                                      "public": self.ctx.public, "logins": self.ctx.logins}})

    async def jobs(self, call: Call) -> Reply:
        """``jobs list`` with the query's filters (``?user=&state=&project=&department=&name=
        &q=&sort=&offset=&limit=``)."""
        filters: dict[str, Any] = {}
        for key in JOB_LIST_KEYS:
            if key == "id":
                continue
            value = call.int_arg(key, None, 0, 1 << 40) if key in ("offset", "limit") else call.arg(key)
            if value is not None:
                filters[key] = value
        return json_reply({"result": await self._act(call, "jobs", "list", filters)})

    async def job(self, call: Call) -> Reply:
        job_id = int(call.groups["job"])
        return json_reply({"result": await self._act(call, "jobs", "show", {"id": job_id})})

    async def explain(self, call: Call) -> Reply:
        job_id = int(call.groups["job"])
        return json_reply({"result": await self._act(call, "jobs", "explain", {"id": job_id})})

    async def tasks(self, call: Call) -> Reply:
        filters: dict[str, Any] = {"job_id": int(call.groups["job"])}
        block = call.int_arg("block", None, 0, 1 << 30)
        if block is not None:
            filters["block"] = block
        filters["offset"] = call.int_arg("offset", 0, 0, 1 << 40)
        filters["limit"] = call.int_arg("limit", MAX_PAGE, 0, MAX_PAGE)
        for key in ("state", "host", "q", "sort"):
            value = call.arg(key)
            if value is not None:
                filters[key] = value
        return json_reply({"result": await self._act(call, "tasks", "list", filters)})

    async def task(self, call: Call) -> Reply:
        g = call.groups
        filters = {"job_id": int(g["job"]), "block": int(g["block"]), "task": int(g["task"])}
        return json_reply({"result": await self._act(call, "tasks", "show", filters)})

    async def output(self, call: Call) -> Reply:
        g = call.groups
        key = (int(g["job"]), int(g["block"]), int(g["task"]))
        task = self.ctx.farm.task(key)
        self.ctx.farm.check_may_read_output(call.user, task.block.job, self.ctx.output_readers)
        run = call.int_arg("run", 0, 0, 1 << 30) or task.starts_count
        offset = call.int_arg("offset", 0, 0, 1 << 50) or 0
        limit = call.int_arg("limit", 64 * 1024, 0, MAX_OUTPUT_READ) or 0
        outputs = self.ctx.outputs
        if outputs is None or run < 1 or run > task.starts_count:
            return json_reply({"result": {"data": "", "run": run, "offset": offset, "next_offset": offset,
                                          "complete": True}})
        data = outputs.read(key, run, offset, limit)
        still_running = run == task.starts_count and task.state.value in ("RUN", "WRC")
        return json_reply({"result": {"data": data.decode("utf-8", "replace"), "run": run, "offset": offset,
                                      "next_offset": offset + len(data),
                                      "complete": not data and not still_running}})

    async def renders(self, call: Call) -> Reply:
        return json_reply({"result": await self._act(call, "renders", "list")})

    async def render(self, call: Call) -> Reply:
        return json_reply({"result": await self._act(call, "renders", "show", {"name": call.groups["name"]})})

    async def users(self, call: Call) -> Reply:
        return json_reply({"result": await self._act(call, "users", "list")})

    async def user(self, call: Call) -> Reply:
        return json_reply({"result": await self._act(call, "users", "show", {"name": call.groups["name"]})})
