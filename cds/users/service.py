"""Finding and changing users. The page, the API, the CLI and jobs share these functions."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from sqlalchemy import (Select, and_, bindparam, case, false, func, literal_column, or_, select,
                        table, update)

from cds import errors
from cds.extensions import db
from cds.jobs.service import Outcome, action
from cds.models import (SOURCE_CONNECTION, SOURCE_CSV, SOURCE_LABELS, SOURCE_MANUAL, USER_SECRETS,
                        ClientDevice, Connection, Deployment, DeploymentProfile, User, login_key,
                        utcnow)


class UserError(errors.Conflict):
    """A request about users cannot be carried out; the message says why."""


class NotFound(errors.NotFound, UserError):
    pass


class InvalidQuery(errors.Invalid, UserError):
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
FILTER_KEYS = ("search", "q", "profile", "source", "deployed", "downloaded") + FLAGS
# What a Users-tab bulk form (and the Export link) carries besides the filter.
SELECTION_FORM_KEYS = ("csrf_token", "ids", "all_matching", "profile_id", "confirm", "run_at",
                       "sort", "page", "per_page")


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
    def from_mapping(cls, data, *, other_keys: tuple[str, ...] | None = None) -> "UserFilter":
        """Parse request args or a JSON object; unknown values raise InvalidQuery.

        With ``other_keys`` (what else the mapping may hold) an unknown key is refused
        too: a selection that acts on users must never widen to everyone because of a
        typo ({"deployd": "no"} would otherwise mean "all users")."""
        if other_keys is not None:
            unknown = sorted(str(k) for k in data.keys() if k not in FILTER_KEYS and k not in other_keys)
            if unknown:
                raise InvalidQuery(f"Unknown filter key{'s' if len(unknown) > 1 else ''} "
                                   f"{', '.join(repr(k) for k in unknown)}; the filter keys are "
                                   f"{', '.join(FILTER_KEYS)}.")
        f = cls()
        f.search = _CONTROL_RE.sub(" ", str(data.get("search", "") or data.get("q", "") or "")).strip()[:200]
        profile = data.get("profile") or None
        if profile is not None:
            try:
                f.profile = int(profile)
            except (TypeError, ValueError):
                raise InvalidQuery("profile must be a profile id.") from None
            if not 1 <= f.profile <= 2**31 - 1:
                raise InvalidQuery("profile must be a profile id.")
        source = str(data.get("source", "") or "")
        if source and source not in (SOURCE_MANUAL, SOURCE_CSV) and not re.fullmatch(r"c\d{1,9}", source):
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


def search_text():
    """The searched fields as one lower-cased text, separated by spaces.

    A search word never contains a space, so "the word is in this text" is exactly
    "the word is in one of the fields". On PostgreSQL this expression is the one
    the trigram index of migration 0002_users covers (keep the two in step)."""
    sep = literal_column("' '")
    expr = SEARCH_COLUMNS[0]
    for col in SEARCH_COLUMNS[1:]:
        expr = expr.op("||")(sep).op("||")(col)
    return func.lower(expr)


# The trigram index answers words of at least this many characters.
TRIGRAM = 3


def _word_clause(word: str, dialect: str):
    if dialect == "sqlite" and len(word) >= TRIGRAM:
        # FTS5 trigram phrase = the word's trigrams at consecutive positions of one
        # column, i.e. exactly "the column contains the word", case-folded.
        phrase = '"' + word.replace('"', '""') + '"'
        hits = select(literal_column("rowid")).select_from(table("user_search")).where(
            literal_column("user_search").op("MATCH")(bindparam("fts", phrase, unique=True)))
        return User.id.in_(hits)
    pattern = f"%{_escape_like(word.lower())}%"
    if dialect == "sqlite":
        # SQLite's LIKE already ignores (ASCII) case; one LIKE per column is cheaper
        # than building the joined text for every row.
        return or_(*(col.like(pattern, escape="\\") for col in SEARCH_COLUMNS))
    return search_text().like(pattern, escape="\\")


def search_clause(text: str):
    """Every word must appear (case-insensitive, anywhere) in one of the searched fields.

    SQLite answers words of 3+ characters from the FTS5 trigram table of migration
    0002_users, PostgreSQL from its pg_trgm index; shorter words scan."""
    dialect = db.session.get_bind().dialect.name
    return and_(*(_word_clause(w, dialect) for w in text.split()[:8]))


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
        from cds.http import MAX_PAGE
        if q.page > MAX_PAGE:
            raise InvalidQuery(f"Page numbers go from 1 to {MAX_PAGE:,}.")
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


def _sort_key(q: UserQuery):
    if q.sort == "profile":
        # Few profiles: rank their ids by name here instead of joining every row.
        names = db.session.execute(select(DeploymentProfile.id, DeploymentProfile.name)).all()
        ranks = {pid: rank for rank, (pid, _) in enumerate(sorted(names, key=lambda r: (r[1].lower(), r[0])))}
        return case(ranks, value=User.profile_id, else_=len(ranks)) if ranks else User.profile_id
    return SORTS[q.sort]


# Up to this many search hits are sorted directly; more are found by walking the sort index.
SORT_HITS_UP_TO = 5000


def _sort_the_hits(f: UserFilter, total: int) -> bool:
    """Walking the sort index and testing each row is quick when hits are many, and
    slow when they are few or sit together in sort order (every "Schmidt" near the
    end of a Lastname sort): then the search's own hits (trigram index) are sorted."""
    return bool(f.search) and total <= SORT_HITS_UP_TO


