"""The one family of errors services raise, and what each means on every surface.

A service raises one of these (or an area's subclass, e.g. ``JobNotFound``); it never
knows who asked. One renderer per surface turns it into an answer, registered once:
the console (a page, or a toast for an htmx fragment) in ``cds.web``, the JSON API
(``{"error", "message", "details"}``) in ``cds.api.blueprint``, the shell (one line on
stderr, exit code 1) in ``cds.cli``. So a given error has the same HTTP status on a
page and in the API, and the same message in the shell.
"""
from __future__ import annotations


class CdsError(Exception):
    """An action refused as asked; ``message`` is for the administrator, as is."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, errors: dict | None = None):
        super().__init__(message)
        self.message = message
        # Field name -> what is wrong with it (forms show them beside the field,
        # the API returns them as "details").
        self.errors = errors or {}


class Invalid(CdsError):
    """The input is not acceptable; nothing was changed."""
    status, code = 422, "invalid"


class NotFound(CdsError):
    status, code = 404, "not_found"


class Conflict(CdsError):
    """The request is understood but the current state does not allow it."""
    status, code = 409, "conflict"


class Forbidden(CdsError):
    status, code = 403, "forbidden"


class Gone(CdsError):
    status, code = 410, "gone"
