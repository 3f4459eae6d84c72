"""Client kinds: which client a deployment profile's users run.

Each kind is one module holding one ``ClientKind``: what a profile must have for
its clients to work, how the deployment link and QR code are formed, what the
phone button on the landing page opens, and the words of the e-mail and landing
page. The configuration document is the kind's own (cds/client for protocol v1,
cds/clients/linphone for Linphone). Another client is one more module (a subclass of
``cds.clients.kind.ClientKind``) imported and listed below, and so one more choice in
the profile; nothing else changes.
"""
from __future__ import annotations

from cds.clients import cds_v1, linphone
from cds.clients.kind import ClientKind

DEFAULT_KIND = "cds-v1"


# Every kind, in the order the profile form offers them.
KINDS: dict[str, ClientKind] = {kind.key: kind for kind in (cds_v1.KIND, linphone.KIND)}
CHOICES = tuple((k.key, k.label) for k in KINDS.values())


def kind_named(key: str | None) -> ClientKind:
    """The kind stored under ``key``; an unknown or empty key is protocol v1 (the default)."""
    return KINDS.get(key or DEFAULT_KIND) or KINDS[DEFAULT_KIND]


def kind_of(profile) -> ClientKind:
    return kind_named(getattr(profile, "client", None))


def profile_problems(profile) -> list[str]:
    """What a profile lacks for its users' clients to work, as its client kind says.
    "Do Not Deploy" sends nothing, so it lacks nothing."""
    if profile is None or profile.is_do_not_deploy:
        return []
    return list(kind_of(profile).missing(profile).values())


def profile_refusal(profile) -> str | None:
    """Why Deploy skips every user of ``profile`` (a job report reason), or None."""
    kind = kind_of(profile)
    missing = list(kind.missing(profile).values())
    if missing:
        return f"Profile {profile.name!r} is incomplete for {kind.label}: {'; '.join(missing)}."
    return None


def checks_users(profile) -> bool:
    """Whether the profile's kind asks something of each user (``user_missing``)."""
    return type(kind_of(profile)).user_missing is not ClientKind.user_missing


def deploy_problem(user) -> str | None:
    """Why ``user`` cannot be deployed as their profile stands (a job report reason), or None."""
    refusal = profile_refusal(user.profile)
    if refusal is not None:
        return refusal
    kind = kind_of(user.profile)
    missing = kind.user_missing(user)
    if missing:
        return f"The user {'; '.join(missing)} ({kind.label} needs it)."
    return None
