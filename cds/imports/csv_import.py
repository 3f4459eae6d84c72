"""CSV import (the format of docs/sources.md, CSV files): parse, plan with every row's errors, then write.

``plan_import`` reads the whole file and decides, row by row, what would happen
(create, update, unchanged, or the errors that stop it) without writing
anything: that is the preview. ``commit_import`` plans again (the database may
have changed since the preview) and writes in one transaction — every row, or
with "allow partial import" every good row — never half of the file.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

from sqlalchemy import bindparam, select, update

from cds import errors
from cds.audit.service import record_event
from cds.csvfile import neutralise
from cds.extensions import db
from cds.imports.service import insert_users
from cds.models import SOURCE_CSV, DeploymentProfile, User, login_key, utcnow
from cds.profiles.service import default_profile
from cds.security import decrypt_secrets, encrypt_secrets
from cds.users.changes import Change, plan_change
from cds.users.fields import CSV_COLUMNS, REQUIRED_FIELDS, USER_SECRETS
from cds.users.fields import FIELD_NAMES as USER_FIELDS
from cds.users.login_ids import apply_login_id_change, login_id_in_use, login_id_owners

# The CSV format shared by import, export and the template: header -> key.
COLUMNS = CSV_COLUMNS
# Accepted on import only: export never writes them.
SECRET_COLUMNS = tuple((label, key) for key, label in USER_SECRETS.items())
# Written by export for the reader; ignored on import.
INFO_KEYS = ("source", "deployed", "downloaded")
TEMPLATE_HEADER = [label for label, key in COLUMNS if key not in INFO_KEYS] + \
    [label for label, _ in SECRET_COLUMNS]
MAX_LISTED_ERRORS = 1000
EMPTY_POLICIES = {
    "keep": "Empty cells leave the user's current value unchanged.",
    "clear": "Empty cells clear the field (for users being updated).",
}


def header_key(name: str) -> str:
    """Column names match ignoring case and spaces: "E-mail"-style variants are unknown."""
    return re.sub(r"\s+", "", name).lower()


HEADER_KEYS = {header_key(label): key for label, key in COLUMNS + SECRET_COLUMNS}
LABELS = {key: label for label, key in COLUMNS + SECRET_COLUMNS}
# The last column of the rejected-rows download: ignored when that file comes back fixed.
HEADER_KEYS["reason"], LABELS["reason"] = "reason", "Reason"
INFO_KEYS = INFO_KEYS + ("reason",)


class CsvProblem(errors.Invalid):
    """The file as a whole cannot be read (encoding, structure, no header)."""


class CsvRejected(errors.Invalid):
    """All-or-nothing import refused because rows have errors; nothing was written.
    ``plan`` holds every row's errors."""

    def __init__(self, plan: "ImportPlan"):
        super().__init__(f"{plan.error_count:,} row{'s' if plan.error_count != 1 else ''} "
                         f"have errors; nothing was imported.")
        self.plan = plan


@dataclass
class CsvOptions:
    partial: bool = False
    overwrite: bool = False
    profile_id: int | None = None  # one profile for every row (overrides the Profile column)
    empty_cells: str = "keep"

    def to_dict(self) -> dict:
        return {"partial": self.partial, "overwrite": self.overwrite,
                "profile_id": self.profile_id, "empty_cells": self.empty_cells}

    @classmethod
    def from_dict(cls, data: dict) -> "CsvOptions":
        empty = data.get("empty_cells") if data.get("empty_cells") in EMPTY_POLICIES else "keep"
        pid = data.get("profile_id")
        return cls(partial=bool(data.get("partial")), overwrite=bool(data.get("overwrite")),
                   profile_id=int(pid) if pid not in (None, "", 0, "0") else None, empty_cells=empty)


