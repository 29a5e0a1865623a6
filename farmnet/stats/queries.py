"""Read queries for the statistics pages of the web site.

Every value a caller gives travels as a query parameter; the few words that become SQL
(what to group by, the bucket of a graph, the sort order) are looked up in fixed
tables here, and anything else is a :class:`QueryError` naming the choices. Argument
types are checked too (a time is a number of seconds since the epoch), so a bad request
is a clear error, never a database error.

Times in results are seconds since the epoch (floats); durations are seconds. Every
method takes a :class:`Filter`: a time window (on when the task run ended, when the
job row was recorded, when the event happened) and optional user, service, host and
folder (the folder and everything under it).
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from farmnet.stats.db import Database

__all__ = ["Filter", "QueryError", "StatsQueries", "GROUPS", "INTERVALS"]

#: Group-by choices: name → column of the tasks table, of the jobs table ("" if it has
#: none). A job's host is the host it was submitted from; a task's, the render it ran on.
GROUPS: dict[str, tuple[str, str]] = {
    "user": ("user_name", "user_name"),
    "service": ("service", "service"),
    "folder": ("folder", "folder"),
    "host": ("host", "host_name"),
    "job": ("job_name", "job_name"),
    "project": ("", "project"),
    "department": ("", "department"),
}
#: Graph buckets (PostgreSQL's date_trunc units).
INTERVALS = ("minute", "hour", "day", "week", "month")
LOG_TYPES = ("job_created", "job_done", "job_deleted", "render_online", "render_offline", "render_zombie",
             "render_sick", "user_added")
MAX_LIMIT = 10_000


class QueryError(ValueError):
    """A request the statistics cannot answer (bad choice or argument type)."""


def _choice(what: str, value: Any, choices: Any) -> Any:
    if not isinstance(value, str) or value not in choices:
        raise QueryError(f"{what}: {value!r} is not one of {', '.join(sorted(choices))}")
    return value


def _seconds(what: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise QueryError(f"{what}: expected seconds since the epoch, got {value!r}")
    return float(value)


def _int(what: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise QueryError(f"{what}: expected an integer from {low} to {high}, got {value!r}")
    return value


def _text(what: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise QueryError(f"{what}: expected a string, got {value!r}")
    return value


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.rstrip("/") + "/%"


@attrs.frozen
class Filter:
    """Which rows: a time window [since, until) and optional equalities."""

    since: float | None = None
    until: float | None = None
    user: str | None = None
    service: str | None = None
    host: str | None = None
    #: The folder and everything under it.
    folder: str | None = None
    job_id: int | None = None

    def checked(self) -> Filter:
        since, until = _seconds("since", self.since), _seconds("until", self.until)
        if self.job_id is not None:
            _int("job_id", self.job_id, 0, 2**62)
        return Filter(since, until, _text("user", self.user), _text("service", self.service),
                      _text("host", self.host), _text("folder", self.folder), self.job_id)


class _Where:
    """WHERE clause text (fixed words only) and its parameters."""

    def __init__(self) -> None:
        self.terms: list[str] = []
        self.params: list[Any] = []

    def add(self, term: str, *params: Any) -> None:
        self.terms.append(term)
        self.params.extend(params)

    def sql(self) -> str:
        return ("WHERE " + " AND ".join(self.terms)) if self.terms else ""


def _where(f: Filter, *, time_column: str, host_column: str | None, service: bool = True,
           folder: bool = True, user: bool = True) -> _Where:
    f = f.checked()
    w = _Where()
    if f.since is not None:
        w.add(f"{time_column} >= to_timestamp(%s)", f.since)
    if f.until is not None:
        w.add(f"{time_column} < to_timestamp(%s)", f.until)
    if f.user is not None and user:
        w.add("user_name = %s", f.user)
    if f.service is not None and service:
        w.add("service = %s", f.service)
    if f.host is not None and host_column:
        w.add(f"{host_column} = %s", f.host)
    if f.folder is not None and folder:
        w.add("(folder = %s OR folder LIKE %s)", f.folder, _like_prefix(f.folder))
    if f.job_id is not None:
        w.add("job_id = %s", f.job_id)
    return w


def _group_column(table: int, group_by: Any, depth: int | None) -> str:
    name = _choice("group_by", group_by, [g for g, cols in GROUPS.items() if cols[table]])
    column = GROUPS[name][table]
    if name == "folder" and depth is not None:
        depth = _int("depth", depth, 1, 64)
        # The first `depth` components: "/proj/shot" at depth 2 of "/proj/shot/out".
        parts = "string_to_array(folder, '/')"
        return (f"CASE WHEN left(folder, 1) = '/' THEN array_to_string(({parts})[1:{depth + 1}], '/') "
                f"ELSE array_to_string(({parts})[1:{depth}], '/') END")
    return column


def _order(column: str) -> str:
    """ORDER BY text for a checked column name: the key ascending, figures largest first."""
    return "1" if column == "key" else f"{column} DESC NULLS LAST, 1"


def _epoch(expr: str) -> str:
    return f"extract(epoch from {expr})::float8"


class StatsQueries:
    """The statistics pages' questions, answered from the statistics database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def _rows(self, sql: str, params: list[Any]) -> list[dict[str, Any]]:
        return await self.db.query(sql, tuple(params))

    # --- tables ------------------------------------------------------------------------

    TASK_ORDERS = ("key", "runs", "done", "errors", "run_time_sum", "run_time_avg", "capacity_time",
                   "time_last")

    async def tasks_table(self, group_by: str, f: Filter = Filter(), *, order: str = "run_time_sum",
                          limit: int = 100, depth: int | None = None) -> list[dict[str, Any]]:
        """Task runs grouped by user, service, folder, host or job: how many, how many
        done, failed, the render time they took (sum, average, capacity-weighted)."""
        key = _group_column(0, group_by, depth)
        order = _choice("order", order, self.TASK_ORDERS)
        limit = _int("limit", limit, 1, MAX_LIMIT)
        w = _where(f, time_column="time_done", host_column="host")
        sql = f"""
            SELECT {key} AS key, count(*) AS runs,
                   count(*) FILTER (WHERE state = 'DON') AS done,
                   count(*) FILTER (WHERE state <> 'DON') AS errors,
                   coalesce(sum(run_time), 0)::float8 AS run_time_sum,
                   coalesce(avg(run_time), 0)::float8 AS run_time_avg,
                   coalesce(max(run_time), 0)::float8 AS run_time_max,
                   coalesce(sum(run_time * capacity), 0)::float8 AS capacity_time,
                   count(DISTINCT host) AS hosts,
                   {_epoch("min(time_done)")} AS time_first, {_epoch("max(time_done)")} AS time_last
            FROM tasks {w.sql()}
            GROUP BY 1 ORDER BY {_order(order)} LIMIT %s"""
        return await self._rows(sql, [*w.params, limit])

    JOB_ORDERS = ("key", "jobs", "tasks_quantity", "tasks_done", "run_time_sum", "duration_avg", "time_last")

    async def jobs_table(self, group_by: str, f: Filter = Filter(), *, order: str = "run_time_sum",
                         limit: int = 100, depth: int | None = None) -> list[dict[str, Any]]:
        """Jobs (done, or deleted unfinished) grouped by user, service, folder, host
        (submitted from), job name, project or department."""
        key = _group_column(1, group_by, depth)
        order = _choice("order", order, self.JOB_ORDERS)
        limit = _int("limit", limit, 1, MAX_LIMIT)
        w = _where(f, time_column="time_recorded", host_column="host_name")
        sql = f"""
            SELECT {key} AS key, count(*) AS jobs,
                   count(*) FILTER (WHERE reason = 'done') AS done,
                   count(*) FILTER (WHERE reason = 'deleted') AS deleted,
                   coalesce(sum(tasks_quantity), 0)::bigint AS tasks_quantity,
                   coalesce(sum(tasks_done), 0)::bigint AS tasks_done,
                   coalesce(sum(tasks_error), 0)::bigint AS tasks_error,
                   coalesce(sum(runs), 0)::bigint AS runs,
                   coalesce(sum(run_time_sum), 0)::float8 AS run_time_sum,
                   coalesce(sum(capacity_time_sum), 0)::float8 AS capacity_time,
                   coalesce(avg({_epoch("time_done - time_started")}), 0)::float8 AS duration_avg,
                   {_epoch("max(time_recorded)")} AS time_last
            FROM jobs {w.sql()}
            GROUP BY 1 ORDER BY {_order(order)} LIMIT %s"""
        return await self._rows(sql, [*w.params, limit])

    async def jobs(self, f: Filter = Filter(), *, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Job rows, the latest recorded first."""
        limit = _int("limit", limit, 1, MAX_LIMIT)
        offset = _int("offset", offset, 0, 2**31)
        w = _where(f, time_column="time_recorded", host_column="host_name")
        sql = f"""
            SELECT job_id, job_name, user_name, host_name, service, folder, project, department, priority,
                   blocks, tasks_quantity, tasks_done, tasks_error, runs, errors_count, run_time_sum,
                   capacity_time_sum, {_epoch("time_created")} AS time_created,
                   {_epoch("time_started")} AS time_started, {_epoch("time_done")} AS time_done,
                   state, reason, {_epoch("time_recorded")} AS time_recorded
            FROM jobs {w.sql()} ORDER BY id DESC LIMIT %s OFFSET %s"""
        return await self._rows(sql, [*w.params, limit, offset])

    async def tasks(self, f: Filter = Filter(), *, errors_only: bool = False, limit: int = 100,
                    offset: int = 0) -> list[dict[str, Any]]:
        """Task run rows, the latest recorded first (only failed runs with ``errors_only``)."""
        limit = _int("limit", limit, 1, MAX_LIMIT)
        offset = _int("offset", offset, 0, 2**31)
        w = _where(f, time_column="time_done", host_column="host")
        if errors_only:
            w.add("state <> 'DON'")
        sql = f"""
            SELECT job_id, job_name, block, block_name, task, task_name, run, user_name, host, service,
                   capacity, command, frame_start, frame_end, {_epoch("time_started")} AS time_started,
                   {_epoch("time_done")} AS time_done, run_time, exit_code, signal, state, errors_count,
                   message, peak_memory_mb, folder, hosts
            FROM tasks {w.sql()} ORDER BY id DESC LIMIT %s OFFSET %s"""
        return await self._rows(sql, [*w.params, limit, offset])

    async def task_runs(self, job_id: int, block: int, task: int, *,
                        limit: int = 100) -> list[dict[str, Any]]:
        """One task's runs, the latest first (its page's runs table)."""
        limit = _int("limit", limit, 1, MAX_LIMIT)
        sql = f"""
            SELECT run, host, {_epoch("time_started")} AS time_started, {_epoch("time_done")} AS time_done,
                   run_time, exit_code, signal, state, message, peak_memory_mb
            FROM tasks WHERE job_id = %s AND block = %s AND task = %s ORDER BY run DESC, id DESC LIMIT %s"""
        return await self._rows(sql, [_int("job_id", job_id, 0, 2**62), _int("block", block, 0, 2**31),
                                      _int("task", task, 0, 2**31), limit])

    # --- graphs and summaries ----------------------------------------------------------

    async def tasks_per_interval(self, interval: str, f: Filter = Filter(), *, by: str = "service",
                                 depth: int | None = None) -> list[dict[str, Any]]:
        """Task runs ended per minute/hour/day/week/month, split by ``by`` (a group-by
        name): one row per (bucket, key) with runs, errors and render time."""
        interval = _choice("interval", interval, INTERVALS)
        key = _group_column(0, by, depth)
        w = _where(f, time_column="time_done", host_column="host")
        w.add("time_done IS NOT NULL")
        sql = f"""
            SELECT {_epoch("date_trunc(%s, time_done)")} AS bucket, {key} AS key, count(*) AS runs,
                   count(*) FILTER (WHERE state <> 'DON') AS errors,
                   coalesce(sum(run_time), 0)::float8 AS run_time
            FROM tasks {w.sql()}
            GROUP BY 1, 2 ORDER BY 1, 2"""
        return await self._rows(sql, [interval, *w.params])

    async def run_time(self, group_by: str, f: Filter = Filter(), *, limit: int = 100,
                       depth: int | None = None) -> list[dict[str, Any]]:
        """Run time of the runs that ended done, per group: average, median, 90th
        percentile, shortest and longest."""
        key = _group_column(0, group_by, depth)
        limit = _int("limit", limit, 1, MAX_LIMIT)
        w = _where(f, time_column="time_done", host_column="host")
        w.add("state = 'DON'")
        sql = f"""
            SELECT {key} AS key, count(*) AS runs, avg(run_time)::float8 AS average,
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY run_time)::float8 AS median,
                   percentile_cont(0.9) WITHIN GROUP (ORDER BY run_time)::float8 AS p90,
                   min(run_time)::float8 AS shortest, max(run_time)::float8 AS longest
            FROM tasks {w.sql()}
            GROUP BY 1 ORDER BY average DESC NULLS LAST, 1 LIMIT %s"""
        return await self._rows(sql, [*w.params, limit])

    async def errors(self, group_by: str, f: Filter = Filter(), *, limit: int = 100,
                     depth: int | None = None) -> list[dict[str, Any]]:
        """Failed runs per group: how many, out of how many, and the latest message."""
        key = _group_column(0, group_by, depth)
        limit = _int("limit", limit, 1, MAX_LIMIT)
        w = _where(f, time_column="time_done", host_column="host")
        sql = f"""
            SELECT {key} AS key, count(*) FILTER (WHERE state <> 'DON') AS errors, count(*) AS runs,
                   (count(*) FILTER (WHERE state <> 'DON'))::float8 / count(*) AS error_ratio,
                   (array_agg(message ORDER BY time_done DESC) FILTER (WHERE state <> 'DON'))[1]
                       AS last_message,
                   {_epoch("max(time_done) FILTER (WHERE state <> 'DON')")} AS last_error
            FROM tasks {w.sql()}
            GROUP BY 1 HAVING count(*) FILTER (WHERE state <> 'DON') > 0
            ORDER BY errors DESC, 1 LIMIT %s"""
        return await self._rows(sql, [*w.params, limit])

    async def render_utilisation(self, f: Filter = Filter(), *, limit: int = 1000) -> list[dict[str, Any]]:
        """Per render: the time it ran tasks within the window (overlaps clipped), as a
        fraction of the window, and capacity-seconds used. The window defaults to the
        last 24 hours."""
        f = f.checked()
        until = f.until if f.until is not None else time.time()
        since = f.since if f.since is not None else until - 86400.0
        if until <= since:
            raise QueryError(f"until ({until}) must be after since ({since})")
        limit = _int("limit", limit, 1, MAX_LIMIT)
        window = attrs.evolve(f, since=None, until=None)
        w = _where(window, time_column="time_done", host_column="host")
        w.add("time_done > to_timestamp(%s)", since)
        w.add("time_started < to_timestamp(%s)", until)
        busy = ("greatest(0, extract(epoch from least(time_done, to_timestamp(%s)) - "
                "greatest(time_started, to_timestamp(%s))))::float8")
        sql = f"""
            SELECT host, count(*) AS runs, sum({busy}) AS busy,
                   sum({busy} * capacity) AS capacity_time,
                   sum({busy}) / %s AS utilisation
            FROM tasks {w.sql()}
            GROUP BY host ORDER BY utilisation DESC, host LIMIT %s"""
        params = [until, since, until, since, until, since, until - since]
        return await self._rows(sql, [*params, *w.params, limit])

    # --- logs ----------------------------------------------------------------------------

    async def logs(self, f: Filter = Filter(), *, types: tuple[str, ...] | list[str] = (),
                   subject: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Farm events, newest first. ``f.user``, ``f.host`` and ``subject`` match the
        event's subject (the user of a job event, the render of a render event); service
        and folder do not apply to events and are ignored."""
        limit = _int("limit", limit, 1, MAX_LIMIT)
        offset = _int("offset", offset, 0, 2**31)
        if isinstance(types, str) or not isinstance(types, tuple | list):
            raise QueryError(f"types: expected a list of event types, got {types!r}")
        for item in types:
            _choice("types", item, LOG_TYPES)
        subject = _text("subject", subject)
        f = f.checked()
        w = _where(attrs.evolve(f, user=None, job_id=None), time_column="time", host_column=None,
                   service=False, folder=False)
        for who in (f.user, f.host, subject):
            if who is not None:
                w.add("subject = %s", who)
        if f.job_id is not None:
            w.add("object_id = %s", f.job_id)
        if types:
            w.add("type = ANY(%s)", list(types))
        sql = f"""
            SELECT {_epoch("time")} AS time, subject, type, object, object_id, info
            FROM logs {w.sql()} ORDER BY logs.time DESC, id DESC LIMIT %s OFFSET %s"""
        return await self._rows(sql, [*w.params, limit, offset])
