"""The automation CLI: users, profiles, connections and jobs, with --json and clear errors."""
import json

from cds.extensions import db
from cds.models import User
from tests.fixtures.source_server import PASSWORD, USERNAME


def run(runner, *args, input=None):
    return runner.invoke(args=["cds", *args], input=input)


def test_users_add_show_list_edit_delete(app, runner):
    r = run(runner, "users", "add", "jdoe", "--last-name", "Doe", "--email", "jane@example.com",
            "--number", "+44 20 7946 0000", "--secret", "voicemail_pin", input="482913\n")
    assert r.exit_code == 0, r.output
    shown = json.loads(run(runner, "users", "show", "jdoe", "--json").output)
    assert shown["number"] == "+44 20 7946 0000" and shown["secrets"]["voicemail_pin"] is True
    assert "482913" not in run(runner, "users", "show", "jdoe").output
    listed = json.loads(run(runner, "users", "list", "--search", "doe", "--json").output)
    assert listed["total"] == 1
    r = run(runner, "users", "edit", "jdoe", "--login-id", "jane.doe")
    assert r.exit_code == 0 and "factory reset" in r.output
    with app.app_context():
        assert db.session.scalar(db.select(User).where(User.login_id == "jane.doe")).redeploy_required
    r = run(runner, "users", "delete", "jane.doe", "--yes")
    assert r.exit_code == 0 and "1 deleted" in r.output


def test_users_errors_are_one_line_and_non_zero(app, runner):
    r = run(runner, "users", "add", "x", "--email", "bad")
    assert r.exit_code == 1 and r.output.startswith("error: ")
    assert len(r.output.strip().splitlines()) == 1
    r = run(runner, "users", "show", "nobody")
    assert r.exit_code == 1 and "no user with Login ID 'nobody'" in r.output
    r = run(runner, "users", "add", "jdoe", "--last-name", "D", "--email", "j@example.com",
            "--profile", "Nope")
    assert r.exit_code == 1 and "no deployment profile named 'Nope'" in r.output


def test_profiles_commands(app, runner):
    r = run(runner, "profiles", "add", "Sales", "--mbg-sip-host", "mbg.example.com", "--mbg-sip-port", "5061")
    assert r.exit_code == 0, r.output
    assert run(runner, "profiles", "add", "Bad", "--mbg-sip-port", "70000").exit_code == 1
    run(runner, "users", "add", "jdoe", "--last-name", "Doe", "--email", "j@example.com", "--profile", "Sales")
    refused = run(runner, "profiles", "delete", "Sales")
    assert refused.exit_code == 1 and "used by 1 user" in refused.output
    assert run(runner, "profiles", "delete", "Sales", "--reassign-to", "Default").exit_code == 0
    names = {p["name"] for p in json.loads(run(runner, "profiles", "list", "--json").output)}
    assert names == {"Default", "Do Not Deploy"}
    assert run(runner, "profiles", "delete", "Do Not Deploy").exit_code == 1


def test_connections_commands_against_a_real_source(app, runner, make_source):
    server = make_source(3)
    r = run(runner, "connections", "add", "USA", "--kind", "usa", "--url", server.url,
            "--username", USERNAME, input=PASSWORD + "\n")
    assert r.exit_code == 0, r.output
    assert "Read 3 users" in run(runner, "connections", "test", "USA").output
    listed = json.loads(run(runner, "connections", "list", "--json").output)
    assert listed[0]["verified"] is True and PASSWORD not in json.dumps(listed)
    bad = run(runner, "connections", "add", "Other", "--kind", "usa", "--url", server.url,
              "--username", USERNAME, input="wrong\n")
    assert bad.exit_code == 1
    assert run(runner, "connections", "delete", "USA", "--yes").exit_code == 0


def test_jobs_list_and_cancel(app, runner):
    run(runner, "users", "add", "jdoe", "--last-name", "Doe", "--email", "j@example.com")
    from cds.jobs.service import create_job
    from cds.models import utcnow
    from datetime import timedelta
    from cds.profiles.service import default_profile
    with app.app_context():
        job = create_job("assign_profile", {"filter": {}}, params={"profile_id": default_profile().id},
                         run_at=utcnow() + timedelta(hours=2))
        job_id = job.id
    listed = json.loads(run(runner, "jobs", "list", "--json").output)
    assert listed[0]["state"] == "scheduled"
    assert run(runner, "jobs", "cancel", str(job_id)).exit_code == 0
    again = run(runner, "jobs", "cancel", str(job_id))
    assert again.exit_code == 1 and "already finished" in again.output


def test_roles_are_spelled_read_only_and_the_old_spelling_still_works(app, runner):
    from cds.models import AdminAccount
    result = runner.invoke(args=["cds", "create-admin", "rita", "--role", "read-only", "--password-stdin"],
                           input="correct horse battery\n")
    assert result.exit_code == 0 and "created (read-only)" in result.output
    result = runner.invoke(args=["cds", "create-admin", "otto", "--role", "readonly", "--password-stdin"],
                           input="correct horse battery\n")
    assert result.exit_code == 0 and "created (read-only)" in result.output
    result = runner.invoke(args=["cds", "create-admin", "--help"])
    assert "read-only" in result.output and "readonly" not in result.output
    result = runner.invoke(args=["cds", "create-api-token", "ci", "--role", "readonly"])
    assert result.exit_code == 0, result.output
    assert '"role": "read-only"' in runner.invoke(args=["cds", "list-api-tokens", "--json"]).output
    # Roles change from the shell too; the last active primary administrator keeps the role.
    runner.invoke(args=["cds", "create-admin", "pat", "--role", "primary", "--password-stdin"],
                  input="correct horse battery\n")
    result = runner.invoke(args=["cds", "set-admin-role", "rita", "admin"])
    assert result.exit_code == 0 and "read-only → admin" in result.output
    result = runner.invoke(args=["cds", "set-admin-role", "pat", "read-only"])
    assert result.exit_code == 1 and "last primary administrator" in result.output
    with app.app_context():
        roles = dict(db.session.execute(db.select(AdminAccount.username, AdminAccount.role)).all())
    assert roles == {"rita": "admin", "otto": "readonly", "pat": "primary"}
