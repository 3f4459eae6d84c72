"""Which users an action is for: explicit ids, or "all matching this filter"."""
from __future__ import annotations

import bisect

from sqlalchemy import Select, false, func, select

from cds.extensions import db
from cds.models import User
from cds.users.errors import InvalidQuery
from cds.users.query import SELECTION_FORM_KEYS, UserFilter


def parse_selection(data) -> dict:
    """The one reading of "which users": {"ids": [...]} or {"filter": {...}}.

    From the Users tab (form fields or query string): the checked ``ids``, or
    ``all_matching=1`` with the filter fields beside it. From the API (and the
    CLI, which builds the same object): ``{"ids": [...]}`` or ``{"filter": {...}}``
    (``{}`` = every user), not both. Raises InvalidQuery naming the field."""
    if hasattr(data, "getlist"):
        if data.get("all_matching") in ("1", "true"):
            return {"filter": _filter_selection(data, SELECTION_FORM_KEYS)}
        return {"ids": _selected_ids(data, "user")}
    if not isinstance(data, dict):
        raise InvalidQuery("Say which users: \"ids\" or \"filter\".")
    if "ids" in data and "filter" in data:
        raise InvalidQuery("Give either \"ids\" or \"filter\", not both.",
                           {"ids": "not with filter", "filter": "not with ids"})
    if "filter" in data:
        if not isinstance(data["filter"], dict):
            raise InvalidQuery("\"filter\" must be an object.", {"filter": "object expected"})
        return {"filter": _filter_selection(data["filter"], ())}
    if "ids" in data:
        ids = data["ids"]
        if not isinstance(ids, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
            raise InvalidQuery("\"ids\" must be a non-empty list of user ids.",
                               {"ids": "expected a non-empty list of integers"})
        return {"ids": _selected_ids(data, "user")}
    raise InvalidQuery("Say which users: \"ids\" or \"filter\" ({} for all users).",
                       {"ids": "required (or filter)"})


def _filter_selection(data, other_keys: tuple[str, ...]) -> dict:
    # Strict: an unknown key is refused, never ignored (a typo must not select everyone).
    try:
        return UserFilter.from_mapping(data, other_keys=other_keys).to_dict()
    except InvalidQuery as exc:
        raise InvalidQuery(str(exc), {"filter": str(exc)}) from None


def _selected_ids(data, noun: str) -> list[int]:
    try:
        return parse_ids(data, noun)
    except ValueError as exc:
        raise InvalidQuery(str(exc), {"ids": str(exc)}) from None


def parse_ids(data, noun: str) -> list[int]:
    """The "ids" of a form or JSON object: sorted, unique, each a valid row id.
    Raises ValueError with the message for the administrator."""
    raw = data.getlist("ids") if hasattr(data, "getlist") else data.get("ids", [])
    ids = []
    for value in raw or []:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a {noun} id.") from None
        if not 1 <= number <= 2**31 - 1:
            raise ValueError(f"{value!r} is not a {noun} id.")
        ids.append(number)
    if not ids:
        raise ValueError(f"No {noun}s are selected.")
    return sorted(set(ids))


def selection_query(selection: dict) -> Select:
    query = select(User)
    if "ids" in selection:
        ids = selection["ids"]
        return query.where(User.id.in_(ids)) if ids else query.where(false())
    return UserFilter.from_mapping(selection.get("filter", {})).apply(query)


def next_users(selection: dict, after: int, limit: int) -> list[User]:
    """The selection's next ``limit`` users with an id above ``after``, in id order (a
    job's next batch). A selection of ids asks only for its next ``limit`` ids: an IN
    list of every id, built again for each batch, made a batch cost as much as the
    whole selection."""
    if "ids" not in selection:
        return list(db.session.scalars(selection_query(selection).where(User.id > after)
                                       .order_by(User.id).limit(limit)))
    ids = sorted(selection["ids"])
    start = bisect.bisect_right(ids, after)
    while start < len(ids):
        chunk = ids[start:start + limit]
        users = list(db.session.scalars(select(User).where(User.id.in_(chunk)).order_by(User.id)))
        if users:
            return users
        start += limit  # all of these were deleted since
    return []


def count_selection(selection: dict) -> int:
    query = selection_query(selection).with_only_columns(func.count()).select_from(User)
    return db.session.scalar(query)


def describe_selection(selection: dict, total: int) -> str:
    """The job's title: one user is named (a list of "1 selected user" jobs says nothing)."""
    if total == 1:
        user = db.session.scalar(selection_query(selection).limit(1))
        if user is not None:
            return f"{user.display_name} ({user.login_id})"
    noun = "user" if total == 1 else "users"
    if "ids" in selection:
        return f"{total} selected {noun}"
    filt = selection.get("filter") or {}
    return f"all {total} {noun}" + (" matching the filter" if filt else "")
