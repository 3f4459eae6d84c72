"""Finding users: the filter (also the stored form of an "all matching" selection),
the search, sorting and pages of the Users tab, the API and the CLI."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

from sqlalchemy import Select, and_, bindparam, case, func, literal_column, or_, select, table
from sqlalchemy.orm import selectinload

from cds.extensions import db
from cds.http import MAX_PAGE
from cds.models import SOURCE_CONNECTION, SOURCE_CSV, SOURCE_LABELS, SOURCE_MANUAL, Connection, DeploymentProfile, User
from cds.users.errors import InvalidQuery
from cds.users.fields import CONTROL_RE

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

# Every field of the field table, in the order of the search index of migration
# 0002_users (PostgreSQL's trigram index covers exactly this expression, SQLite's FTS5
# table these columns): a new field is searched once a migration adds it to the index.
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
        f.search = CONTROL_RE.sub(" ", str(data.get("search", "") or data.get("q", "") or "")).strip()[:200]
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


def source_label(user: User) -> str:
    if user.source == SOURCE_CONNECTION:
        return user.connection.name if user.connection else "connection (deleted)"
    return SOURCE_LABELS.get(user.source, user.source)


def source_choices() -> list[tuple[str, str]]:
    rows = db.session.execute(select(Connection.id, Connection.name).order_by(Connection.name))
    return [(SOURCE_MANUAL, SOURCE_LABELS[SOURCE_MANUAL]), (SOURCE_CSV, SOURCE_LABELS[SOURCE_CSV])] + \
        [(f"c{i}", n) for i, n in rows]
