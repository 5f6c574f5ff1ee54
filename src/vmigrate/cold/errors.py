"""The errors of a cold move's steps (pure)."""

from __future__ import annotations

from vmigrate.errors import VmigrateError


class ColdMoveError(VmigrateError):
    """A step of a cold move failed; the job can be resumed or rolled back."""


class InvariantViolated(ColdMoveError):
    """What a step that cannot be undone relies on no longer holds (the VM runs again on the
    source, a copy runs elsewhere, a file is not the job's): the job stops there, with nothing
    more changed. The message says what was found, `fix` what to do."""