@dataclass
class RowPlan:
    line: int
    action: str = ""  # create, update, unchanged, or "" when the row has errors
    user_id: int | None = None
    login_id: str = ""
    values: dict = field(default_factory=dict)   # fields to set (create: all of them)
    secrets: dict = field(default_factory=dict)  # secrets to set (never shown)
    profile_id: int | None = None
    old_login_id: str | None = None
    changed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    raises_config_version: bool = False

    def take(self, change: Change, user: dict | None) -> None:
        """Record what ``plan_change`` decided for this row."""
        self.errors.extend(change.errors.values())
        self.values, self.secrets = change.fields, change.secrets
        self.profile_id, self.old_login_id = change.profile_id, change.old_login_id
        self.raises_config_version = change.raises_config_version
        if user is None:
            self.action = "create"
        else:
            self.user_id = user["id"]
            self.changed = change.changed
            self.action = "unchanged" if change.is_empty else "update"
        self.login_id = self.values.get("login_id") or (user["login_id"] if user else "")


@dataclass
class ImportPlan:
    options: CsvOptions
    columns: list[str]                 # the file's header, as written
    unknown_columns: list[str]
    ignored_columns: list[str]
    missing_columns: list[str]
    rows: list[RowPlan]
    notes: list[str] = field(default_factory=list)

    @property
    def error_rows(self) -> list[RowPlan]:
        return [r for r in self.rows if r.errors]

    @property
    def error_count(self) -> int:
        return sum(1 for r in self.rows if r.errors)

    def count(self, action: str) -> int:
        return sum(1 for r in self.rows if r.action == action and not r.errors)

    @property
    def writable(self) -> bool:
        return bool(self.count("create") or self.count("update")) and \
            (self.options.partial or not self.error_count)


# --- reading the file ----------------------------------------------------------------

def decode(data: bytes) -> str:
    """UTF-8 with or without a BOM; anything else is refused with a clear reason."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise CsvProblem("The file is UTF-16 text. Save it as \"CSV UTF-8\" and upload it again.")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CsvProblem(f"The file is not UTF-8 text (byte 0x{data[exc.start]:02X} on line {line}). "
                         f"Save it as \"CSV UTF-8\" and upload it again.") from None
    if "\x00" in text:
        raise CsvProblem("The file contains NUL characters; it is not a CSV text file.")
    return text


def unneutralise(value: str) -> str:
    """Export prefixes formula-looking cells with an apostrophe; a re-import takes it off
    (exactly where export would have put it). Other cells are kept exactly as written
    (stored as text, never evaluated)."""
    if len(value) > 1 and value[0] == "'" and neutralise(value[1:]) == value:
        return value[1:]
    return value


def read_rows(text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the data rows, each with the line it starts on (blank lines skipped)."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    rows: list[tuple[int, list[str]]] = []
    header: list[str] | None = None
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not cells or all(not c.strip() for c in cells):
                continue
            if header is None:
                header = cells
            else:
                rows.append((line, cells))
    except csv.Error as exc:
        raise CsvProblem(f"Line {start}: the CSV structure is broken ({exc}).") from None
    if header is None:
        raise CsvProblem("The file is empty.")
    return header, rows


# --- planning (the preview) -----------------------------------------------------------

def plan_import(data: bytes, options: CsvOptions) -> ImportPlan:
    """What importing this file would do, row by row; writes nothing."""
    header, raw_rows = read_rows(decode(data))
    index, unknown, ignored = _read_header(header)
    missing = [LABELS[k] for k in REQUIRED_FIELDS if k not in index]
    if index.get("id") is None and options.overwrite:
        missing.append("ID (needed by \"allow overwrite\")")
    profiles = _RowProfiles(options)
    plans, cells_of = _split_rows(raw_rows, index, len(header))
    existing = _load_users(_ids_in_file(plans, cells_of))
    for plan, cells in zip(plans, cells_of):
        if not plan.errors and cells:
            _plan_row(plan, cells, existing, options, profiles)
    _check_login_ids(plans, existing)
    return ImportPlan(options, header, unknown, ignored, missing, plans,
                      _notes(options, profiles.fixed, "profile" in index))


def _read_header(header: list[str]) -> tuple[dict[str, int], list[str], list[str]]:
    """(column key -> position, unknown columns, columns read and ignored)."""
    index: dict[str, int] = {}
    unknown, ignored = [], []
    for i, name in enumerate(header):
        key = HEADER_KEYS.get(header_key(name))
        if key is None:
            unknown.append(name.strip() or f"(unnamed column {i + 1})")
            continue
        if key in index:
            raise CsvProblem(f"The column {LABELS[key]!r} appears twice in the header.")
        if key in INFO_KEYS:
            ignored.append(name.strip())
        index[key] = i
    if not any(k in index for k in USER_FIELDS + ("id",)):
        raise CsvProblem("The first line is not a header this import knows (expected columns such "
                         "as Login ID, Lastname, Email address). Download the template to see the "
                         "format.")
    return index, unknown, ignored


class _RowProfiles:
    """Each row's profile: one for all, else the Profile column, else (new users) the default."""

    def __init__(self, options: CsvOptions):
        self.by_name = {p.name.strip().casefold(): p for p in db.session.scalars(select(DeploymentProfile))}
        self.fixed = None
        if options.profile_id is not None:
            self.fixed = db.session.get(DeploymentProfile, options.profile_id)
            if self.fixed is None:
                raise CsvProblem("The profile chosen for all rows does not exist.")
        self.for_new_users = self.fixed.id if self.fixed else default_profile().id

    def of_row(self, name: str, new_user: bool) -> tuple[int | None, str | None]:
        """(profile id or None to keep the user's, error)."""
        if self.fixed is not None:
            return self.fixed.id, None
        if name:
            profile = self.by_name.get(name.casefold())
            if profile is None:
                return None, f"Unknown profile {name!r}."
            return profile.id, None
        return (self.for_new_users if new_user else None), None


