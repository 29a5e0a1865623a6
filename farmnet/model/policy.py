"""Who may do what, the farm's settings, and checks of what users ask to change.

Every job mutation goes through `check_may_change` (its owner or an admin); farm-wide
changes through `_check_admin`. Input is checked before anything changes, so an action
on many items is all or nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from farmnet import errors
from farmnet.config import SchedulingConfig
from farmnet.model.data import Job
from farmnet.model.masks import check_mask
from farmnet.model.spec import BLOCK_SETTABLE, JOB_SETTABLE, MAX_PRIORITY, validate_changes

JOB_ACTIONS = ("pause", "resume", "stop", "delete", "restart", "restart_errors", "restart_running",
               "skip", "set_priority", "set", "set_block")
TASK_ACTIONS = ("restart", "skip")
RENDER_ACTIONS = ("nimby", "NIMBY", "free", "pause", "resume", "eject", "exit", "heal", "set", "sleep",
                  "wake")
USER_ACTIONS = ("set", "delete")
USER_SETTABLE = {
    "priority": int, "max_running_tasks": int, "max_running_tasks_per_host": int,
    "hosts_mask": str, "hosts_mask_exclude": str, "errors_retries": int, "errors_avoid_host": int,
    "errors_task_same_host": int, "errors_forgive_time": int, "jobs_solving": str,
    "custom_data": dict,
}
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

    def _valid_user_changes(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, Mapping) or not value:
            raise errors.InvalidAction("set needs a mapping of user parameters to values")
        problems, changes = [], {}
        for key, val in value.items():
            kind = USER_SETTABLE.get(key)
            if kind is None:
                problems.append(f"user.{key}: cannot be set; one of {', '.join(sorted(USER_SETTABLE))}")
            elif kind is int and (isinstance(val, bool) or not isinstance(val, int)):
                problems.append(f"user.{key}: expected an integer, got {val!r}")
            elif kind is str and not isinstance(val, str):
                problems.append(f"user.{key}: expected a string, got {val!r}")
            elif kind is dict and not isinstance(val, Mapping):
                problems.append(f"user.{key}: expected a mapping, got {val!r}")
            elif key.startswith("hosts_mask"):
                try:
                    changes[key] = check_mask(val)
                except ValueError as e:
                    problems.append(f"user.{key}: {e}")
            elif key == "jobs_solving" and val not in ("order", "need"):
                problems.append("user.jobs_solving: 'order' or 'need'")
            elif key == "priority" and not 0 <= val <= MAX_PRIORITY:
                problems.append(f"user.priority: must be 0..{MAX_PRIORITY}")
            else:
                changes[key] = val
        if problems:
            raise errors.InvalidAction("; ".join(problems))
        return changes

