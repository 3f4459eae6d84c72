"""Finding and changing users. The page, the API, the CLI and jobs share these functions."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from sqlalchemy import Select, and_, false, func, or_, select, update

from cds.extensions import db
from cds.models import (SOURCE_CONNECTION, SOURCE_CSV, SOURCE_MANUAL, ClientDevice, Connection,
                        Deployment, DeploymentProfile, User, utcnow)


class UserError(Exception):
    """A request about users cannot be carried out; the message says why."""


class NotFound(UserError):
    pass


class InvalidQuery(UserError):
    pass


PAGE_SIZES = (50, 100, 500)

# Sortable columns: URL name -> column. Every sort ends with the id, so it is stable.
SORTS = {
    "profile": DeploymentProfile.name,
    "first_name": User.first_name,
    "last_name": User.last_name,
    "number": User.number,
    "mbg_sip_username": User.mbg_sip_username,
    "mcs_account": User.mcs_account,
    "email": User.email,
    "deployed": User.deployed_at,
    "downloaded": User.downloaded_at,
    "login_id": User.login_id,
}

SEARCH_COLUMNS = (User.first_name, User.last_name, User.number, User.email, User.mbg_sip_username,
                  User.pbx_sip_username, User.mcs_account, User.login_id, User.pbx_number)

YES_NO = ("", "yes", "no")
FLAGS = ("force", "redeploy", "send_failed", "not_in_source")


@dataclass
class UserFilter:
    """What the Users tab, the API and the CLI filter on. Also the stored form of
    an "all matching" selection, so a job acts on the filter, not on ids."""
    search: str = ""
    profile: int | None = None
    source: str = ""  # "", manual, csv, or a connection id as "c<ID>"
    deployed: str = ""
    downloaded: str = ""
    force: bool = False
    redeploy: bool = False
    send_failed: bool = False
    not_in_source: bool = False

    @classmethod
    def from_mapping(cls, data) -> "UserFilter":
        """Parse request args or a JSON object; unknown values raise InvalidQuery."""
        f = cls()
        f.search = str(data.get("search", "") or data.get("q", "") or "").strip()[:200]
        profile = data.get("profile") or None
        if profile is not None:
            try:
                f.profile = int(profile)
            except (TypeError, ValueError):
                raise InvalidQuery("profile must be a profile id.") from None
        source = str(data.get("source", "") or "")
        if source and source not in (SOURCE_MANUAL, SOURCE_CSV) and not re.fullmatch(r"c\d+", source):
            raise InvalidQuery("source must be manual, csv or a connection (c<id>).")
        f.source = source
        for name in ("deployed", "downloaded"):
            value = str(data.get(name, "") or "")
            if value not in YES_NO:
                raise InvalidQuery(f"{name} must be yes or no.")
            setattr(f, name, value)
        for name in FLAGS:
            value = data.get(name, False)
            setattr(f, name, value in (True, 1, "1", "true", "yes", "on"))
        return f

    def to_dict(self) -> dict:
        """Only what is set: compact for URLs and stored selections."""
        out = {}
        for fl in fields(self):
            value = getattr(self, fl.name)
            if value not in ("", None, False):
                out[fl.name] = "1" if value is True else value
        return out

    def is_empty(self) -> bool:
        return not self.to_dict()

    def apply(self, query: Select) -> Select:
        if self.search:
            query = query.where(search_clause(self.search))
        if self.profile is not None:
            query = query.where(User.profile_id == self.profile)
        if self.source in (SOURCE_MANUAL, SOURCE_CSV):
            query = query.where(User.source == self.source)
        elif self.source:
            query = query.where(User.source == SOURCE_CONNECTION,
                                User.connection_id == int(self.source[1:]))
        if self.deployed:
            col = User.deployed_at
            query = query.where(col.is_not(None) if self.deployed == "yes" else col.is_(None))
        if self.downloaded:
            col = User.downloaded_at
            query = query.where(col.is_not(None) if self.downloaded == "yes" else col.is_(None))
        if self.force:
            query = query.where(User.force_config.is_(True))
        if self.redeploy:
            query = query.where(User.redeploy_required.is_(True))
        if self.send_failed:
            query = query.where(User.send_error.is_not(None))
        if self.not_in_source:
            query = query.where(User.not_in_source.is_(True))
        return query


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search_clause(text: str):
    """Every word must appear (case-insensitive, anywhere) in one of the searched fields."""
    clauses = []
    for word in text.split()[:8]:
        pattern = f"%{_escape_like(word.lower())}%"
        clauses.append(or_(*(func.lower(col).like(pattern, escape="\\") for col in SEARCH_COLUMNS)))
    return and_(*clauses)


@dataclass
class UserQuery:
    """A page of the Users table: a filter plus sort and pagination."""
    filter: UserFilter = field(default_factory=UserFilter)
    sort: str = "last_name"
    desc: bool = False
    page: int = 1
    per_page: int = 50

    @classmethod
    def from_mapping(cls, data, default_per_page: int = 50) -> "UserQuery":
        q = cls(filter=UserFilter.from_mapping(data))
        sort = str(data.get("sort", "") or "last_name")
        if sort.startswith("-"):
            q.desc, sort = True, sort[1:]
        if sort not in SORTS:
            raise InvalidQuery(f"Cannot sort by {sort!r}.")
        q.sort = sort
        try:
            q.page = max(1, int(data.get("page", 1) or 1))
            q.per_page = int(data.get("per_page", default_per_page) or default_per_page)
        except (TypeError, ValueError):
            raise InvalidQuery("page and per_page must be numbers.") from None
        if q.per_page not in PAGE_SIZES:
            raise InvalidQuery(f"per_page must be one of {', '.join(map(str, PAGE_SIZES))}.")
        return q

    def to_args(self, **changes) -> dict:
        args = self.filter.to_dict()
        sort = changes.pop("sort", ("-" if self.desc else "") + self.sort)
        if sort != "last_name":
            args["sort"] = sort
        page = changes.pop("page", self.page)
        if page != 1:
            args["page"] = page
        per_page = changes.pop("per_page", self.per_page)
        args["per_page"] = per_page
        args.update(changes)
        return {k: v for k, v in args.items() if v not in ("", None)}

    def sort_arg_for(self, column: str) -> str:
        """The sort a column header links to: toggles direction on the current column."""
        if column == self.sort and not self.desc:
            return "-" + column
        return column


@dataclass
class UserPage:
    users: list[User]
    total: int
    query: UserQuery

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.query.per_page))


def list_users(q: UserQuery) -> UserPage:
    base = q.filter.apply(select(User))
    total = db.session.scalar(q.filter.apply(select(func.count(User.id))))
    col = SORTS[q.sort]
    query = base
    if q.sort == "profile":
        query = query.join(DeploymentProfile, DeploymentProfile.id == User.profile_id)
    order = (col.desc(), User.id.desc()) if q.desc else (col.asc(), User.id.asc())
    page = min(q.page, max(1, -(-total // q.per_page))) if total else 1
    q.page = page
    query = query.order_by(*order).offset((page - 1) * q.per_page).limit(q.per_page)
    from sqlalchemy.orm import selectinload
    users = list(db.session.scalars(query.options(selectinload(User.profile),
                                                  selectinload(User.connection))))
    return UserPage(users, total, q)


# --- selections: explicit ids, or "all matching this filter" --------------------

def parse_selection(data) -> dict:
    """From a form or JSON: {"ids": [...]} or {"filter": {...}} (select all matching)."""
    if data.get("all_matching") in ("1", "true", True, 1):
        return {"filter": UserFilter.from_mapping(data).to_dict()}
    raw = data.getlist("ids") if hasattr(data, "getlist") else data.get("ids", [])
    ids = []
    for value in raw or []:
        try:
            ids.append(int(value))
        except (TypeError, ValueError):
            raise InvalidQuery(f"{value!r} is not a user id.") from None
    if not ids:
        raise InvalidQuery("No users are selected.")
    return {"ids": sorted(set(ids))}


def selection_query(selection: dict) -> Select:
    query = select(User)
    if "ids" in selection:
        ids = selection["ids"]
        return query.where(User.id.in_(ids)) if ids else query.where(false())
    return UserFilter.from_mapping(selection.get("filter", {})).apply(query)


def count_selection(selection: dict) -> int:
    query = selection_query(selection).with_only_columns(func.count(User.id))
    return db.session.scalar(query)


def describe_selection(selection: dict, total: int) -> str:
    noun = "user" if total == 1 else "users"
    if "ids" in selection:
        return f"{total} selected {noun}"
    filt = selection.get("filter") or {}
    return f"all {total} {noun}" + (" matching the filter" if filt else "")


# --- single users ------------------------------------------------------------------

def get_user(user_id: int) -> User:
    user = db.session.get(User, user_id)
    if user is None:
        raise NotFound(f"User {user_id} does not exist (it may have been deleted).")
    return user


def revoke_client_access(user: User, reason: str) -> tuple[int, int]:
    """Stop every device credential and unused link of a user. Returns (devices, links)."""
    from cds.redirect.service import withdraw_links

    now = utcnow()
    devices = db.session.execute(
        update(ClientDevice).where(ClientDevice.user_id == user.id, ClientDevice.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason)).rowcount
    open_links = list(db.session.scalars(select(Deployment.token_hash).where(
        Deployment.user_id == user.id, Deployment.used_at.is_(None),
        Deployment.revoked_at.is_(None), Deployment.superseded_at.is_(None))))
    db.session.execute(update(Deployment).where(
        Deployment.user_id == user.id, Deployment.used_at.is_(None), Deployment.revoked_at.is_(None),
        Deployment.superseded_at.is_(None)).values(revoked_at=now))
    withdraw_links(open_links)
    return devices, len(open_links)


def apply_login_id_change(user: User, new_login_id: str) -> bool:
    """The seed's ID change: the installed client stops working and must be redeployed.

    Returns True when the ID changed. The caller commits."""
    if new_login_id == user.login_id:
        return False
    user.login_id = new_login_id
    revoke_client_access(user, "id_change")
    user.redeploy_required = True
    user.force_config = False
    user.config_version += 1
    return True


def source_label(user: User) -> str:
    if user.source == SOURCE_CONNECTION:
        return user.connection.name if user.connection else "connection (deleted)"
    return {"manual": "Manual", "csv": "CSV"}.get(user.source, user.source)


def source_choices() -> list[tuple[str, str]]:
    rows = db.session.execute(select(Connection.id, Connection.name).order_by(Connection.name))
    return [("manual", "Manual"), ("csv", "CSV import")] + [(f"c{i}", n) for i, n in rows]


# --- field rules, shared by the user form, the CSV import and the API ---------------

USER_FIELD_LIMITS = {"login_id": 113, "first_name": 100, "last_name": 100, "number": 32,
                     "pbx_number": 32, "pbx_sip_username": 128, "mbg_sip_username": 128,
                     "mcs_account": 128, "email": 254}
USER_FIELD_LABELS = {"login_id": "Login ID", "first_name": "Firstname", "last_name": "Lastname",
                     "number": "Number", "pbx_number": "PBX Number",
                     "pbx_sip_username": "PBX SIP User name", "mbg_sip_username": "MBG SIP User name",
                     "mcs_account": "MiCollab Client Service Account", "email": "Email address"}
REQUIRED_USER_FIELDS = ("login_id", "last_name", "email")
_PHONE_RE = re.compile(r"[0-9+*#() .\-]*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def validate_user_fields(data: dict) -> dict[str, str]:
    """Check the non-secret fields of a user. Returns {field: message}; empty when valid.

    Only the fields present in ``data`` are checked, so a partial update can be
    validated; values are expected already stripped. Uniqueness of the login id
    needs the database: see ``login_id_taken``."""
    from email_validator import EmailNotValidError, validate_email

    errors: dict[str, str] = {}
    for name, value in data.items():
        if name not in USER_FIELD_LIMITS:
            continue
        label = USER_FIELD_LABELS[name]
        value = "" if value is None else str(value)
        if not value:
            if name in REQUIRED_USER_FIELDS:
                errors[name] = f"{label} is required."
            continue
        if len(value) > USER_FIELD_LIMITS[name]:
            errors[name] = f"{label} is longer than {USER_FIELD_LIMITS[name]} characters."
        elif _CONTROL_RE.search(value):
            errors[name] = f"{label} contains control characters."
        elif name == "login_id" and (len(value) < 2 or value != value.strip()):
            errors[name] = "Login ID must be 2 to 113 characters, without leading or trailing spaces."
        elif name in ("number", "pbx_number") and not _PHONE_RE.fullmatch(value):
            errors[name] = f"{label} may hold only digits, spaces and + * # ( ) . -"
        elif name == "email":
            try:
                validate_email(value, check_deliverability=False)
            except EmailNotValidError as exc:
                errors[name] = f"{label} is not a valid e-mail address ({exc})."
    return errors


def login_id_taken(login_id: str, exclude_user_id: int | None = None) -> bool:
    query = select(User.id).where(User.login_id == login_id)
    if exclude_user_id is not None:
        query = query.where(User.id != exclude_user_id)
    return db.session.scalar(query.limit(1)) is not None
