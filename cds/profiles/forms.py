"""The deployment profile form. The rules live in cds/profiles/service.py."""
from flask_wtf import FlaskForm
from wtforms import (BooleanField, EmailField, IntegerField, SelectField, SelectMultipleField,
                     StringField, TextAreaField)
from wtforms.validators import InputRequired, NumberRange, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from cds.clients import CHOICES as CLIENT_CHOICES, DEFAULT_KIND
from cds.models import CLIENT_TYPES, SIP_ALGORITHMS, TRANSPORTS


def _strip(value):
    return value.strip() if isinstance(value, str) else value


def _port(label, default):
    return IntegerField(label, default=default, validators=[
        InputRequired("Port is required."), NumberRange(1, 65535, "Port must be a number from 1 to 65535.")])


class CheckboxListField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class ProfileForm(FlaskForm):
    name = StringField("Name", filters=[_strip])
    description = TextAreaField("Description", filters=[_strip])
    client_types = CheckboxListField("Client types", choices=[(c, c.capitalize()) for c in CLIENT_TYPES],
                                     default=list(CLIENT_TYPES))
    client = SelectField("Client", choices=CLIENT_CHOICES, default=DEFAULT_KIND)
    sip_account = SelectField("SIP account the client registers with", default="pbx", choices=[
        ("pbx", "PBX SIP account (PBX SIP host)"), ("teleworker", "Teleworker account through the MBG")])
    sip_domain = StringField("SIP domain", filters=[_strip])
    sip_realm = StringField("Digest realm", filters=[_strip])
    sip_algorithm = SelectField("Digest algorithm", choices=SIP_ALGORITHMS, default="MD5")
    sip_credential = SelectField("Credential sent to the client", default="ha1", choices=[
        ("ha1", "ha1 (needs the realm)"), ("password", "The password")])
    mbg_sip_host = StringField("MBG / teleworker SIP host", filters=[_strip])
    mbg_sip_port = _port("MBG SIP port", 5061)
    mbg_sip_transport = SelectField("MBG SIP transport", choices=TRANSPORTS, default="TLS")
    pbx_sip_host = StringField("PBX SIP host", filters=[_strip])
    pbx_sip_port = _port("PBX SIP port", 5060)
    pbx_sip_transport = SelectField("PBX SIP transport", choices=TRANSPORTS, default="UDP")
    mcs_host = StringField("MiCollab Client Service host", filters=[_strip])
    mcs_port = _port("MiCollab Client Service port", 443)
    voicemail_number = StringField("Voicemail number", filters=[_strip])
    link_validity_hours = IntegerField("Link validity (hours)", default=96, validators=[
        InputRequired("Link validity is required."),
        NumberRange(1, 8760, "Link validity must be 1 to 8760 hours (one year).")])
    central_email = EmailField("Centralized deployment e-mail address", filters=[_strip],
                               validators=[Optional()])
    email_subject = StringField("E-mail subject override", filters=[_strip])
    email_body = TextAreaField("E-mail body override")
    make_default = BooleanField("Default profile for new users")

    def values(self) -> dict:
        data = {name: getattr(self, name).data for name in (
            "name", "description", "mbg_sip_host", "mbg_sip_port", "mbg_sip_transport",
            "pbx_sip_host", "pbx_sip_port", "pbx_sip_transport", "mcs_host", "mcs_port",
            "voicemail_number", "link_validity_hours", "central_email", "email_subject", "email_body",
            "client", "sip_account", "sip_domain", "sip_realm", "sip_algorithm", "sip_credential")}
        data["client_types"] = ",".join(c for c in CLIENT_TYPES if c in (self.client_types.data or []))
        return {k: ("" if v is None else v) for k, v in data.items()}

    def add_errors(self, errors: dict) -> None:
        """Errors found by the service, each at its field (unless the form already objected)."""
        for name, message in errors.items():
            field = getattr(self, name, None) or self.name
            if not field.errors:
                field.errors = [message]


class DeleteProfileForm(FlaskForm):
    reassign_to = SelectField("Move its users to", coerce=int, validate_choice=False)
