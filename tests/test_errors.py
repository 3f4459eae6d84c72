"""One error family (cds/errors.py), one renderer per surface: a service's refusal has
the same status on a page, in an htmx fragment and in the API, and the same message
in the shell."""
from __future__ import annotations

import pytest

from cds import errors
from cds.api.blueprint import ApiError
from cds.audit.service import InvalidAuditQuery
from cds.auth.service import AccountError
from cds.client.service import ClientError
from cds.connections.service import ConnectionNotFound, ConnectionProblem
from cds.deploy.service import DeployError
from cds.imports.csv_import import CsvProblem, CsvRejected
from cds.jobs.service import InvalidJob, JobError, JobFinished, JobNotFound
from cds.mail.compose import TemplateProblem
from cds.profiles.service import InvalidProfile, ProfileError, ProfileInUse, ProfileNotFound
from cds.settings.tokens import TokenError, TokenNotFound
from cds.sources import SourceAuthError, SourceError, SourceLimitError, SourceUnreachable
from cds.users.errors import InvalidQuery, InvalidUser, NotFound, UserError
from tests.conftest import free_port
from tests.fixtures.source_server import PASSWORD, USERNAME


@pytest.mark.parametrize("exc,status", [
    (JobNotFound, 404), (JobFinished, 409), (InvalidJob, 422), (NotFound, 404), (UserError, 409),
    (InvalidQuery, 422), (ProfileNotFound, 404), (ProfileError, 409), (TokenNotFound, 404),
    (TokenError, 422), (AccountError, 422), (ConnectionNotFound, 404), (ConnectionProblem, 422),
    (InvalidAuditQuery, 400), (TemplateProblem, 422), (DeployError, 409), (SourceError, 409),
    (SourceAuthError, 409), (SourceUnreachable, 409), (SourceLimitError, 409), (CsvProblem, 422),
    (CsvRejected, 422)])
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


def test_the_api_and_the_client_protocol_errors_are_of_the_family_with_their_own_status():
    refused = ApiError(429, "rate_limited", "Slow down.", None, {"Retry-After": "5"})
    assert isinstance(refused, errors.CdsError) and (refused.status, refused.code) == (429, "rate_limited")
    gone = ClientError(410, "link_used", "This link has already been used.")
    assert isinstance(gone, errors.CdsError) and (gone.status, gone.error, gone.code) == (410, "link_used", "link_used")
    assert gone.message == str(gone) == "This link has already been used."


def test_a_bad_audit_filter_is_400_with_the_same_message_on_the_export_and_in_the_api(admin_client, api):
    message = "The time range ends before it starts."
    query = "since=2026-11-02T00:00&until=2026-11-01T00:00"
    page = admin_client.get(f"/audit/export.csv?{query}")
    assert page.status_code == 400 and message in page.get_data(as_text=True)
    resp = api.get(f"/api/v1/audit-events?{query}")
    assert resp.status_code == 400 and resp.get_json() == {"error": "bad_request", "message": message,
                                                           "details": None}


def test_a_source_that_cannot_be_read_is_409_in_the_api_and_one_line_in_the_shell(app, api, runner,
                                                                                 make_source):
    server = make_source(3)
    added = runner.invoke(args=["cds", "connections", "add", "USA", "--kind", "usa", "--url", server.url,
                                "--username", USERNAME], input=PASSWORD + "\n")
    assert added.exit_code == 0, added.output
    from cds.extensions import db
    from cds.models import Connection
    with app.app_context():
        conn = db.session.scalar(db.select(Connection))
        conn.url, conn.options = f"http://127.0.0.1:{free_port()}", {**(conn.options or {}), "timeout": 1}
        db.session.commit()
        conn_id = conn.id
    resp = api.post(f"/api/v1/connections/{conn_id}/sync")
    body = resp.get_json()
    assert resp.status_code == 409 and body["error"] == "conflict" and "cannot be reached" in body["message"]
    result = runner.invoke(args=["cds", "connections", "test", "USA"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"error: {body['message']}"