def _split_rows(raw_rows, index: dict[str, int], width: int) -> tuple[list[RowPlan], list[dict]]:
    """A plan per row, and its cells by column key (empty when the row is malformed)."""
    plans, cells_of = [], []
    for line, cells in raw_rows:
        plan = RowPlan(line)
        plans.append(plan)
        if len(cells) != width:
            plan.errors.append(f"Has {len(cells)} cells; the header has {width}.")
            cells_of.append({})
            continue
        # Secrets exactly as written: a PIN "'=123" or a password with spaces at its ends
        # is that PIN or password (export never writes secrets, so nothing to undo).
        cells_of.append({k: cells[i] if k in USER_SECRETS else unneutralise(cells[i].strip())
                         for k, i in index.items() if k not in INFO_KEYS})
        plan.login_id = cells_of[-1].get("login_id", "")
    return plans, cells_of


def _ids_in_file(plans: list[RowPlan], cells_of: list[dict]) -> list[int]:
    """The users the file refers to by ID (each at most once, each a whole number)."""
    seen: dict[int, RowPlan] = {}
    for plan, cells in zip(plans, cells_of):
        raw_id = cells.get("id", "")
        if not raw_id:
            continue
        if not raw_id.isdigit() or int(raw_id) == 0 or len(raw_id) > 12:
            plan.errors.append(f"ID {raw_id!r} is not a user ID (a whole number).")
        elif int(raw_id) in seen:
            plan.errors.append(f"ID {raw_id} is also on line {seen[int(raw_id)].line}.")
        else:
            seen[int(raw_id)] = plan
    return list(seen)


def _id_problem(raw_id: str, user: dict | None, options: CsvOptions) -> str | None:
    if raw_id and user is None and options.overwrite:
        return f"No user has ID {raw_id} (deleted?). Clear the ID cell to add the row as a new user."
    if user is not None and not options.overwrite:
        return (f"ID {raw_id} is the existing user {user['login_id']!r}; tick \"allow overwrite\" "
                f"to update it, or clear the ID cell.")
    return None


