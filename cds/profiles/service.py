"""Deployment profiles, including the built-in "Do Not Deploy" and the default profile."""
from __future__ import annotations

import ipaddress
import re

from sqlalchemy import func, select, update

from cds import errors
from cds.audit.service import record_event
from cds.clients import KINDS, kind_of
from cds.extensions import db
from cds.mail.addresses import AddressError, check_address, check_header_text
from cds.models import (CLIENT_TYPES, DO_NOT_DEPLOY, SIP_ACCOUNTS, SIP_ALGORITHMS, SIP_CREDENTIALS,
                        TRANSPORTS, DeploymentProfile, User)
from cds.users.fields import PHONE_RE


class ProfileError(errors.Conflict):
    """A profile cannot be changed as asked; the message says why."""


class ProfileNotFound(errors.NotFound, ProfileError):
    pass


class ProfileInUse(ProfileError):
    def __init__(self, profile: DeploymentProfile, count: int):
        super().__init__(f"The profile {profile.name!r} is used by {count} "
                         f"user{'s' if count != 1 else ''}; assign them another profile first.",
                         {"users": count})  # the API's "details"
        self.profile, self.count = profile, count


def ensure_builtin_profiles() -> None:
    """Every instance has "Do Not Deploy" and a default profile."""
    changed = False
    if not db.session.scalar(select(DeploymentProfile.id).where(DeploymentProfile.is_do_not_deploy)):
        db.session.add(DeploymentProfile(
            name=DO_NOT_DEPLOY, is_do_not_deploy=True,
            description="Users on this profile are never sent a deployment."))
        changed = True
    if not db.session.scalar(select(DeploymentProfile.id).where(DeploymentProfile.is_default)):
        existing = db.session.scalar(select(DeploymentProfile).where(
            DeploymentProfile.is_do_not_deploy.is_(False)).order_by(DeploymentProfile.id))
        if existing is None:
            existing = DeploymentProfile(name="Default", description="Profile for new users.")
            db.session.add(existing)
        existing.is_default = True
        changed = True
    if changed:
        db.session.commit()


def default_profile() -> DeploymentProfile:
    profile = db.session.scalar(select(DeploymentProfile).where(DeploymentProfile.is_default))
    if profile is None:
        ensure_builtin_profiles()
        profile = db.session.scalar(select(DeploymentProfile).where(DeploymentProfile.is_default))
    return profile


def all_profiles() -> list[DeploymentProfile]:
    return list(db.session.scalars(select(DeploymentProfile).order_by(
        DeploymentProfile.is_do_not_deploy, DeploymentProfile.name)))


def get_profile(profile_id: int) -> DeploymentProfile:
    profile = db.session.get(DeploymentProfile, profile_id)
    if profile is None:
        raise ProfileNotFound(f"Deployment profile {profile_id} does not exist.")
    return profile


def find_profile_by_name(name: str) -> DeploymentProfile | None:
    # Compared in Python: SQLite's lower() folds ASCII only, so "ÉVRY" and "évry" (or the
    # same "Österreich" twice) would pass a SQL check and then break the unique index.
    wanted = name.strip().casefold()
    return next((p for p in db.session.scalars(select(DeploymentProfile))
                 if p.name.strip().casefold() == wanted), None)


def user_counts() -> dict[int, int]:
    rows = db.session.execute(select(User.profile_id, func.count()).group_by(User.profile_id))
    return {pid: n for pid, n in rows}


def set_default(profile: DeploymentProfile, *, actor: str | None = None) -> None:
    """Make ``profile`` the one new users get."""
    if profile.is_do_not_deploy:
        raise ProfileError("\"Do Not Deploy\" cannot be the default profile for new users.")
    db.session.execute(update(DeploymentProfile).values(is_default=False))
    profile.is_default = True
    record_event("profile.default", actor=actor, detail={"profile": profile.name}, commit=False)
    db.session.commit()


# --- creating, editing and deleting ---------------------------------------------

PROFILE_FIELDS = ("name", "description", "client", "client_types", "mbg_sip_host", "mbg_sip_port",
                  "mbg_sip_transport", "pbx_sip_host", "pbx_sip_port", "pbx_sip_transport",
                  "sip_account", "sip_domain", "sip_realm", "sip_algorithm", "sip_credential",
                  "mcs_host", "mcs_port", "voicemail_number", "link_validity_hours",
                  "central_email", "email_subject", "email_body")
