"""One action API: ``{item, action, filters, values}`` (from the brender seed).

Every read and every mutation a tool, the web site or an admin script can ask for goes
through `act`, over AMP (`Act`) and over HTTP JSON alike, so there is one path and one
set of permission checks (the farm's). Items: jobs, blocks, tasks, renders, users.
Actions: list, show, update, delete, and each item's own actions.

Filters name what to act on: jobs ``{"id": 3}`` or ``{"id": [3, 4]}`` (list: any of
``id``, ``user``, ``state``, ``name``, each a value or a list; renders: ``id``, ``name``,
``state``; users: ``name``; an unknown filter is refused); blocks ``{"job_id": 3,
"block": 0}``; tasks ``{"job_id": 3, "block": 0, "task": [1, 2]}`` (list: ``offset``/
``limit``); renders and users ``{"name": "r1"}`` or a list of names; pools and branches
``{"path": "/gpu"}`` (create, update, delete, move; a pool's ``reassign`` puts renders back
by the patterns).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any

from farmnet import errors
from farmnet.convert import ConversionError, structure, unstructure
from farmnet.model.farm import Farm
from farmnet.model.policy import JOB_ACTIONS, RENDER_ACTIONS, TASK_ACTIONS
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
    "jobs": {"id": "id", "user": "user_name", "state": "state", "name": "name"},
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


def _jobs(farm: Farm, user: str, action: str, f: Mapping[str, Any], values: Any) -> Any:
    if action == "list":
        user_filter = f.get("user")
        return _listed("jobs", farm.list_jobs(user_filter if isinstance(user_filter, str) else None), f)
    if action == "show":
        return farm.show_job(_one(f, "id", int))
    if action == "explain":
        return farm.explain(_one(f, "id", int))
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
    raise errors.InvalidAction(f"blocks: unknown action {action!r}")


def _tasks(farm: Farm, user: str, action: str, f: Mapping[str, Any], values: Any) -> Any:
    job_id = _one(f, "job_id", int)
    if action == "list":
        _check_keys(f, ("job_id", "block", "offset", "limit"), "tasks list")
        block = _structured(f.get("block"), int | None, "filters.block")
        offset = _structured(f.get("offset", 0), int, "filters.offset")
        limit = _structured(f.get("limit", MAX_PAGE), int, "filters.limit")
        tasks, total = farm.list_tasks(job_id, block, max(0, offset), max(0, min(limit, MAX_PAGE)))
        return {"tasks": tasks, "total": total}
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


def act(farm: Farm, user: str, item: str, action: str, filters: Any = None, values: Any = None) -> Any:
    """Do one action as ``user``; returns JSON-able data (records through the one converter:
    this is the edge of both the AMP ``Act`` and the web's JSON API). Raises declared farm
    errors."""
    handler = _HANDLERS.get(item)
    if handler is None:
        raise errors.InvalidAction(f"unknown item {item!r}; one of {', '.join(ITEMS)}")
    if filters is None:
        filters = {}
    if not isinstance(filters, Mapping):
        raise errors.InvalidAction("filters: expected a mapping")
    return unstructure(handler(farm, user, action, filters, values))