def _plan_row(plan: RowPlan, cells: dict, existing: dict[int, dict], options: CsvOptions,
              profiles: _RowProfiles) -> None:
    raw_id = cells.get("id", "")
    user = existing.get(int(raw_id)) if raw_id else None
    problem = _id_problem(raw_id, user, options)
    if problem:
        plan.errors.append(problem)
        return
    profile_id, problem = profiles.of_row(cells.get("profile", ""), user is None)
    if problem:
        plan.errors.append(problem)
    # An empty cell: a new user's field is empty; an existing user's is kept or cleared
    # as the administrator chose. An empty secret cell never clears a secret (export
    # leaves them empty).
    keep_empty = user is not None and options.empty_cells == "keep"
    values = {f: cells[f] for f in USER_FIELDS if f in cells and not (keep_empty and not cells[f])}
    values["profile_id"] = profile_id
    secrets = {k: cells[k] for k in USER_SECRETS if cells.get(k)}
    plan.take(plan_change(user, values, secrets), user)


def _notes(options: CsvOptions, fixed_profile, has_profile_column: bool) -> list[str]:
    notes = [EMPTY_POLICIES[options.empty_cells] if options.overwrite else
             "Empty cells leave fields empty on the new users.",
             "Empty secret cells never clear a stored secret."]
    if fixed_profile is not None:
        notes.append(f"Every row gets the profile {fixed_profile.name!r}"
                     + (" (the Profile column is ignored)." if has_profile_column else "."))
    elif not has_profile_column:
        notes.append("There is no Profile column: new users get the default profile.")
    return notes


def _load_users(ids: list[int]) -> dict[int, dict]:
    cols = [User.id, User.source, User.profile_id, User.config_version] + \
        [getattr(User, f) for f in USER_FIELDS]
    out = {}
    for start in range(0, len(ids), 900):
        for row in db.session.execute(select(*cols).where(User.id.in_(ids[start:start + 900]))):
            out[row.id] = row._asdict()
    return out


def _stored_secrets(ids: list[int]) -> dict[int, str | None]:
    """The encrypted secrets of these users, by id."""
    out = {}
    for start in range(0, len(ids), 900):
        out.update(db.session.execute(select(User.id, User.secrets_enc).where(
            User.id.in_(ids[start:start + 900]))).tuples().all())
    return out


def _check_login_ids(plans: list[RowPlan], existing: dict[int, dict]) -> None:
    """A login id may appear once in the file and must not belong to another user
    (unless that user is given a new login id by this same file). Ignoring case:
    "JDoe" and "jdoe" are the same ID."""
    first_line: dict[str, int] = {}
    for plan in plans:
        if plan.errors or plan.action not in ("create", "update") or not plan.login_id:
            continue
        key = login_key(plan.login_id)
        if plan.action == "update" and "login_id" not in plan.values:
            first_line.setdefault(key, plan.line)
            continue
        if key in first_line:
            plan.errors.append(f"Login ID {plan.login_id!r} is also on line {first_line[key]}"
                                " (Login IDs are the same ignoring upper/lower case).")
        else:
            first_line[key] = plan.line
    owners = login_id_owners(p.login_id for p in plans if p.login_id and not p.errors
                             and (p.action == "create" or "login_id" in p.values))
    moving_away = {p.user_id for p in plans if p.action == "update" and "login_id" in p.values
                   and not p.errors}
    for plan in plans:
        owner = owners.get(login_key(plan.login_id)) if plan.login_id else None
        if plan.errors or owner is None:
            continue
        if plan.action == "create" or "login_id" in plan.values:
            if owner[0] != plan.user_id and owner[0] not in moving_away:
                plan.errors.append(login_id_in_use(plan.login_id, owner[1], owner[2]))


# --- writing ---------------------------------------------------------------------------

@dataclass
class CsvResult:
    created: int
    updated: int
    unchanged: int
    skipped: list[RowPlan]
    login_changes: list[str]

    def describe(self) -> str:
        text = f"CSV import: {self.created:,} created, {self.updated:,} updated"
        if self.unchanged:
            text += f", {self.unchanged:,} unchanged"
        if self.skipped:
            text += f", {len(self.skipped):,} rows skipped for errors"
        return text + "."


