"""What a client kind is: the attributes and methods each kind (one module in
cds/clients/) sets or overrides."""
from __future__ import annotations

from dataclasses import dataclass


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
