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
    from cds.api.tokens import create_api_token
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
