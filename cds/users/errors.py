"""What the users services refuse with (the family of ``cds.errors``)."""
from __future__ import annotations

from cds import errors


class UserError(errors.Conflict):
    """A request about users cannot be carried out; the message says why."""


class NotFound(errors.NotFound, UserError):
    pass


class InvalidQuery(errors.Invalid, UserError):
    """A filter, sort, page or selection that cannot be read."""


class InvalidUser(errors.Invalid, UserError):
    """Field errors: {field: message}. Nothing was written."""

    def __init__(self, field_errors: dict[str, str]):
        super().__init__("; ".join(field_errors.values()), field_errors)