def _page_ids(q: UserQuery) -> tuple[list[int], int]:
    """The ids of one page of the table, and how many users the filter matches.

    The count is COUNT(*), which SQLite answers from the smallest index (an unfiltered
    count of 100,000 users: 0.15 ms instead of 4 ms for COUNT(id)), and a filter's
    count reads the filter index of migration 0005. The page's ids come from the sort
    index alone (a covering index walk, cheap even at a deep offset)."""
    total = db.session.scalar(q.filter.apply(select(func.count()).select_from(User)))
    pages = max(1, -(-total // q.per_page))
    q.page = min(q.page, pages)
    col = _sort_key(q)
    if _sort_the_hits(q.filter, total) and q.sort != "profile":
        # An expression, not the bare column: the sort index is not used for the order.
        col = col.op("||")(literal_column("''"))
    order = (col.desc(), User.id.desc()) if q.desc else (col.asc(), User.id.asc())
    ids = list(db.session.scalars(q.filter.apply(select(User.id)).order_by(*order)
                                  .offset((q.page - 1) * q.per_page).limit(q.per_page))) if total else []
    return ids, total


def list_users(q: UserQuery) -> UserPage:
    """One page of users as User objects (the API and the CLI show every field)."""
    from sqlalchemy.orm import selectinload

    ids, total = _page_ids(q)
    rows = {u.id: u for u in db.session.scalars(
        select(User).where(User.id.in_(ids)).options(selectinload(User.profile),
                                                     selectinload(User.connection)))} if ids else {}
    return UserPage([rows[i] for i in ids if i in rows], total, q)


class _Named:
    """The profile or connection of a table row: what the table shows of it."""
    __slots__ = ("name", "is_do_not_deploy")

    def __init__(self, name: str, is_do_not_deploy: bool = False):
        self.name, self.is_do_not_deploy = name, is_do_not_deploy


# What a row of the Users table shows, read as plain columns in one statement.
TABLE_COLUMNS = (User.id, User.login_id, User.first_name, User.last_name, User.number,
                 User.mbg_sip_username, User.mcs_account, User.email, User.deployed_at,
                 User.downloaded_at, User.source, User.force_config, User.redeploy_required,
                 User.send_error, User.not_in_source)
TABLE_FIELDS = tuple(c.key for c in TABLE_COLUMNS)


class UserRow:
    """One line of the Users table. The same attribute names as User, so the table
    reads it the same way; no ORM object is built (three times cheaper)."""
    __slots__ = TABLE_FIELDS + ("profile", "connection")
    display_name = property(User.display_name.fget)

    def __init__(self, values, profile: _Named, connection: _Named | None):
        for name, value in zip(TABLE_FIELDS, values):
            setattr(self, name, value)
        self.profile, self.connection = profile, connection


def table_page(q: UserQuery) -> UserPage:
    """One page of the Users tab: the same page as list_users, as UserRow lines read
    with their profile and connection names in one statement."""
    ids, total = _page_ids(q)
    if not ids:
        return UserPage([], total, q)
    stmt = (select(*TABLE_COLUMNS, DeploymentProfile.id, DeploymentProfile.name,
                   DeploymentProfile.is_do_not_deploy, Connection.name)
            .join(DeploymentProfile, DeploymentProfile.id == User.profile_id)
            .outerjoin(Connection, Connection.id == User.connection_id)
            .where(User.id.in_(ids)))
    profiles: dict[int, _Named] = {}
    rows = {}
    width = len(TABLE_COLUMNS)
    for row in db.session.execute(stmt):
        pid = row[width]
        profile = profiles.get(pid) or profiles.setdefault(pid, _Named(row[width + 1], row[width + 2]))
        conn = _Named(row[width + 3]) if row[width + 3] is not None else None
        rows[row[0]] = UserRow(row, profile, conn)
    return UserPage([rows[i] for i in ids if i in rows], total, q)


# --- selections: explicit ids, or "all matching this filter" --------------------

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
    """A user's Login ID changes: the installed client stops working and must be redeployed.

    Returns True when the ID changed. The caller commits."""
    if new_login_id == user.login_id:
        return False
    user.login_id = new_login_id
    revoke_client_access(user, "id_change")
    user.redeploy_required = True
    user.force_config = False
    user.config_version += 1
    return True


def id_change_consequences(user: User) -> str:
    """What changing this user's ID does, said before it is done (the page asks first)."""
    from cds.settings.service import get_setting

    devices = db.session.scalar(select(func.count(ClientDevice.id)).where(
        ClientDevice.user_id == user.id, ClientDevice.revoked_at.is_(None))) or 0
    links = db.session.scalar(select(func.count(Deployment.id)).where(
        Deployment.user_id == user.id, Deployment.used_at.is_(None), Deployment.revoked_at.is_(None),
        Deployment.superseded_at.is_(None), Deployment.expires_at > utcnow())) or 0
    parts = []
    if devices:
        parts.append(f"the app on {devices} device{'s' if devices != 1 else ''} stops working "
                     f"and must be factory reset")
    if links:
        parts.append(f"{links} unused deployment link{'s' if links != 1 else ''} stop{'s' if links == 1 else ''} working")
    parts.append("the user is marked \"redeploy required\"")
    then = ("a new deployment e-mail is sent at once (setting \"Redeploy on ID change\")"
            if get_setting("AUTO_REDEPLOY_ON_ID_CHANGE") else "a new deployment e-mail must be sent")
    return "Changing the ID of " + user.display_name + ": " + "; ".join(parts) + "; " + then + "."


def source_label(user: User) -> str:
    if user.source == SOURCE_CONNECTION:
        return user.connection.name if user.connection else "connection (deleted)"
    return SOURCE_LABELS.get(user.source, user.source)


def source_choices() -> list[tuple[str, str]]:
    rows = db.session.execute(select(Connection.id, Connection.name).order_by(Connection.name))
    return [(SOURCE_MANUAL, SOURCE_LABELS[SOURCE_MANUAL]), (SOURCE_CSV, SOURCE_LABELS[SOURCE_CSV])] + \
        [(f"c{i}", n) for i, n in rows]


# --- field rules, shared by the user form, the CSV import and the API ---------------

USER_FIELD_LIMITS = {"login_id": 113, "first_name": 100, "last_name": 100, "number": 32,
                     "pbx_number": 32, "pbx_sip_username": 128, "mbg_sip_username": 128,
                     "mcs_account": 128, "email": 254}
USER_FIELD_LABELS = {"login_id": "Login ID", "first_name": "Firstname", "last_name": "Lastname",
                     "number": "Number", "pbx_number": "PBX Number",
                     "pbx_sip_username": "PBX SIP User name", "mbg_sip_username": "MBG SIP User name",
                     "mcs_account": "MiCollab Client Service Account", "email": "Email address"}
REQUIRED_USER_FIELDS = ("login_id", "last_name", "email")
# The longest secret (password, PIN) any surface accepts: form, API, CLI and CSV import.
MAX_SECRET_LENGTH = 256
_PHONE_RE = re.compile(r"[0-9+*#() .\-]*")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def validate_user_fields(data: dict) -> dict[str, str]:
    """Check the non-secret fields of a user. Returns {field: message}; empty when valid.

    Only the fields present in ``data`` are checked, so a partial update can be
    validated; values are expected already stripped. Uniqueness of the login id
    needs the database: see ``login_id_owner``."""
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
            problem = email_problem(value)
            if problem:
                errors[name] = f"{label} is not a valid e-mail address ({problem})."
    return errors


# Plain ASCII addresses in the shape nearly every address has; everything else goes
# to email_validator. Bulk imports validate 100,000 addresses, so the common case is
# decided here with the same outcome email_validator would give.
_PLAIN_EMAIL_RE = re.compile(
    r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,63}")


def email_problem(value: str) -> str | None:
    """Why ``value`` is not a deliverable-looking address, or None (email_validator rules)."""
    from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

    if len(value) <= 254 and _PLAIN_EMAIL_RE.fullmatch(value):
        local, domain = value.rsplit("@", 1)
        domain = domain.lower()
        if len(local) <= 64 and "--" not in domain and not any(
                domain == d or domain.endswith("." + d) for d in SPECIAL_USE_DOMAIN_NAMES):
            return None
    try:
        validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        return str(exc)
    return None


def login_id_owner(login_id: str, exclude_user_id: int | None = None) -> User | None:
    """The user who has this login ID, ignoring case ("JDoe" is "jdoe"), or None."""
    query = select(User).where(User.login_key == login_key(login_id))
    if exclude_user_id is not None:
        query = query.where(User.id != exclude_user_id)
    return db.session.scalar(query.limit(1))


def login_id_owners(login_ids) -> dict[str, tuple[int, str, str]]:
    """For the login IDs already in use: login_key -> (user id, login ID, name)."""
    keys = sorted({login_key(v) for v in login_ids if v})
    out = {}
    for start in range(0, len(keys), 900):
        for row in db.session.execute(select(User.login_key, User.id, User.login_id, User.first_name,
                                             User.last_name).where(User.login_key.in_(keys[start:start + 900]))):
            name = " ".join(p for p in (row.first_name, row.last_name) if p) or row.login_id
            out[row.login_key] = (row.id, row.login_id, name)
    return out


def login_id_in_use(login_id: str, owner_login_id: str, owner_name: str) -> str:
    """The message for a login ID another user has: which user, and why a different case is no escape."""
    same = "" if owner_login_id == login_id else " (Login IDs that differ only in upper/lower case are the same)"
    return f"Login ID {login_id!r} is already used by {owner_name} ({owner_login_id}){same}."


# --- adding and editing users ------------------------------------------------------

class InvalidUser(errors.Invalid, UserError):
    """Field errors: {field: message}. Nothing was written."""

    def __init__(self, field_errors: dict[str, str]):
        super().__init__("; ".join(field_errors.values()), field_errors)


EDITABLE_FIELDS = ("login_id", "first_name", "last_name", "number", "pbx_number",
                   "pbx_sip_username", "mbg_sip_username", "mcs_account", "email")


@dataclass
class SaveResult:
    user: User
    created: bool = False
    changed: list[str] = field(default_factory=list)
    old_login_id: str | None = None  # set when the ID changed

    @property
    def id_changed(self) -> bool:
        return self.old_login_id is not None


def secret_problem(name: str, value: str | None) -> str | None:
    """What is wrong with a new value for the secret ``name`` (None clears it), or None:
    the one rule for secrets, whoever writes them."""
    if value is not None and (len(value) > MAX_SECRET_LENGTH or _CONTROL_RE.search(value)):
        return f"{USER_SECRETS[name]} must be at most {MAX_SECRET_LENGTH} characters, without control characters."
    if value and not value.strip():
        # Stored exactly as given otherwise; only spaces is a slip, not a secret.
        return f"{USER_SECRETS[name]} is only spaces; leave it empty to keep the stored value."
    return None


def _check_profile(profile_id, errors: dict) -> DeploymentProfile | None:
    try:
        profile = db.session.get(DeploymentProfile, int(profile_id)) if profile_id not in (None, "") else None
    except (TypeError, ValueError):
        profile = None
    if profile is None:
        errors["profile_id"] = "Choose a deployment profile that exists."
    return profile


def _checked(user: User | None, values: dict, secrets: dict):
    """(fields, profile, errors) of an add or edit; reads the database, writes nothing."""
    imported = user is not None and user.is_imported
    fields_in = {} if imported else {k: str(values.get(k, "") or "").strip() for k in EDITABLE_FIELDS}
    errors = validate_user_fields(fields_in)
    profile = _check_profile(values.get("profile_id"), errors)
    login_id = fields_in.get("login_id")
    owner = login_id_owner(login_id, user.id if user else None) if login_id and "login_id" not in errors else None
    if owner is not None:
        errors["login_id"] = login_id_in_use(login_id, owner.login_id, owner.display_name)
    for name, value in secrets.items():
        if name not in USER_SECRETS:
            errors[name] = "Unknown secret."
        elif imported:
            errors[name] = "The source of this user owns its secrets."
        elif secret_problem(name, value):
            errors[name] = secret_problem(name, value)
    return fields_in, profile, errors


def user_errors(user: User | None, values: dict, secrets: dict | None = None) -> dict[str, str]:
    """The field errors ``save_user`` would report, without saving (e.g. before asking
    the administrator to confirm an ID change)."""
    return _checked(user, values, secrets or {})[2]


def save_user(user: User | None, values: dict, secrets: dict | None = None, *,
              actor: str | None = None) -> SaveResult:
    """Create (user=None) or edit a user from the console, API or CLI, in one transaction.

    ``values`` holds the editable fields and ``profile_id``; for an imported user
    only the profile may change (the source owns the rest; Sync changes it).
    ``secrets``: {name: new value} replaces, {name: None} clears, absent keeps.
    Raises InvalidUser with every field error; nothing is written then."""
    from cds.audit.service import record_event

    secrets = secrets or {}
    fields_in, profile, errors = _checked(user, values, secrets)
    if errors:
        raise InvalidUser(errors)
    login_id = fields_in.get("login_id")

    result = SaveResult(user=user, created=user is None)
    if user is None:
        user = result.user = User(login_id=login_id, profile=profile)
        db.session.add(user)
    if user.profile_id != profile.id:
        user.profile = profile
        result.changed.append("profile")
    for name, value in fields_in.items():
        if name == "login_id":
            continue
        if getattr(user, name) != value:
            setattr(user, name, value)
            result.changed.append(name)
    for name, value in secrets.items():
        if value is None and not user.has_secret(name):
            continue
        user.set_secret(name, value or None)
        result.changed.append(f"{name} ({'cleared' if value is None else 'replaced'})")
    if not result.created and login_id and login_id != user.login_id:
        result.old_login_id = user.login_id
        apply_login_id_change(user, login_id)
        result.changed.append("login_id")
    elif result.changed and not result.created:
        user.config_version += 1
    db.session.flush()
    # Field names only: the audit trail never holds a secret.
    detail = {"changed": result.changed, "source": user.source}
    if result.old_login_id:
        detail["old_login_id"] = result.old_login_id
    if result.created or result.changed:
        record_event("user.create" if result.created else "user.update", actor=actor, user=user,
                     detail=detail, commit=False)
    db.session.commit()
    return result


def redeploy_after_id_change(user: User, *, actor: str | None = None):
    """With the setting AUTO_REDEPLOY_ON_ID_CHANGE on, start the Deploy job for the
    user whose ID just changed. Returns the job, or None (the setting is off)."""
    from cds.jobs.actions import start_action
    from cds.settings.service import get_setting

    if not get_setting("AUTO_REDEPLOY_ON_ID_CHANGE"):
        return None
    return start_action("deploy", {"ids": [user.id]}, actor=actor or "system")


# --- the user page: history, devices, audit ----------------------------------------

def deployment_history(user: User, limit: int = 50) -> list[Deployment]:
    return list(db.session.scalars(select(Deployment).where(Deployment.user_id == user.id)
                                   .order_by(Deployment.issued_at.desc(), Deployment.id.desc())
                                   .limit(limit)))


def user_devices(user: User) -> list[ClientDevice]:
    return list(db.session.scalars(select(ClientDevice).where(ClientDevice.user_id == user.id)
                                   .order_by(ClientDevice.revoked_at.is_not(None),
                                             ClientDevice.activated_at.desc())))


def user_audit_events(user: User, limit: int = 50):
    from cds.models import AuditEvent
    return list(db.session.scalars(select(AuditEvent).where(AuditEvent.user_id == user.id)
                                   .order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)))


def revoke_device(user: User, device_id: int, *, actor: str | None = None) -> ClientDevice:
    """A lost phone: this device's credential stops working at once (the client then
    gets 401 redeploy_required); the user's other devices keep working."""
    from cds.audit.service import record_event

    device = db.session.get(ClientDevice, device_id)
    if device is None or device.user_id != user.id:
        raise NotFound(f"Device {device_id} of this user does not exist.")
    if device.revoked_at is not None:
        raise UserError("This device was already revoked.")
    device.revoked_at = utcnow()
    device.revoked_reason = "revoked_by_admin"
    record_event("device.revoke", actor=actor, user=user,
                 detail={"device": device.device_id, "platform": device.platform}, commit=False)
    db.session.commit()
    return device


# --- the Assign profile bulk action --------------------------------------------------

@action("assign_profile", "Assign profile", options=("profile_id",))
def assign_profile_batch(job, users: list[User]) -> list[Outcome]:
    """Put the users on the profile params["profile_id"]; their configuration changes."""
    from cds.audit.service import actor_type_of, record_event

    profile = db.session.get(DeploymentProfile, job.params.get("profile_id") or 0)
    if profile is None:
        return [Outcome(u, "failed", "The chosen profile no longer exists.") for u in users]
    outcomes, moved = [], 0
    for user in users:
        if user.profile_id == profile.id:
            outcomes.append(Outcome(user, "skipped", f"Already on {profile.name}."))
            continue
        user.profile_id = profile.id
        user.config_version += 1
        moved += 1
        outcomes.append(Outcome(user, "ok"))
    if moved:
        record_event("user.assign_profile", actor=job.created_by, actor_type=actor_type_of(job.created_by),
                     count=moved, detail={"profile": profile.name, "job": job.id}, commit=False)
    return outcomes
