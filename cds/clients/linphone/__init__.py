"""Linphone (and the apps built on liblinphone), through liblinphone's remote provisioning.

The e-mail's link and QR code hold CDS's own provisioning URL for the deployment's
token (liblinphone follows no redirect). The client's GET of it consumes the token
and receives an lpconfig XML document whose ``[misc] config-uri`` is a per-device
URL; the client fetches that at every start. docs/linphone.md tells the whole story;
cds/clients/linphone/service.py serves both URLs.
"""
from __future__ import annotations

from cds.clients.kind import ClientKind, InstallLink
from cds.settings.service import public_url

FIRST_FETCH_PATH = "/provisioning/linphone/"
DEVICE_PATH = "/provisioning/linphone/device/"


class Linphone(ClientKind):
    key = "linphone"
    label = "Linphone"
    routes = "cds.clients.linphone.routes"
    app_name = "Linphone app"
    revoke_note = ("Linphone keeps the SIP account it has cached and can still register with it: "
                   "change the user's SIP password on the PBX (and in CDS) to end that.")
    # A SIP client cannot register without these: refuse to save a profile lacking them.
    refuse_incomplete = True
    install_links = (
        InstallLink("App Store", "https://apps.apple.com/app/linphone/id360065638"),
        InstallLink("Google Play", "https://play.google.com/store/apps/details?id=org.linphone"),
        InstallLink("Desktop (Windows, macOS, Linux)", "https://www.linphone.org/en/download/"),
    )
    instructions = (
        "1. Install Linphone on your phone (App Store or Google Play) or computer (linphone.org).\n"
        "2. On the phone, open the link in this e-mail and tap \"Open in Linphone\"; or, in\n"
        "   Linphone, open the assistant, choose \"Fetch remote configuration\" and scan the QR code.\n"
        "3. Linphone sets itself up. You will not be asked for a password."
    )

    qr_step = ("In Linphone, open the assistant, choose \"Fetch remote configuration\" and scan this QR "
               "code. In Linphone on a computer, paste the link below there instead.")

    def missing(self, profile) -> dict[str, str]:
        missing = {}
        teleworker = profile.sip_account == "teleworker"
        host = profile.mbg_sip_host if teleworker else profile.pbx_sip_host
        if not host:
            missing["mbg_sip_host" if teleworker else "pbx_sip_host"] = (
                "no registrar host (set the " + ("Teleworker (MBG) SIP host" if teleworker else "PBX SIP host")
                + ", where Linphone registers)")
        if not profile.sip_domain:
            missing["sip_domain"] = "no SIP domain (the domain of the user's SIP address)"
        if profile.sip_credential == "ha1" and not profile.sip_realm:
            missing["sip_realm"] = ("no digest realm (the ha1 credential is computed with it: set the "
                                    "registrar's realm, or send the password instead)")
        return missing

    def user_missing(self, user) -> list[str]:
        teleworker = user.profile.sip_account == "teleworker"
        name = user.mbg_sip_username if teleworker else user.pbx_sip_username
        label = "MBG SIP user name" if teleworker else "PBX SIP user name"
        secret = "teleworker_sip_password" if teleworker else "pbx_sip_password"
        missing = []
        if not name:
            missing.append(f"has no {label}")
        if not user.has_secret(secret):
            missing.append("has no " + ("Teleworker SIP password" if teleworker else "PBX SIP password"))
        return missing

    def link(self, token: str) -> str:
        return f"{public_url()}{FIRST_FETCH_PATH}{token}"

    def app_link(self, link: str) -> str:
        # The Linphone apps register the linphone-config: scheme for remote provisioning.
        return f"linphone-config:{link}"


KIND = Linphone()
