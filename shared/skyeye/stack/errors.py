"""Errors the supervisor raises; the CLI shows their message as is."""

from __future__ import annotations


class StackError(RuntimeError):
    """A component could not be started, or died while the stack was running."""


class StackLocked(StackError):
    """Another supervisor already owns the state folder."""


class StackNotRunning(StackError):
    """An endpoint is unset and no live embedded stack is recorded in the state folder."""
