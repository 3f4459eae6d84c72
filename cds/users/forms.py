"""The add / edit user forms, built from the field table (cds/users/fields.py): one
text input per field, with the table's label, rule and hint, and one per secret.
The rules are the service's; the form applies them and shows the messages inline."""
from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField, SelectField, StringField
from wtforms.validators import ValidationError

from cds.users.fields import FIELDS, MAX_SECRET_LENGTH, USER_SECRETS, validate_user_fields

SECRET_INPUT = {"maxlength": MAX_SECRET_LENGTH}
INPUTS = {"text": StringField, "email": EmailField}


def service_rule(form, field):
    """Apply the shared rule for this field (length, characters, e-mail syntax…)."""
    errors = validate_user_fields({field.name: (field.data or "").strip()})
    if field.name in errors:
        raise ValidationError(errors[field.name])


def _strip(value):
    return value.strip() if isinstance(value, str) else value


# Built in the order the error list above a form names them: the fields, the profile,
# then each secret with its "Clear" box.
_TEXT_FIELDS = {spec.name: INPUTS[spec.input](spec.label, validators=[service_rule], filters=[_strip])
                for spec in FIELDS}
_PROFILE_FIELD = SelectField("Profile", coerce=int)
# The length rule is the service's (secret_problem); maxlength only helps the browser.
_SECRET_FIELDS = {}
for _name, _label in USER_SECRETS.items():
    _SECRET_FIELDS[_name] = PasswordField(_label, render_kw=SECRET_INPUT)
    _SECRET_FIELDS[f"{_name}_clear"] = BooleanField("Clear")


class ProfileChoiceMixin:
    def set_profiles(self, profiles):
        self.profile_id.choices = [(p.id, p.name) for p in profiles]


class SecretFields:
    """One password input and one "Clear" box per secret. Write-only: the form never
    carries a stored value, only a new one or "clear"."""

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


for _name, _unbound in _SECRET_FIELDS.items():
    setattr(SecretFields, _name, _unbound)


class UserForm(SecretFields, ProfileChoiceMixin, FlaskForm):
    """A manual (or CSV) user: every field of the table, the profile and the secrets."""
    profile_id = _PROFILE_FIELD

    field_specs = FIELDS
    text_fields = tuple(f.name for f in FIELDS)

    def values(self) -> dict:
        out = {name: getattr(self, name).data or "" for name in self.text_fields}
        out["profile_id"] = self.profile_id.data
        return out

    def add_errors(self, errors: dict) -> None:
        """Errors found by the service (e.g. a Login ID already taken) shown at their field."""
        for name, message in errors.items():
            field = getattr(self, name, None)
            if field is not None and message not in field.errors:
                field.errors = list(field.errors) + [message]


class ImportedUserForm(ProfileChoiceMixin, FlaskForm):
    """An imported user's page changes only its profile (its source owns the fields)."""
    profile_id = _PROFILE_FIELD

    def values(self) -> dict:
        return {"profile_id": self.profile_id.data}

    def secret_changes(self) -> dict:
        return {}

    def add_errors(self, errors: dict) -> None:
        for name, message in errors.items():
            field = getattr(self, name, None) or self.profile_id
            field.errors = list(field.errors) + [message]


for _name, _unbound in _TEXT_FIELDS.items():
    setattr(UserForm, _name, _unbound)