def commit_import(data: bytes, options: CsvOptions, *, actor: str | None = None,
                  file_name: str = "") -> CsvResult:
    """Plan again and write in one transaction. All-or-nothing raises CsvRejected on any
    error; partial writes the good rows and reports the skipped ones."""
    plan = plan_import(data, options)
    if plan.error_count and not options.partial:
        raise CsvRejected(plan)
    good = [p for p in plan.rows if not p.errors]
    creates = [p for p in good if p.action == "create"]
    updates = [p for p in good if p.action == "update"]
    now = utcnow()
    login_changes = []
    try:
        rows = []
        for p in creates:
            row = {**p.values, "profile_id": p.profile_id, "source": SOURCE_CSV,
                   "created_at": now, "updated_at": now}
            row["secrets_enc"] = encrypt_secrets(p.secrets)
            rows.append(row)
        insert_users(rows)

        # A login id change runs the ID-change flow (devices revoked, redeploy required).
        # Parking the old ids first lets a file swap two users' login ids.
        movers = [p for p in updates if "login_id" in p.values]
        moving = {p.user_id: db.session.get(User, p.user_id) for p in movers}
        for p in movers:
            moving[p.user_id].login_id = f"~csv-import-{p.user_id}"
        db.session.flush()
        for p in movers:
            login_changes.append(f"{p.old_login_id} → {p.values['login_id']}")
            apply_login_id_change(moving[p.user_id], p.values["login_id"])
        db.session.flush()
        # Secrets given in the file replace those; the others a user has are kept.
        stored = _stored_secrets([p.user_id for p in updates if p.secrets])
        # The other changes go in bulk, grouped by the set of columns they change.
        groups: dict[tuple, list[dict]] = {}
        for p in updates:
            values = {k: v for k, v in p.values.items() if k != "login_id"}
            row = {**values, "updated_at": now}
            if p.profile_id is not None:
                row["profile_id"] = p.profile_id
            if p.secrets:
                row["secrets_enc"] = encrypt_secrets({**decrypt_secrets(stored.get(p.user_id)), **p.secrets})
            # Raised as plan_change says, for a new secret too (the client protocol promises
            # a new configuration); an ID change has raised it already.
            row["config_bump"] = 1 if p.raises_config_version and "login_id" not in p.values else 0
            groups.setdefault(tuple(sorted(row)), []).append({**row, "uid": p.user_id})
        table = User.__table__
        for keys, items in groups.items():
            columns = {k: bindparam(k) for k in keys if k != "config_bump"}
            stmt = update(table).where(table.c.id == bindparam("uid")).values(
                config_version=table.c.config_version + bindparam("config_bump"), **columns)
            db.session.execute(stmt, items)
        result = CsvResult(len(creates), len(updates), plan.count("unchanged"),
                           [p for p in plan.rows if p.errors], login_changes)
        record_event("users.import_csv", actor=actor, count=len(creates) + len(updates),
                     commit=False, detail={"file": file_name[:200], "created": result.created,
                                           "updated": result.updated,
                                           "skipped": len(result.skipped),
                                           "overwrite": options.overwrite,
                                           "partial": options.partial})
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return result


REASON_COLUMN = LABELS["reason"]


def rejected_rows_csv(data: bytes, rows: list[RowPlan]) -> str:
    """The rows of the file that have errors, as the file wrote them, with a last
    "Reason" column: to fix and import again (the Reason column is reported as unknown
    and ignored then). The secret columns are left empty: this file is a download, and
    downloads never carry a password or PIN."""
    header, raw_rows = read_rows(decode(data))
    reasons = {r.line: " ".join(r.errors) for r in rows if r.errors}
    secret_at = {i for i, name in enumerate(header)
                 if HEADER_KEYS.get(header_key(name)) in dict(SECRET_COLUMNS).values()}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([*header, REASON_COLUMN] if header_key(header[-1]) != header_key(REASON_COLUMN)
                    else header)
    drop_reason = header_key(header[-1]) == header_key(REASON_COLUMN)
    for line, cells in raw_rows:
        if line not in reasons:
            continue
        cells = ["" if i in secret_at else c for i, c in enumerate(cells)]
        if drop_reason:
            cells = cells[:len(header) - 1]
        writer.writerow([*cells, reasons[line]])
    return out.getvalue()


def template_csv() -> str:
    """The downloadable template: the header row of the import format."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow(TEMPLATE_HEADER)
    return out.getvalue()

