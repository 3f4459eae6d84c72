"""Client kinds: which client a deployment profile's users run.

Each kind is one module holding one ``ClientKind``: what a profile must have for
its clients to work, how the deployment link and QR code are formed, what the
phone button on the landing page opens, and the words of the e-mail and landing
page. The configuration document is the kind's own (cds/client for protocol v1,
cds/clients/linphone for Linphone). Another client is one more module listed in
``_MODULES`` and so one more choice in the profile; nothing else changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

# The modules that define a kind, in the order the profile form offers them.
_MODULES = ("cds.clients.cds_v1", "cds.clients.linphone")
DEFAULT_KIND = "cds-v1"


@dataclass(frozen=True)
class InstallLink:
    label: str
    url: str


class ClientKind:
    """One client kind. Subclasses set the attributes and override what differs."""

    key: str = ""            # stored in DeploymentProfile.client and named by the API and CLI
    label: str = ""          # shown in the profile form and list
    app_name: str = ""       # "the ___ app" in the e-mail and on the landing page
    install_links: tuple[InstallLink, ...] = ()
    # The user's steps, as the deployment e-mail's {{ instructions }} placeholder says them.
    instructions: str = ""
    # The landing page's step for a computer, beside the QR code.
    qr_step: str = "Scan this QR code with the phone's camera."
    # What the console says when the app's access is revoked (revoke, ID change, delete).
    revoke_note: str = ""
    # True: a profile of this kind is refused (not saved) while ``missing`` finds something.
    refuse_incomplete: bool = False
    # The module holding the blueprint (``bp``) of the kind's own endpoints for apps, under
    # /provisioning/<key>/ (public, session-less, tokens kept out of the logs); create_app
    # registers it. Named, not imported: routes sit above the kinds the services use.
    routes: str | None = None

    def missing(self, profile) -> dict[str, str]:
        """What ``profile`` lacks for this kind's clients to work, {profile field: what is
        missing} (empty: complete)."""
        return {}

    def user_missing(self, user) -> list[str]:
        """What ``user`` lacks for this kind's clients to work (empty: deployable)."""
        return []

    def link(self, token: str) -> str:
        """The deployment link of the e-mail; the QR code holds the same text."""
        raise NotImplementedError

    def app_link(self, link: str) -> str:
        """The deep link that opens the installed app with ``link`` (the landing page's button)."""
        raise NotImplementedError

    def uses_redirect(self) -> bool:
        """Whether the link goes through the redirect server (so is registered with it)."""
        return False


def _load() -> dict[str, ClientKind]:
    kinds = {}
    for name in _MODULES:
        kind = import_module(name).KIND
        kinds[kind.key] = kind
    return kinds


KINDS: dict[str, ClientKind] = _load()
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