# "Do Not Deploy" never sends anything: only its description means something.
DO_NOT_DEPLOY_FIELDS = ("description",)


class InvalidProfile(errors.Invalid, ProfileError):
    def __init__(self, field_errors: dict[str, str]):
        super().__init__("; ".join(field_errors.values()), field_errors)


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def host_problem(value: str) -> str | None:
    """None when ``value`` is a host name (RFC 1123) or an IPv4/IPv6 address."""
    try:
        ipaddress.ip_address(value.strip("[]"))
        return None
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    if len(name) > 253 or not all(_HOST_LABEL.fullmatch(part) for part in name.split(".")):
        return "Enter a host name (like mbg.example.com) or an IP address."
    return None


def validate_profile_fields(data: dict, profile: DeploymentProfile | None = None) -> dict[str, str]:
    """Check the profile fields present in ``data``. Returns {field: message}."""


    errors = {}
    if "client" in data and data["client"] not in KINDS:
        errors["client"] = f"Client is one of: {', '.join(KINDS)}."
    if "sip_account" in data and data["sip_account"] not in SIP_ACCOUNTS:
        errors["sip_account"] = "SIP account is pbx (the PBX SIP account) or teleworker (the MBG one)."
    if "sip_algorithm" in data and data["sip_algorithm"] not in SIP_ALGORITHMS:
        errors["sip_algorithm"] = "Digest algorithm is MD5 or SHA-256."
    if "sip_credential" in data and data["sip_credential"] not in SIP_CREDENTIALS:
        errors["sip_credential"] = "SIP credential is ha1 or password."
    if data.get("sip_domain") and host_problem(data["sip_domain"]):
        errors["sip_domain"] = "Enter the SIP domain as a domain name (like example.com) or an IP address."
    realm = data.get("sip_realm") or ""
    if len(realm) > 255 or any(c in realm for c in '"\\') or any(ord(c) < 32 for c in realm):
        errors["sip_realm"] = "The realm is at most 255 characters, without quotes, backslashes or line breaks."
    if "name" in data:
        name = (data["name"] or "").strip()
        other = find_profile_by_name(name) if name else None
        if not name:
            errors["name"] = "Name is required."
        elif len(name) > 80:
            errors["name"] = "Name is longer than 80 characters."
        elif other is not None and (profile is None or other.id != profile.id):
            errors["name"] = f"A profile named {other.name!r} already exists."
    for host in ("mbg_sip_host", "pbx_sip_host", "mcs_host"):
        if data.get(host) and host_problem(data[host]):
            errors[host] = host_problem(data[host])
    for port in ("mbg_sip_port", "pbx_sip_port", "mcs_port"):
        if port in data and not (isinstance(data[port], int) and 1 <= data[port] <= 65535):
            errors[port] = "Port must be a number from 1 to 65535."
    for transport in ("mbg_sip_transport", "pbx_sip_transport"):
        if transport in data and data[transport] not in TRANSPORTS:
            errors[transport] = "Transport must be UDP, TCP or TLS."
    if "link_validity_hours" in data and not (
            isinstance(data["link_validity_hours"], int) and 1 <= data["link_validity_hours"] <= 8760):
        errors["link_validity_hours"] = "Link validity must be 1 to 8760 hours (one year)."
    if "client_types" in data:
        types = [t for t in (data["client_types"] or "").split(",") if t]
        if not types:
            errors["client_types"] = "Choose at least one client type."
        elif any(t not in CLIENT_TYPES for t in types):
            errors["client_types"] = f"Client types are {', '.join(CLIENT_TYPES)}."
    if data.get("voicemail_number") and not PHONE_RE.fullmatch(data["voicemail_number"]):
        errors["voicemail_number"] = "Voicemail number may hold only digits, spaces and + * # ( ) . -"
    if data.get("central_email"):
        try:
            data["central_email"] = check_address(str(data["central_email"]),
                                                  what="The centralized e-mail address")
        except AddressError as exc:
            errors["central_email"] = str(exc)
    if len(data.get("email_subject") or "") > 200:
        errors["email_subject"] = "The subject is longer than 200 characters."
    elif data.get("email_subject"):
        try:
            check_header_text(str(data["email_subject"]), "The e-mail subject")
        except AddressError as exc:
            errors["email_subject"] = str(exc)
    return errors


