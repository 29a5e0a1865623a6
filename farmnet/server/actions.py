"""One action API: ``{item, action, filters, values}`` (from the brender seed).

Every read and every mutation a tool, the web site or an admin script can ask for goes
through `act`, over AMP (`Act`) and over HTTP JSON alike, so there is one path and one
set of permission checks (the farm's). Items: jobs, blocks, tasks, renders, users.
Actions: list, show, update, delete, and each item's own actions (jobs ``append_blocks``
with a list of blocks as af.py writes them; blocks ``append_tasks`` with a list of tasks).

Filters name what to act on: jobs ``{"id": 3}`` or ``{"id": [3, 4]}`` (list: any of
``id``, ``user``, ``state``, ``name``, ``project``, ``department``, each a value or a
list, ``q`` a part of the name, ``sort`` a column (``-created``: descending), ``offset``,
``limit``; renders: ``id``, ``name``, ``state``; users: ``name``; an unknown filter is
refused); blocks ``{"job_id": 3, "block": 0}``; tasks ``{"job_id": 3, "block": 0,
"task": [1, 2]}`` (list: ``state``, ``host``, ``q``, ``sort``, ``offset``/``limit``);
renders and users ``{"name": "r1"}`` or a list of names. ``jobs create`` submits
``values``: a job description (a mapping, or its JSON or YAML text), as ``farmnet submit``.
pools and branches ``{"path": "/gpu"}`` (create, update, delete, move; a pool's
``reassign`` puts renders back by the patterns).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from farmnet import errors
from farmnet.convert import ConversionError, structure, unstructure
from farmnet.messages import TaskRecord
from farmnet.model.farm import Farm
from farmnet.model.listing import FACETS, JobQuery
from farmnet.model.policy import JOB_ACTIONS, RENDER_ACTIONS, TASK_ACTIONS
from farmnet.model.spec import parse_job
from farmnet.model.views import render_record, task_record, user_record

ITEMS = ("jobs", "blocks", "tasks", "renders", "users", "pools", "branches")
#: Actions that change nothing.
READ_ACTIONS = frozenset({"list", "show", "explain"})
MAX_PAGE = 10_000


def _structured(value: Any, cls: Any, path: str) -> Any:
    """``value`` as ``cls`` by the one converter; InvalidAction naming what is wrong where."""
    try:
        return structure(value, cls, path)
    except ConversionError as e:
        raise errors.InvalidAction("; ".join(e.problems)) from None


def _list_of(filters: Mapping[str, Any], key: str, kind: type) -> list[Any]:
    """One value of ``kind`` or a non-empty list of them."""
    value = filters.get(key)
    if not isinstance(value, list):
        return [_structured(value, kind, f"filters.{key}")]
    if not value:
        raise errors.InvalidAction(f"filters.{key}: expected a non-empty list")
    return _structured(value, list[kind], f"filters.{key}")


#: What a list can be narrowed by: filter key → the listed record's field. A filter's value is
#: one value or a list of them; records matching any of them are kept.
_LIST_FILTERS: Mapping[str, Mapping[str, str]] = {
    "renders": {"id": "id", "name": "name", "state": "state"},
    "users": {"name": "name"},
    "pools": {"path": "path", "parent": "parent"},
    "branches": {"path": "path", "parent": "parent"},
}


def _check_keys(filters: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    """An unknown filter is an error, never silently ignored (it would act on everything)."""
    for key in filters:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise errors.InvalidAction(f"filters.{key}: unknown for {where}{hint}; known: {', '.join(known)}")


def _listed(item: str, rows: list[Any], filters: Mapping[str, Any]) -> list[Any]:
    fields = _LIST_FILTERS[item]
    _check_keys(filters, tuple(fields), f"{item} list")
    for key, value in filters.items():
        wanted = value if isinstance(value, list) else [value]
        field = fields[key]
        rows = [row for row in rows if getattr(row, field) in wanted]
    return rows


def _one(filters: Mapping[str, Any], key: str, kind: type) -> Any:
    return _structured(filters.get(key), kind, f"filters.{key}")


#: What ``jobs list`` takes besides the FACETS: a part of the name, the order, a page.
JOB_LIST_KEYS = (*FACETS, "q", "sort", "offset", "limit")


def job_query(f: Mapping[str, Any], *, limit: int | None = None) -> JobQuery:
    """The JobQuery of ``jobs list`` filters: FACETS (a value or a list), ``q``, ``sort``
    (a column, ``-column`` for descending; default ``id``), ``offset``, ``limit``."""
    _check_keys(f, JOB_LIST_KEYS, "jobs list")
    facets = {name: frozenset(_list_of(f, name, int if name == "id" else str))
              for name in FACETS if name in f}
    sort = _structured(f.get("sort", "id"), str, "filters.sort")
    offset = _structured(f.get("offset", 0), int, "filters.offset")
    count = _structured(f.get("limit", limit if limit is not None else MAX_PAGE), int, "filters.limit")
    return JobQuery(facets, _structured(f.get("q", ""), str, "filters.q"), sort.lstrip("-"),
                    sort.startswith("-"), max(0, offset), max(0, min(count, MAX_PAGE)))


def _create(farm: Farm, user: str, values: Any, names_verified: bool) -> dict[str, Any]:
    """Submit a job: ``values`` is its description (as ``farmnet submit`` reads a file:
    a mapping, or JSON or YAML text); the same validation and warnings."""
    if isinstance(values, str):
        try:
            values = yaml.safe_load(values)  # JSON is YAML too
        except yaml.YAMLError as e:
            raise errors.JobSpecError(f"job: not JSON or YAML: {e}") from None
    spec, warnings = parse_job(values, farm.settings.max_tasks_per_job)
    job = farm.submit(spec, user, names_verified=names_verified)
    return {"job_id": job.id, "warnings": warnings}


def _jobs(farm: Farm, user: str, action: str, f: Mapping[str, Any], values: Any,
          names_verified: bool = True) -> Any:
    if action == "list":
        if not f:  # every job, as they are kept: no listing to make
            return farm.list_jobs()
        query = job_query(f, limit=len(farm.jobs))
        return [row.record for row in farm.query_jobs(query)[0]]
    if action == "create":
        if not user:
            raise errors.NotAuthenticated("jobs create: who submits? log in first")
        return _create(farm, user, values, names_verified)
    if action == "show":
        return farm.show_job(_one(f, "id", int))
    if action == "explain":
        return farm.explain(_one(f, "id", int))
    if action == "append_blocks":
        spec, warnings = parse_job({"name": "appended", "blocks": values}, farm.settings.max_tasks_per_job)
        return {"block_ids": farm.append_blocks(user, _one(f, "id", int), spec.blocks), "warnings": warnings}
    ids = _list_of(f, "id", int)
    if action == "update":
        return farm.job_action(user, ids, "set", values)
    if action in JOB_ACTIONS:
        return farm.job_action(user, ids, action, values)
    raise errors.InvalidAction(f"jobs: unknown action {action!r}")


def _blocks(farm: Farm, user: str, action: str, f: Mapping[str, Any], values: Any) -> Any:
    job_id = _one(f, "job_id", int)
    if action == "list":
        _check_keys(f, ("job_id",), "blocks list")
        return farm.show_job(job_id).blocks
    block = _one(f, "block", int)
    if action == "show":
        blocks = farm.show_job(job_id).blocks
        if not 0 <= block < len(blocks):
            raise errors.UnknownTask(f"job {job_id} has no block {block}")
        return blocks[block]
    if action == "update":
        if not isinstance(values, Mapping):
            raise errors.InvalidAction("values: expected a mapping of block parameters")
        return farm.job_action(user, [job_id], "set_block", {**values, "block": block})
    if action == "reset_error_hosts":
        return farm.job_action(user, [job_id], "reset_error_hosts", {"block": block})
    if action == "append_tasks":
        if not isinstance(values, list):
            raise errors.InvalidAction("values: expected a list of tasks ({name, command, environment})")
        spec, _ = parse_job({"name": "appended", "blocks": [{"name": "appended", "tasks": values}]},
                            farm.settings.max_tasks_per_job)
        return {"task_ids": farm.append_tasks(user, job_id, block, spec.blocks[0].tasks)}
    raise errors.InvalidAction(f"blocks: unknown action {action!r}")


TASK_LIST_KEYS = ("job_id", "block", "state", "host", "q", "sort", "offset", "limit")
#: Task columns ``tasks list`` sorts by.
TASK_SORTS: Mapping[str, Callable[[TaskRecord], Any]] = {
    "task": lambda t: (t.block, t.task),
    "name": lambda t: (t.name, t.block, t.task),
    "state": lambda t: (t.state, t.block, t.task),
    "progress": lambda t: (t.progress, t.block, t.task),
    "host": lambda t: (t.host, t.block, t.task),
    "errors": lambda t: (t.errors_count, t.block, t.task),
    "runs": lambda t: (t.starts_count, t.block, t.task),
    "started": lambda t: (t.time_started, t.block, t.task),
    "done": lambda t: (t.time_done, t.block, t.task),
}


def list_tasks_sorted(farm: Farm, job_id: int, block: int | None,
                      f: Mapping[str, Any]) -> list[TaskRecord]:
    """A job's tasks (or a block's) filtered by ``state``/``host`` (a value or a list) and
    ``q`` (a part of the name), in ``sort`` order (``-`` first: descending). One job's
    tasks only: bounded by max_tasks_per_job, never the farm's."""
    sort = _structured(f.get("sort", "task"), str, "filters.sort")
    key = TASK_SORTS.get(sort.lstrip("-"))
    if key is None:
        raise errors.InvalidAction(f"filters.sort: one of {', '.join(TASK_SORTS)}; got {sort!r}")
    states = set(_list_of(f, "state", str)) if "state" in f else None
    hosts = set(_list_of(f, "host", str)) if "host" in f else None
    text = _structured(f.get("q", ""), str, "filters.q").lower()
    tasks, _ = farm.list_tasks(job_id, block, 0, farm.settings.max_tasks_per_job)
    tasks = [t for t in tasks if (states is None or t.state in states) and (hosts is None or t.host in hosts)
             and (not text or text in t.name.lower())]
    tasks.sort(key=key, reverse=sort.startswith("-"))
    return tasks


