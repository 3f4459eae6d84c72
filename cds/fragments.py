"""One endpoint serves the full page or only the fragment htmx asked for.

The fragment is the same partial template the full page includes, never a second copy.
A leaf module (Flask only), so every area's routes may use it.
"""
from __future__ import annotations

from flask import current_app, redirect, render_template, request


def wants_fragment(target: str | None = None) -> bool:
    """Whether htmx asked for a fragment: to replace the element with id ``target``, or any
    element when ``target`` is None. A history restore (back button) wants the page."""
    htmx = request.htmx
    return bool(htmx) and not htmx.history_restore_request \
        and (target is None or htmx.target == target)


def page_or_fragment(page: str, fragment: str, target: str | None, status: int = 200, /,
                     **context):
    """``fragment`` when htmx asked for it (see ``wants_fragment``), else the full ``page``;
    both get the same context (whose names may be any, ``page`` too)."""
    template = fragment if wants_fragment(target) else page
    return html_response(render_template(template, **context), status)


def go_to(url: str):
    """After a change that leaves the page: htmx follows ``HX-Redirect`` (a 204 swaps
    nothing on the way), a plain form a 302."""
    if request.htmx:
        resp = html_response("", 204)
        resp.headers["HX-Redirect"] = url
        return resp
    return redirect(url)


def html_response(body: str, status: int = 200):
    return current_app.response_class(body, status=status, mimetype="text/html")
