"""Who may do what, the farm's settings, and checks of what users ask to change.

Every job mutation goes through `check_may_change` (its owner or an admin); farm-wide
changes through `_check_admin`. Input is checked before anything changes, so an action
on many items is all or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import attrs

from farmnet import errors
from farmnet.config import SchedulingConfig
from farmnet.convert import Check, ConversionError, in_range, one_of, structure
from farmnet.model.data import Job
from farmnet.model.masks import check_mask
from farmnet.model.spec import BLOCK_SETTABLE, JOB_SETTABLE, MAX_PRIORITY, validate_changes

JOB_ACTIONS = ("pause", "resume", "stop", "delete", "restart", "restart_errors", "restart_running",
               "reset_error_hosts", "skip", "set_priority", "set", "set_block", "restart_skipped",
               "restart_done")
TASK_ACTIONS = ("restart", "skip", "done", "restart_errors", "restart_running", "restart_skipped",
                "restart_done")
RENDER_ACTIONS = ("nimby", "NIMBY", "free", "pause", "resume", "eject", "exit", "heal", "set", "sleep",
                  "wake", "reset_error_hosts", "eject_others")
USER_ACTIONS = ("set", "delete")


def _mask_problem(value: Any) -> str | None:
    try:
        check_mask(value)
    except ValueError as e:
        return str(e)
    return None


#: A string that must be a mask (an RE2 regular expression, as the scheduler matches them).
MASK = Check(_mask_problem)


@attrs.frozen
class UserChanges:
    """What an admin may set on a user (``set``); None: not given."""

    priority: Annotated[int, in_range(0, MAX_PRIORITY)] | None = None
    max_running_tasks: int | None = None
    max_running_tasks_per_host: int | None = None
    hosts_mask: Annotated[str, MASK] | None = None
    hosts_mask_exclude: Annotated[str, MASK] | None = None
    errors_retries: int | None = None
    errors_avoid_host: int | None = None
    errors_task_same_host: int | None = None
    errors_forgive_time: int | None = None
    jobs_solving: Annotated[str, one_of("order", "need")] | None = None
    custom_data: dict[str, Any] | None = None


@attrs.frozen
class RenderChanges:
    """What an admin may set on a render (``set``); None: not given."""

    capacity: Annotated[int, in_range(0)] | None = None
    max_tasks: Annotated[int, in_range(0)] | None = None


USER_SETTABLE = frozenset(a.name for a in attrs.fields(UserChanges))


def changes_of(value: Any, cls: type, what: str) -> dict[str, Any]:
    """The keys given in ``value`` (a mapping), structured as ``cls`` by the one converter;
    InvalidAction naming every bad key (path, what was expected, did-you-mean)."""
    if not isinstance(value, Mapping) or not value:
        raise errors.InvalidAction(f"{what}: expected a mapping of parameters to values, got {value!r}")
    try:
        changes = structure(value, cls, what)
    except ConversionError as e:
        raise errors.InvalidAction("; ".join(e.problems)) from None
    return {key: getattr(changes, key) for key in value}
ERROR_SETTINGS = ("errors_retries", "errors_avoid_host", "errors_task_same_host", "errors_forgive_time")


class Policy:
    """Permissions and input checks; mixed into the farm."""

    settings: SchedulingConfig

    def is_admin(self, user: str) -> bool:
        return user in self.settings.admins

    def check_may_change(self, user: str, job: Job) -> None:
        """The one permission check for every job mutation: its owner or an admin."""
        if user != job.user_name and not self.is_admin(user):
            raise errors.PermissionDenied(
                f"user {user!r} may not change job {job.id} of user {job.user_name!r}")

    def check_may_read_output(self, user: str | None, job: Job, readers: str) -> None:
        """Task outputs may hold secrets: ``readers`` is ``"owner"`` (the job's user and
        admins), ``"users"`` (anyone logged in) or ``"public"``; ``user`` None is an
        anonymous web reader."""
        if readers == "public":
            return
        if user is None:
            raise errors.NotAuthenticated("log in to read task outputs")
        if readers != "users" and user != job.user_name and not self.is_admin(user):
            raise errors.PermissionDenied(
                f"user {user!r} may not read the output of job {job.id} of user {job.user_name!r}: "
                "its owner and admins only")

    def _check_admin(self, user: str, what: str) -> None:
        if not self.is_admin(user):
            raise errors.PermissionDenied(f"user {user!r} may not {what}: admins only")

    def _valid_job_changes(self, value: Any) -> dict[str, Any]:
        try:
            changes = validate_changes(value, JOB_SETTABLE, "job")
        except errors.JobSpecError as e:
            raise errors.InvalidAction(e.message) from None
        if not 0 <= changes.get("priority", 0) <= MAX_PRIORITY:
            raise errors.InvalidAction(f"job.priority: must be 0..{MAX_PRIORITY}")
        return changes

    def _valid_block_changes(self, jobs: list[Job], value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping) or not isinstance(value.get("block"), int):
            raise errors.InvalidAction('set_block needs {"block": N, parameter: value, ...}')
        number = value["block"]
        for job in jobs:
            if not 0 <= number < len(job.blocks):
                raise errors.UnknownTask(f"job {job.id} has no block {number}")
        try:
            changes = validate_changes({k: v for k, v in value.items() if k != "block"}, BLOCK_SETTABLE,
                                       "block")
        except errors.JobSpecError as e:
            raise errors.InvalidAction(e.message) from None
        return {"block": number, **changes}

    def _valid_block_choice(self, jobs: list[Job], value: Any) -> dict[str, int]:
        """``{"block": N}`` naming a block every one of ``jobs`` has."""
        if not isinstance(value, Mapping) or set(value) != {"block"} or not isinstance(value["block"], int) \
                or isinstance(value["block"], bool):
            raise errors.InvalidAction('expected no value, or {"block": N}')
        for job in jobs:
            if not 0 <= value["block"] < len(job.blocks):
                raise errors.UnknownTask(f"job {job.id} has no block {value['block']}")
        return {"block": value["block"]}

    def _valid_user_changes(self, value: Any) -> dict[str, Any]:
        return changes_of(value, UserChanges, "user")

    def _valid_render_changes(self, value: Any) -> dict[str, Any]:
        return changes_of(value, RenderChanges, "render")