def _tasks(farm: Farm, user: str, action: str, f: Mapping[str, Any], values: Any) -> Any:
    job_id = _one(f, "job_id", int)
    if action == "list":
        _check_keys(f, TASK_LIST_KEYS, "tasks list")
        block = _structured(f.get("block"), int | None, "filters.block")
        offset = max(0, _structured(f.get("offset", 0), int, "filters.offset"))
        limit = max(0, min(_structured(f.get("limit", MAX_PAGE), int, "filters.limit"), MAX_PAGE))
        narrowed = {k: f[k] for k in ("state", "host", "q", "sort") if k in f}
        if not narrowed:
            tasks, total = farm.list_tasks(job_id, block, offset, limit)
            return {"tasks": tasks, "total": total}
        tasks = list_tasks_sorted(farm, job_id, block, narrowed)
        return {"tasks": tasks[offset:offset + limit], "total": len(tasks)}
    block = _one(f, "block", int)
    if action == "show":
        return task_record(farm.task((job_id, block, _one(f, "task", int))))
    if action in TASK_ACTIONS:
        return farm.task_action(user, job_id, block, _list_of(f, "task", int), action)
    raise errors.InvalidAction(f"tasks: unknown action {action!r}")


def _renders(farm: Farm, user: str, action: str, f: Mapping[str, Any], values: Any) -> Any:
    if action == "list":
        return _listed("renders", farm.list_renders(), f)
    if action == "show":
        return render_record(farm.render_named(_one(f, "name", str)))
    names = _list_of(f, "name", str)
    if action == "update":
        return farm.render_action(user, names, "set", values)
    if action == "delete":
        return farm.delete_renders(user, names)
    if action in RENDER_ACTIONS:
        return farm.render_action(user, names, action, values)
    raise errors.InvalidAction(f"renders: unknown action {action!r}")


