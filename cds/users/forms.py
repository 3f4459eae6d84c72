"""The add / edit user form. Field rules live in cds/users/service.py (shared with
the CSV import and the API); the form applies them and shows the messages inline."""
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField, SelectField, StringField
from wtforms.validators import ValidationError

from cds.models import USER_SECRETS
from cds.users.service import MAX_SECRET_LENGTH, USER_FIELD_LABELS, validate_user_fields

SECRET_INPUT = {"maxlength": MAX_SECRET_LENGTH}


def service_rule(form, field):
    """Apply the shared rule for this field (length, characters, e-mail syntax…)."""
    errors = validate_user_fields({field.name: (field.data or "").strip()})
    if field.name in errors:
        raise ValidationError(errors[field.name])


def _text(name, **kw):
    return StringField(USER_FIELD_LABELS[name], validators=[service_rule],
                       filters=[lambda v: v.strip() if isinstance(v, str) else v], **kw)


class ProfileChoiceMixin:
    def set_profiles(self, profiles):
        self.profile_id.choices = [(p.id, p.name) for p in profiles]


class UserForm(ProfileChoiceMixin, FlaskForm):
    """A manual (or CSV) user: every field a user has. Secrets are write-only:
    the form never carries a stored value, only a new one or "clear"."""
    login_id = _text("login_id")
    profile_id = SelectField("Profile", coerce=int)
    first_name = _text("first_name")
    last_name = _text("last_name")
    number = _text("number")
    pbx_number = _text("pbx_number")
    pbx_sip_username = _text("pbx_sip_username")
    mbg_sip_username = _text("mbg_sip_username")
    mcs_account = _text("mcs_account")
    email = EmailField(USER_FIELD_LABELS["email"], validators=[service_rule],
                       filters=[lambda v: v.strip() if isinstance(v, str) else v])

    # The length rule is the service's (secret_problem); maxlength only helps the browser.
    mcs_password = PasswordField(USER_SECRETS["mcs_password"], render_kw=SECRET_INPUT)
    mcs_password_clear = BooleanField("Clear")
    pbx_sip_password = PasswordField(USER_SECRETS["pbx_sip_password"], render_kw=SECRET_INPUT)
    pbx_sip_password_clear = BooleanField("Clear")
    teleworker_sip_password = PasswordField(USER_SECRETS["teleworker_sip_password"], render_kw=SECRET_INPUT)
    teleworker_sip_password_clear = BooleanField("Clear")
    voicemail_pin = PasswordField(USER_SECRETS["voicemail_pin"], render_kw=SECRET_INPUT)
    voicemail_pin_clear = BooleanField("Clear")

    text_fields = ("login_id", "first_name", "last_name", "number", "pbx_number",
                   "pbx_sip_username", "mbg_sip_username", "mcs_account", "email")

    def values(self) -> dict:
        out = {name: getattr(self, name).data or "" for name in self.text_fields}
        out["profile_id"] = self.profile_id.data
        return out

    def secret_changes(self) -> dict:
        """{name: new value} to replace, {name: None} to clear; untouched secrets are absent."""
        changes = {}
        for name in USER_SECRETS:
            if getattr(self, f"{name}_clear").data:
                changes[name] = None
            elif getattr(self, name).data:
                changes[name] = getattr(self, name).data
        return changes

    def validate(self, extra_validators=None) -> bool:
        ok = super().validate(extra_validators)
        for name in USER_SECRETS:
            if getattr(self, f"{name}_clear").data and getattr(self, name).data:
                getattr(self, name).errors.append("Either type a new value or tick Clear, not both.")
                ok = False
        return ok

    def add_errors(self, errors: dict) -> None:
        """Errors found by the service (e.g. a Login ID already taken) shown at their field."""
        for name, message in errors.items():
            field = getattr(self, name, None)
            if field is not None and message not in field.errors:
                field.errors = list(field.errors) + [message]


class ImportedUserForm(ProfileChoiceMixin, FlaskForm):
    """An imported user: its source owns every field but the profile."""
    profile_id = SelectField("Profile", coerce=int)

    def values(self) -> dict:
        return {"profile_id": self.profile_id.data}

    def secret_changes(self) -> dict:
        return {}

    def add_errors(self, errors: dict) -> None:
        for name, message in errors.items():
            field = getattr(self, name, None) or self.profile_id
            field.errors = list(field.errors) + [message]