def save_profile(profile: DeploymentProfile | None, data: dict, *, actor: str | None = None,
                 make_default: bool = False) -> DeploymentProfile:
    """Create (profile=None) or change a profile; raises InvalidProfile, nothing written then."""
    data = {k: (v.strip() if isinstance(v, str) and k != "email_body" else v)
            for k, v in data.items() if k in PROFILE_FIELDS}
    if profile is not None and profile.is_do_not_deploy:
        if "name" in data and data["name"] != profile.name:
            raise InvalidProfile({"name": f"The built-in profile {DO_NOT_DEPLOY!r} cannot be renamed."})
        data = {k: v for k, v in data.items() if k in DO_NOT_DEPLOY_FIELDS}
    if isinstance(data.get("sip_algorithm"), str):
        data["sip_algorithm"] = {"MD5": "MD5", "SHA-256": "SHA-256", "SHA256": "SHA-256"}.get(
            data["sip_algorithm"].upper(), data["sip_algorithm"])
    for key in ("client", "sip_account", "sip_credential"):
        if isinstance(data.get(key), str):
            data[key] = data[key].lower()
    errors = validate_profile_fields(data, profile)
    if errors:
        raise InvalidProfile(errors)
    created = profile is None
    if created and "sip_credential" not in data:
        # The ha1 is the safer credential, and it needs the realm.
        data["sip_credential"] = "ha1" if data.get("sip_realm") else "password"
    if created:
        profile = DeploymentProfile()
        db.session.add(profile)
        for key, column in DeploymentProfile.__table__.columns.items():
            # Defaults now, so the completeness check below sees them.
            if key in PROFILE_FIELDS and getattr(profile, key) is None and column.default is not None \
                    and not callable(column.default.arg):
                setattr(profile, key, column.default.arg)
    changed = [k for k, v in data.items() if getattr(profile, k) != v]
    for key in changed:
        setattr(profile, key, data[key])
    incomplete = _registration_problems(profile)
    if incomplete:
        db.session.rollback()
        raise InvalidProfile(incomplete)
    if make_default and not profile.is_default:
        if profile.is_do_not_deploy:
            raise InvalidProfile({"name": f"{DO_NOT_DEPLOY!r} cannot be the default profile."})
        db.session.execute(update(DeploymentProfile).values(is_default=False))
        profile.is_default = True
        changed.append("default")
    db.session.flush()
    if changed and not created:
        # Everything the client downloads for these users may have changed.
        db.session.execute(update(User).where(User.profile_id == profile.id)
                           .values(config_version=User.config_version + 1))
    if created or changed:
        record_event("profile.create" if created else "profile.update", actor=actor,
                     detail={"profile": profile.name, "changed": changed}, commit=False)
    db.session.commit()
    return profile


def _registration_problems(profile: DeploymentProfile) -> dict[str, str]:
    """A profile of a kind that says so (Linphone: what a SIP registration needs) is refused
    incomplete. Others may be saved incomplete and filled in later (the built-in Default
    starts so); Deploy skips their users until they are complete, and the list says why."""
    kind = kind_of(profile)
    if profile.is_do_not_deploy or not kind.refuse_incomplete:
        return {}
    return {field: f"{kind.label} needs this: {message}." for field, message in kind.missing(profile).items()}


def delete_profile(profile: DeploymentProfile, *, reassign_to: DeploymentProfile | None = None,
                   actor: str | None = None) -> int:
    """Delete a profile. While users are on it this is refused (ProfileInUse) unless
    ``reassign_to`` is given: then they move there first, in the same transaction.
    Returns how many users moved."""
    if profile.is_do_not_deploy:
        raise ProfileError(f"The built-in profile {DO_NOT_DEPLOY!r} cannot be deleted.")
    if profile.is_default:
        raise ProfileError(f"{profile.name!r} is the default profile for new users: "
                           "make another profile the default first.")
    count = db.session.scalar(select(func.count(User.id)).where(User.profile_id == profile.id))
    moved = 0
    if count:
        if reassign_to is None:
            raise ProfileInUse(profile, count)
        if reassign_to.id == profile.id:
            raise ProfileError("Choose another profile to move the users to.")
        moved = db.session.execute(update(User).where(User.profile_id == profile.id).values(
            profile_id=reassign_to.id, config_version=User.config_version + 1)).rowcount
    name = profile.name
    db.session.delete(profile)
    detail = {"profile": name}
    if moved:
        detail.update(moved_users=moved, moved_to=reassign_to.name)
    record_event("profile.delete", actor=actor, count=moved or None, detail=detail, commit=False)
    db.session.commit()
    return moved
