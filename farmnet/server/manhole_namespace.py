"""What the admin manhole shows: the namespace of a session and its helper functions.

``farm``, ``scheduler``, ``server``, ``service``, ``config``, ``outputs``, ``user`` (who
logged in) and the helpers ``jobs()``, ``renders()``, ``drain(render_name)``,
``explain(job_id)``, ``show(obj)``, ``statistics()``, ``connections()`` and
``eject(connection_id, reason)``. The objects are the live ones: whatever is typed runs
in the server's reactor thread, so keep it short and never block.
"""

from __future__ import annotations

import pprint
from typing import Any

import attrs
from twisted.logger import Logger

from farmnet.convert import unstructure
from farmnet.model.data import Job, Render, Task, User
from farmnet.model.views import render_record, task_record, user_record
from farmnet.server.netstats import server_statistics, statistics_line

__all__ = ["HELPER_NAMES", "Helpers", "manhole_namespace", "session_namespace"]

log = Logger()

HELPER_NAMES = ("jobs", "renders", "drain", "explain", "show")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(title), *(len(row[i]) for row in rows)]) for i, title in enumerate(header)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in [header, *rows])


@attrs.frozen
class Helpers:
    """The manhole's helper functions, acting as ``user`` (who logged in)."""

    service: Any
    user: str = "manhole"

    @property
    def farm(self) -> Any:
        return self.service.farm

    def jobs(self) -> None:
        """Print a table of the jobs."""
        rows = []
        for job in sorted(self.farm.list_jobs(), key=lambda j: j.id):
            counts = " ".join(f"{state}:{n}" for state, n in sorted(job.counts.items()))
            rows.append([str(job.id), job.name, job.user_name, job.state, str(job.priority),
                         f"{job.progress}%", str(job.tasks), counts])
        if not rows:
            print("(no jobs)")
            return
        print(_table(["ID", "NAME", "USER", "STATE", "PRI", "DONE", "TASKS", "COUNTS"], rows))

    def renders(self) -> None:
        """Print a table of the renders."""
        now = self.farm.clock.seconds()
        rows = []
        for render in sorted(self.farm.list_renders(), key=lambda r: r.id):
            seen = render.time_seen
            rows.append([str(render.id), render.name, render.state,
                         f"{render.capacity_used}/{render.capacity}", str(len(render.tasks)), render.platform,
                         f"{now - seen:.0f}s ago" if seen else "never"])
        if not rows:
            print("(no renders)")
            return
        print(_table(["ID", "NAME", "STATE", "CAPACITY", "TASKS", "PLATFORM", "SEEN"], rows))

    def drain(self, render_name: str) -> Any:
        """Stop giving ``render_name`` new tasks (running ones finish): pause the render."""
        result = self.farm.render_action(self.user, [render_name], "pause")
        log.info("manhole: {user} drained render {render}", user=self.user, render=render_name)
        return result

    def explain(self, job_id: int) -> None:
        """Print why job ``job_id`` runs or waits (``Farm.explain``)."""
        self.show(self.farm.explain(job_id))

    def show(self, obj: Any) -> None:
        """Pretty-print ``obj``: a job, task, render or user as its listing record (what the
        tools show), another attrs object field by field."""
        farm = self.farm
        if isinstance(obj, Job):
            obj = unstructure(farm.show_job(obj.id))
        elif isinstance(obj, Task | Render | User):
            record = {Task: task_record, Render: render_record, User: user_record}[type(obj)]
            obj = unstructure(record(obj))
        elif attrs.has(type(obj)):
            obj = attrs.asdict(obj, recurse=False)
        pprint.pprint(obj, width=100, sort_dicts=False)


def manhole_namespace(server_service: Any) -> dict[str, Any]:
    """The manhole's namespace for a ``ServerService`` (anything with ``farm``, ``server``,
    ``outputs`` and ``config``)."""
    farm = server_service.farm
    helpers = Helpers(server_service)
    namespace: dict[str, Any] = {
        "farm": farm,
        "scheduler": farm.scheduler,
        "server": server_service.server,
        "service": server_service,
        "config": server_service.config,
        "outputs": server_service.outputs,
        "helpers": helpers,
    }
    namespace.update({name: getattr(helpers, name) for name in HELPER_NAMES})
    namespace["statistics"] = lambda: statistics_line(server_statistics(server_service))
    namespace["connections"] = lambda: [c.label for c in server_service.server.registry]
    namespace["eject"] = server_service.server.eject  # eject(connection_id, reason)
    return namespace


def session_namespace(namespace: dict[str, Any], user: str) -> dict[str, Any]:
    """A copy of ``namespace`` for one session of ``user``: ``user`` set, helpers acting as them."""
    result = dict(namespace)
    result["user"] = user
    helpers = namespace.get("helpers")
    if isinstance(helpers, Helpers):
        bound = attrs.evolve(helpers, user=user)
        result["helpers"] = bound
        for name in HELPER_NAMES:
            if result.get(name) == getattr(helpers, name):
                result[name] = getattr(bound, name)
    return result
