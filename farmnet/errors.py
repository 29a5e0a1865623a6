"""Errors a caller can act on.

The farm model raises these; the AMP layer declares each one on the commands that can
raise it, so a tool receives the same class with the same message, never a bare
`RemoteAmpError`.
"""

from __future__ import annotations

# An error's text travels in one AMP value (at most 65,535 bytes): keep it well below.
MAX_MESSAGE = 16_000


class FarmError(Exception):
    """Base of every declared farmnet error."""

    def __init__(self, message: str = "") -> None:
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 20] + " … (message cut)"
        super().__init__(message)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class IncompatibleProtocol(FarmError):
    """The peer speaks a protocol version this side cannot serve."""


class NotAuthenticated(FarmError):
    """The command needs a Hello (and, for renders, a RegisterRender) first."""


class NotRegistered(FarmError):
    """The render id is unknown (the server restarted or dropped it): register again."""


class UnknownJob(FarmError):
    """No job with that id."""


class UnknownTask(FarmError):
    """No such block or task in the job."""


class UnknownRender(FarmError):
    """No render with that id or name."""


class PermissionDenied(FarmError):
    """The user is neither the owner of what they try to change nor an admin."""


class JobSpecError(FarmError):
    """A submitted job description is invalid; the message names every bad key."""


class InvalidAction(FarmError):
    """The action is unknown, or not possible in the object's current state."""
