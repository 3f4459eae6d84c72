"""Schemathesis fuzzes the running API from its OpenAPI document with a valid token:
no server error, no undocumented status, no response outside its schema."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cds.extensions import db
from cds.models import User
from tests.e2e.conftest import LiveServer

CHECKS = ("not_a_server_error,status_code_conformance,response_schema_conformance,"
          "content_type_conformance")


@pytest.fixture
def fuzz_server(make_app, app):
    live = make_app(JOB_EXECUTION="inline", API_RATE_LIMIT="100000/minute")
    server = LiveServer(live)
    live.config["PUBLIC_URL"] = server.url
    server.start()
    yield server
    server.stop()


def test_schemathesis_finds_no_server_error_or_contract_violation(fuzz_server, tmp_path):
    exe = Path(sys.executable).parent / "schemathesis"
    if not exe.exists() and not shutil.which("schemathesis"):
        pytest.skip("schemathesis is not installed (requirements-dev.txt)")
    app = fuzz_server.app
    from cds.settings.tokens import create_api_token
    from cds.profiles.service import default_profile
    with app.app_context():
        _, token = create_api_token("fuzz", "admin")
        prof = default_profile()
        db.session.add_all(User(login_id=f"fz{i}", last_name=f"Fuzz{i}", email=f"fz{i}@example.com",
                                profile_id=prof.id) for i in range(5))
        db.session.commit()
    cmd = [str(exe) if exe.exists() else "schemathesis", "run",
           f"{fuzz_server.url}/api/v1/openapi.json",
           "--url", f"{fuzz_server.url}/api/v1",
           "-H", f"Authorization: Bearer {token}",
           "--checks", CHECKS,
           "--max-examples", os.environ.get("CDS_FUZZ_EXAMPLES", "25"),
           "--seed", "20261124",
           "--request-timeout", "20",
           "--phases", "examples,coverage,fuzzing",
           "--suppress-health-check", "all"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, SCHEMATHESIS_HOOKS="", NO_COLOR="1"),
                          cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]


def _nested(depth: int) -> dict:
    body: dict = {"leaf": 1}
    for _ in range(depth):
        body = {"a": body}
    return body


HOSTILE_BODIES = {
    # Far deeper than any CDS document (json.dumps itself stops near 1,000 levels).
    "deeply nested": _nested(500),
    "deeply nested list": {"ids": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]},
    # A lone UTF-16 surrogate: valid JSON escape, no valid character.
    "lone surrogate": {"name": "\ud800", "login_id": "\udfff", "last_name": "\ud800x",
                       "csv": "Login ID\r\n\ud800", "filter": {"search": "\ud800"}},
}


def test_schemathesis_sends_nested_bodies_and_lone_surrogates_to_every_write(fuzz_server):
    """Every operation that takes a JSON body, sent each hostile body by schemathesis:
    a documented 4xx in the API's error shape, never a server error."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                                   status_code_conformance)
    app = fuzz_server.app
    from cds.settings.tokens import create_api_token
    from cds.profiles.service import default_profile
    with app.app_context():
        _, token = create_api_token("hostile", "admin")
        profile_id = default_profile().id
        user = User(login_id="hz1", last_name="Hostile", email="hz1@example.com", profile_id=profile_id)
        db.session.add(user)
        db.session.commit()
        ids = {"user_id": user.id, "profile_id": profile_id, "connection_id": 1, "job_id": 1,
               "token_id": 1, "action": "force-config"}
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/api/v1/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    tried = refused = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if "requestBody" not in operation.definition.raw:
            continue
        params = {p.name: ids.get(p.name, 1) for p in operation.path_parameters}
        for label, body in HOSTILE_BODIES.items():
            case = operation.Case(body=body, path_parameters=params, media_type="application/json")
            response = case.call(base_url=f"{fuzz_server.url}/api/v1", headers=headers)
            case.validate_response(response, checks=[not_a_server_error, status_code_conformance,
                                                     content_type_conformance, response_schema_conformance],
                                   headers=headers)
            tried += 1
            assert 400 <= response.status_code < 500, (operation.label, label, response.status_code)
            if response.status_code == 400:
                refused += 1
                assert "not acceptable" in response.json()["message"], response.text
    assert tried >= 20 and refused >= tried // 2, (tried, refused)
    with app.app_context():
        assert db.session.scalar(db.select(db.func.count(User.id))) == 1
