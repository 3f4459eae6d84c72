"""Deliverability of the deployment e-mail: a real message, sent over SMTP to a real
server (aiosmtpd on loopback), scored by SpamAssassin's local rules (`spamassassin -L -t`,
no network tests). Skipped, with the reason, only where spamassassin is not installed;
.ci/run installs it."""
from __future__ import annotations

import re
import shutil
import subprocess
from email import policy
from email.parser import BytesParser
from email.utils import parseaddr

import pytest

from cds.jobs.service import create_job, run_job
from tests.deploy.test_deploy import make_users, use_smtp

SPAMASSASSIN = shutil.which("spamassassin")
BUDGET = 1.0


def spam_score(raw: bytes) -> tuple[float, str]:
    out = subprocess.run([SPAMASSASSIN, "-L", "-t"], input=raw, capture_output=True, timeout=120,
                         check=False).stdout.decode("utf-8", "replace")
    match = re.search(r"^X-Spam-Status: \w+, score=(-?[\d.]+)", out, re.M)
    assert match, out[-2000:]
    return float(match.group(1)), out


@pytest.fixture
def sent_message(app, smtp_server):
    use_smtp(app, smtp_server, MAIL_DEFAULT_SENDER="Example IT <it@example.com>")
    make_users(app, 1, prefix="ann")
    with app.app_context():
        run_job(create_job("deploy", {"all": True}, actor="alice").id)
    assert len(smtp_server.messages) == 1
    return smtp_server.messages[0][1]


def test_deployment_mail_headers_name_the_user_and_the_sender_domain(sent_message):
    msg = BytesParser(policy=policy.default).parsebytes(sent_message)
    name, address = parseaddr(str(msg["To"]))
    assert address == "ann000@example.com"
    assert name == "Ann Ann 000"
    assert msg["Message-ID"].strip().endswith("@example.com>"), msg["Message-ID"]


@pytest.mark.skipif(SPAMASSASSIN is None, reason="spamassassin is not installed (apt-get install spamassassin)")
def test_deployment_mail_scores_within_the_spam_budget(sent_message):
    score, report = spam_score(sent_message)
    assert score <= BUDGET, report[report.find("Content analysis details"):]
    print(f"SpamAssassin score of the deployment e-mail: {score}")