def _users(farm: Farm, user: str, action: str, f: Mapping[str, Any], values: Any) -> Any:
    if action == "list":
        return _listed("users", farm.list_users(), f)
    if action == "show":
        return user_record(farm.user(_one(f, "name", str)))
    if action == "update":
        return farm.user_action(user, _list_of(f, "name", str), "set", values)
    if action == "delete":
        return farm.user_action(user, _list_of(f, "name", str), "delete")
    raise errors.InvalidAction(f"users: unknown action {action!r}")


def _pools(farm: Farm, user: str, action: str, f: Mapping[str, Any], values: Any) -> Any:
    if action == "list":
        return _listed("pools", farm.list_pools(), f)
    _check_keys(f, ("path",), "pools")
    path = _one(f, "path", str)
    if action == "show":
        return farm.trees.pool_record(farm.trees.pool(path))
    actions = {"create": "create", "update": "set", "delete": "delete", "move": "move",
               "reassign": "reassign"}
    if action not in actions:
        raise errors.InvalidAction(
            f"pools: unknown action {action!r}; one of list, show, {', '.join(actions)}")
    return farm.pool_action(user, path, actions[action], values)


def _branches(farm: Farm, user: str, action: str, f: Mapping[str, Any], values: Any) -> Any:
    if action == "list":
        return _listed("branches", farm.list_branches(), f)
    _check_keys(f, ("path",), "branches")
    path = _one(f, "path", str)
    if action == "show":
        return farm.trees.branch_record(farm.trees.branch(path))
    actions = {"create": "create", "update": "set", "delete": "delete", "move": "move"}
    if action not in actions:
        raise errors.InvalidAction(
            f"branches: unknown action {action!r}; one of list, show, {', '.join(actions)}")
    return farm.branch_action(user, path, actions[action], values)


_HANDLERS: Mapping[str, Callable[[Farm, str, str, Mapping[str, Any], Any], Any]] = {
    "jobs": _jobs, "blocks": _blocks, "tasks": _tasks, "renders": _renders, "users": _users,
    "pools": _pools, "branches": _branches}


def act(farm: Farm, user: str, item: str, action: str, filters: Any = None, values: Any = None, *,
        names_verified: bool = True) -> Any:
    """Do one action as ``user``; returns JSON-able data (records through the one converter:
    this is the edge of both the AMP ``Act`` and the web's JSON API). Raises declared farm
    errors. ``names_verified``: the user proved their name (a password), so only admins
    may ``create`` jobs for others (`Lifecycle.submit`)."""
    handler = _HANDLERS.get(item)
    if handler is None:
        raise errors.InvalidAction(f"unknown item {item!r}; one of {', '.join(ITEMS)}")
    if filters is None:
        filters = {}
    if not isinstance(filters, Mapping):
        raise errors.InvalidAction("filters: expected a mapping")
    if item == "jobs":
        return unstructure(_jobs(farm, user, action, filters, values, names_verified))
    return unstructure(handler(farm, user, action, filters, values))
