"""JSON that comes from outside (request bodies, answers of sources): nesting is
bounded and text must be valid Unicode, so hostile input gets a clear 4xx (or a
clear source error) instead of a RecursionError or a database encoding error."""
from __future__ import annotations

import json
import re

from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest

# No document CDS reads nests deeper than a handful of levels.
MAX_DEPTH = 32
# A lone half of a UTF-16 surrogate pair ("\ud800"): JSON allows the escape, but it is
# no character, cannot be stored (PostgreSQL, UTF-8) and means nothing to CDS.
_SURROGATE = re.compile("[\ud800-\udfff]")


class UnsafeJSON(ValueError):
    """JSON that parses but CDS refuses to use; the message says why."""


def check(value) -> None:
    """Raise UnsafeJSON if ``value`` nests deeper than MAX_DEPTH or holds a lone surrogate.
    Iterative, so checking never recurses however deep the value."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise UnsafeJSON("it contains a lone surrogate escape (\\ud800-\\udfff), "
                                 "which is not a valid character")
        elif isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise UnsafeJSON(f"it nests deeper than {MAX_DEPTH} levels")
            if isinstance(item, dict):
                stack.extend((k, depth + 1) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def has_surrogate(text: str) -> bool:
    return bool(_SURROGATE.search(text))


def loads(data, **kwargs):
    """``json.loads`` for untrusted input: UnsafeJSON (a ValueError) for what CDS refuses."""
    try:
        value = json.loads(data, **kwargs)
    except RecursionError:
        raise UnsafeJSON(f"it nests deeper than {MAX_DEPTH} levels") from None
    check(value)
    return value


class RequestJSONProvider(DefaultJSONProvider):
    """Flask's JSON, with request bodies parsed by ``loads`` above. A refused body is a
    400 naming the reason, on every route (the API, the client protocol, the pages)."""

    def loads(self, s, **kwargs):
        try:
            return loads(s, **kwargs)
        except UnsafeJSON as exc:
            # Not a ValueError here: request.get_json(silent=True) must not swallow it.
            raise BadRequest(f"The JSON body is not acceptable: {exc}.") from None
