"""One error family (cds/errors.py), one renderer per surface: a service's refusal has
the same status on a page, in an htmx fragment and in the API, and the same message
in the shell."""
from __future__ import annotations

import pytest

from cds import errors
from cds.settings.tokens import TokenError, TokenNotFound
from cds.auth.service import AccountError
from cds.connections.service import ConnectionNotFound, ConnectionProblem
from cds.jobs.service import InvalidJob, JobError, JobFinished, JobNotFound
from cds.profiles.service import InvalidProfile, ProfileError, ProfileInUse, ProfileNotFound
from cds.imports.csv_import import CsvProblem, CsvRejected
from cds.users.errors import InvalidQuery, InvalidUser, NotFound, UserError


@pytest.mark.parametrize("exc,status", [
    (JobNotFound, 404), (JobFinished, 409), (InvalidJob, 422), (NotFound, 404), (UserError, 409),
    (InvalidQuery, 422), (ProfileNotFound, 404), (ProfileError, 409), (TokenNotFound, 404),
    (TokenError, 422), (AccountError, 422), (ConnectionNotFound, 404), (ConnectionProblem, 422),
    (CsvProblem, 422), (CsvRejected, 422)])
def test_service_errors_belong_to_the_family(exc, status):
    assert issubclass(exc, errors.CdsError) and exc.status == status
    assert issubclass(JobNotFound, JobError) and issubclass(ProfileNotFound, ProfileError)
    assert issubclass(InvalidUser, errors.Invalid) and issubclass(InvalidProfile, errors.Invalid)
    assert issubclass(ProfileInUse, errors.Conflict)


def test_invalid_carries_its_field_errors():
    exc = InvalidUser({"email": "Email address is not valid.", "login_id": "Login ID is required."})
    assert exc.status == 422 and exc.errors["email"] == "Email address is not valid."
    assert str(exc) == exc.message == "Email address is not valid.; Login ID is required."


def test_a_missing_job_is_404_on_page_fragment_and_api_and_one_line_in_the_shell(
        app, admin_client, api, runner):
    message = "Job 424242 does not exist (finished jobs are pruned after a while)."
    page = admin_client.get("/jobs/424242")
    assert page.status_code == 404 and message in page.get_data(as_text=True)
    fragment = admin_client.get("/jobs/424242/progress", headers={"HX-Request": "true"})
    assert fragment.status_code == 404 and fragment.headers["HX-Retarget"] == "#toasts"
    assert message in fragment.get_data(as_text=True)
    resp = api.get("/api/v1/jobs/424242")
    assert resp.status_code == 404 and resp.get_json() == {"error": "not_found", "message": message,
                                                           "details": None}
    result = runner.invoke(args=["cds", "jobs", "show", "424242"])
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == f"error: {message}"


def test_a_missing_profile_is_404_on_page_and_api_and_a_refusal_changes_nothing(app, admin_client, api):
    assert admin_client.get("/profiles/424242").status_code == 404
    assert api.get("/api/v1/profiles/424242").status_code == 404
    # The built-in profile cannot be deleted: 409 on the page and in the API.
    from cds.extensions import db
    from cds.models import DeploymentProfile
    with app.app_context():
        builtin = db.session.scalar(db.select(DeploymentProfile.id).where(DeploymentProfile.name == "Do Not Deploy"))
    page = admin_client.post(f"/profiles/{builtin}/delete", headers={"HX-Request": "true"})
    assert page.status_code == 409 and "cannot be deleted" in page.get_data(as_text=True)
    resp = api.delete(f"/api/v1/profiles/{builtin}")
    assert resp.status_code == 409 and "cannot be deleted" in resp.get_json()["message"]
    with app.app_context():
        assert db.session.get(DeploymentProfile, builtin) is not None
