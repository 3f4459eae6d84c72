"""CDS client protocol v1 (docs/client-protocol.md): our own protocol,
for a MiCollab-style app. The link goes through the redirect server; the app
activates with the token and downloads the JSON configuration (cds/client)."""
from __future__ import annotations

from urllib.parse import quote

from cds.clients.kind import ClientKind, InstallLink
from cds.settings.service import redirect_url

# The app registers this URI scheme; docs/client-protocol.md §1 "Opening the app".
APP_SCHEME = "cds-client"


class CdsV1(ClientKind):
    key = "cds-v1"
    label = "CDS client protocol v1"
    app_name = "MiCollab app"
    install_links = (
        InstallLink("App Store", "https://apps.apple.com/us/search?term=MiCollab"),
        InstallLink("Google Play", "https://play.google.com/store/search?q=MiCollab&c=apps"),
    )
    instructions = (
        "1. Install the MiCollab app on your phone (App Store or Google Play) or computer.\n"
        "2. On that device, open the link in this e-mail, or scan the QR code with the phone's camera.\n"
        "3. The app sets itself up. You will not be asked for a password."
    )

    qr_step = ("Scan this QR code with the phone's camera, or open the link from your e-mail on the "
               "computer where the app is installed.")

    def missing(self, profile) -> dict[str, str]:
        # The configuration document carries these hosts; without them the app has
        # nowhere to register or sign in.
        missing = {}
        if not (profile.pbx_sip_host or profile.mbg_sip_host):
            missing["pbx_sip_host"] = "no SIP host (set the PBX SIP host or the Teleworker (MBG) SIP host)"
        if not profile.mcs_host:
            missing["mcs_host"] = "no MiCollab Client Service host"
        return missing

    def link(self, token: str) -> str:
        return f"{redirect_url()}/r/{token}"

    def app_link(self, link: str) -> str:
        return f"{APP_SCHEME}://activate?link={quote(link, safe='')}"

    def uses_redirect(self) -> bool:
        return True


KIND = CdsV1()
