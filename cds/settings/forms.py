"""Forms of the e-mail settings pages."""
from __future__ import annotations

import re

from flask_wtf import FlaskForm
from wtforms import BooleanField, IntegerField, PasswordField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, Length, NumberRange, Optional, ValidationError

from cds.mail.addresses import AddressError, check_address, check_header_text, check_sender

_HOST = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
                   r"|^\d{1,3}(\.\d{1,3}){3}$|^\[[0-9A-Fa-f:.]+\]$")


class MailSettingsForm(FlaskForm):
    server = StringField("SMTP server", validators=[Optional(), Length(max=253)],
                         description="Host name or address. Empty: messages go to the Outbox.")
    port = IntegerField("Port", validators=[DataRequired("Give a port number."), NumberRange(1, 65535)])
    security = SelectField("Security", choices=[("none", "None (plain SMTP)"),
                                                ("starttls", "STARTTLS"), ("ssl", "SSL/TLS (implicit)")])
    username = StringField("User name", validators=[Optional(), Length(max=255)])
    password = PasswordField("Password", validators=[Optional(), Length(max=255)],
                             description="Leave empty to keep the stored password.")
    clear_password = BooleanField("Remove the stored password")
    sender = StringField("Sender", validators=[DataRequired("Give the sender address."), Length(max=254)],
                         description='The From address, e.g. "IT Service Desk <it@example.com>".')
    rate_limit = IntegerField("Rate limit (messages per minute)", validators=[NumberRange(0, 100000)],
                              default=0, description="0 = as fast as the server accepts.")

    def validate_server(self, field):
        if field.data and not _HOST.match(field.data.strip()):
            raise ValidationError("Not a valid host name or address.")

    def validate_sender(self, field):
        try:
            field.data = check_sender(field.data or "")
        except AddressError as exc:
            raise ValidationError(str(exc)) from None

    def to_settings(self) -> dict:
        values = {
            "MAIL_SERVER": (self.server.data or "").strip(),
            "MAIL_PORT": self.port.data,
            "MAIL_USE_TLS": self.security.data == "starttls",
            "MAIL_USE_SSL": self.security.data == "ssl",
            "MAIL_USERNAME": (self.username.data or "").strip(),
            "MAIL_DEFAULT_SENDER": self.sender.data.strip(),
            "MAIL_RATE_LIMIT": self.rate_limit.data or 0,
        }
        if self.clear_password.data:
            values["MAIL_PASSWORD"] = ""
        elif self.password.data:
            values["MAIL_PASSWORD"] = self.password.data
        return values


class TestMailForm(FlaskForm):
    to = StringField("Send a test e-mail to", validators=[DataRequired("Give an address."), Length(max=254)])

    def validate_to(self, field):
        try:
            field.data = check_address(field.data or "")
        except AddressError as exc:
            raise ValidationError(str(exc)) from None


class TemplateForm(FlaskForm):
    subject = StringField("Subject", validators=[Length(max=500)])

    def validate_subject(self, field):
        try:
            check_header_text(field.data or "", "The subject template")
        except AddressError as exc:
            raise ValidationError(str(exc)) from None
    text = TextAreaField("Plain-text body", validators=[Length(max=20000)])
    html = TextAreaField("HTML body", validators=[Length(max=100000)])
