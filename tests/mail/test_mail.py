"""Settings → E-mail and E-mail template: SMTP settings, test e-mail, sandboxed
templates with preview, and the QR codes themselves."""
from __future__ import annotations

import re

from sqlalchemy import select

from cds.extensions import db
from cds.models import AuditEvent, Setting
from tests.mailsink import decode_qr, link_in, parts
from tests.deploy.test_deploy import deploy, make_users


def csrf(client) -> dict:
    return {"csrf_token": client.csrf_token}


GOOD = {"server": "127.0.0.1", "port": "2525", "security": "none", "username": "relay",
        "password": "Relay-Pass-99", "sender": "IT Desk <it@example.com>", "rate_limit": "0"}


def test_mail_settings_saved_validated_and_password_write_only(app, admin_client):
    page = admin_client.get("/settings/mail")
    assert page.status_code == 200 and "Outbox" in page.get_data(as_text=True)
    bad = admin_client.post("/settings/mail", data={**GOOD, "port": "70000", "sender": "nobody", **csrf(admin_client)})
    assert bad.status_code == 422
    text = bad.get_data(as_text=True)
    assert "is not a valid e-mail address" in text and "between 1 and 65535" in text
    with app.app_context():
        assert db.session.get(Setting, "MAIL_SERVER") is None
    ok = admin_client.post("/settings/mail", data={**GOOD, **csrf(admin_client)})
    assert ok.status_code == 302
    from cds.mail.transport import MailSettings
    with app.app_context():
        s = MailSettings.load()
        assert (s.server, s.port, s.username, s.password, s.sender) == \
            ("127.0.0.1", 2525, "relay", "Relay-Pass-99", "IT Desk <it@example.com>")
        assert "Relay-Pass-99" not in db.session.get(Setting, "MAIL_PASSWORD").value
        event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "settings.mail"))
        assert "MAIL_PASSWORD" in event.detail["changed"] and "Relay-Pass-99" not in str(event.detail)
    page = admin_client.get("/settings/mail").get_data(as_text=True)
    assert "Relay-Pass-99" not in page and "stored" in page
    # An empty password field keeps the stored one.
    admin_client.post("/settings/mail", data={**GOOD, "password": "", "port": "2526", **csrf(admin_client)})
    with app.app_context():
        assert MailSettings.load().password == "Relay-Pass-99" and MailSettings.load().port == 2526
    admin_client.post("/settings/mail", data={**GOOD, "password": "", "clear_password": "y", **csrf(admin_client)})
    with app.app_context():
        assert MailSettings.load().password is None


def test_only_the_primary_administrator_changes_mail_settings(app, readonly_client):
    from tests.conftest import make_admin, sign_in
    assert readonly_client.get("/settings/mail").status_code == 200
    assert readonly_client.post("/settings/mail", data={**GOOD, **csrf(readonly_client)}).status_code == 403
    make_admin(app, "adam", "admin")
    c = app.test_client()
    sign_in(c, "adam")
    assert c.post("/settings/mail", data={**GOOD, **csrf(c)}).status_code == 403


def test_send_test_email(app, admin_client, smtp_server):
    admin_client.post("/settings/mail", data={**GOOD, "port": str(smtp_server.port), "username": "", "password": "",
                                             **csrf(admin_client)})
    resp = admin_client.post("/settings/mail/test", data={"to": "me@example.com", **csrf(admin_client)},
                             follow_redirects=True)
    assert "accepted the test e-mail" in resp.get_data(as_text=True)
    assert smtp_server.handler.recipients() == ["me@example.com"]
    assert parts_subject(smtp_server.messages[0][1]) == "CDS test e-mail"
    bad = admin_client.post("/settings/mail/test", data={"to": "not an address", **csrf(admin_client)})
    assert bad.status_code == 422
    smtp_server.handler.rcpt_refuse["no@example.com"] = "550 5.1.1 Unknown user"
    resp = admin_client.post("/settings/mail/test", data={"to": "no@example.com", **csrf(admin_client)},
                             follow_redirects=True)
    assert "Not sent" in resp.get_data(as_text=True) and "550 5.1.1" in resp.get_data(as_text=True)


def parts_subject(raw):
    from tests.mailsink import parse
    return str(parse(raw)["Subject"])


def test_template_preview_and_errors(app, admin_client):
    page = admin_client.get("/settings/template").get_data(as_text=True)
    assert "{{ link }}" in page and "Preview" in page
    draft = {"subject": "Hello {{ first_name }}", "text": "Go to {{ link }} by {{ expiry }}.",
             "html": "<p>{{ name }}</p>{{ qr }}", **csrf(admin_client)}
    resp = admin_client.post("/settings/template/preview", data=draft, headers={"HX-Request": "true"})
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and "Hello Alex" in body and "/r/EXAMPLE-TOKEN" in body
    frame_url = re.search(r'src="([^"]*/settings/template/frame[^"]*)"', body).group(1).replace("&amp;", "&")
    frame = admin_client.get(frame_url)
    assert "<p>Alex Example</p>" in frame.get_data(as_text=True)
    assert "data:image/png;base64," in frame.get_data(as_text=True)
    csp = frame.headers["Content-Security-Policy"]
    assert "sandbox" in csp and "script" not in csp
    for broken, message in (({"text": "{{ link "}, "Text template"),
                            ({"text": "Hi {{ nmae }}"}, "nmae&#39; is undefined"),
                            ({"html": "{{ link.__class__.__mro__ }}"}, "unsafe"),
                            ({"subject": "{% for %}"}, "Subject template")):
        resp = admin_client.post("/settings/template/preview", data={**draft, **broken},
                                 headers={"HX-Request": "true"})
        assert message in resp.get_data(as_text=True), broken
        saved = admin_client.post("/settings/template", data={**draft, **broken})
        assert saved.status_code == 422
    with app.app_context():
        assert db.session.get(Setting, "MAIL_TEMPLATE_TEXT") is None


def test_saved_template_is_used_and_escaped(app, admin_client, smtp_server):
    from cds.settings.service import save_settings
    with app.app_context():
        save_settings({"MAIL_SERVER": "127.0.0.1", "MAIL_PORT": smtp_server.port})
    draft = {"subject": "Your app, {{ name }}", "text": "Link: {{ link }}\nUntil {{ expiry }}\n{{ instructions }}",
             "html": "<h1>Hi {{ name }}</h1><a href=\"{{ link }}\">Open</a>{{ qr }}", **csrf(admin_client)}
    assert admin_client.post("/settings/template", data=draft).status_code == 302
    [uid] = make_users(app, 1, prefix="x")
    with app.app_context():
        from cds.models import User
        u = db.session.get(User, uid)
        u.first_name, u.last_name = "<b>Eve</b>", "O'Hara & Co"
        db.session.commit()
    deploy(app, {"ids": [uid]})
    m = parts(smtp_server.messages[0][1])
    link = link_in(m["text"])
    assert m["subject"] == "Your app, <b>Eve</b> O'Hara & Co"
    assert "<h1>Hi &lt;b&gt;Eve&lt;/b&gt; O&#39;Hara &amp; Co</h1>" in m["html"]
    assert decode_qr(m["images"]["qr-code@cds"]) == link
    # Reset: back to the built-in template.
    admin_client.post("/settings/template/reset", data=csrf(admin_client))
    with app.app_context():
        assert db.session.get(Setting, "MAIL_TEMPLATE_HTML").value == ""


def test_qr_codes_decode_for_any_link_length():
    from cds.mail.qr import qr_png
    for base in ("http://a.b", "https://deploy.example.com", "https://" + "r" * 120 + ".example.org/cds"):
        link = f"{base}/r/" + "AbC-_9" * 7 + "x"
        assert decode_qr(qr_png(link)) == link


def test_long_html_lines_are_broken_for_smtp():
    from cds.mail.compose import _wrap_long_lines
    html = "<p>" + "</p><p>".join("x" * 50 for _ in range(100)) + "</p>"
    wrapped = _wrap_long_lines(html)
    assert max(len(line) for line in wrapped.splitlines()) < 900
    assert wrapped.replace("\n", "") == html


def test_deployment_message_is_multipart_related_with_the_qr_inline(app):
    """HTML that shows the QR by cid: sits with its image in multipart/related."""
    import email
    from email import policy

    from cds.mail.compose import RenderedMail, build_message
    with app.app_context():
        msg = build_message(RenderedMail(subject="S", text="t", html='<img src="cid:qr-code@cds">'),
                            "cds@example.com", "jane@example.com", b"\x89PNG fake")
        parsed = email.message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert parsed.get_content_type() == "multipart/related"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["multipart/alternative", "image/png"]


def test_a_deployment_message_is_the_same_bytes_however_it_is_composed(app):
    """A bulk run serialises each message from a skeleton made once (WireComposer);
    what it hands over is byte for byte what Flask-Mail's message, flattened, would be:
    headers encoded and folded alike, text and HTML in their transfer encoding, the QR."""
    from cds.mail.compose import RenderedMail, WireComposer, build_message
    from cds.mail.qr import qr_png
    from cds.mail.wire import message_bytes
    png = qr_png("https://deploy.example.com/r/" + "AbC-_9" * 7 + "x")
    cases = [
        ("Your softphone", "Hello Ann,\nopen https://x.test/r/abc\n", "<p>Hello Ann</p>\n<img src=\"cid:qr\">\n",
         "ann@example.com", "Ann User"),
        ("Ihr Telefon – Jürgen", "Hallo Jürgen\r\n\r\nÖffnen: https://x.test\r", "<p>Hallo J&uuml;rgen</p>",
         "juergen@example.de", "Jürgen Müller"),
        ("A subject long enough to be folded over more than one line of the message header, "
         "as the generator folds it, word by word, with more words", "no newline at the end", "<p>x</p>" * 200,
         "very.long.local-part.of.an.address@subdomain.of.a.rather.long.domain.example.org",
         "Dr. Maximilian-Alexander O'Neill-Featherstonehaugh, \"Max\""),
        ("", "", "", "bare@example.com", ""),
        ("Ünïcödé ünïcödé ünïcödé ünïcödé ünïcödé ünïcödé ünïcödé ünïcödé ünïcödé", "ü\n" * 50, "ü",
         "u@example.com", "名前 テスト"),
    ]
    with app.app_context():
        for sender in ("CDS <cds@example.com>", "Service Desk Müller <desk@example.com>", "cds@example.com"):
            wire = WireComposer(sender)
            for subject, text, html, recipient, name in cases:
                rendered = RenderedMail(subject, text, html)
                message = build_message(rendered, sender, recipient, png, recipient_name=name)
                message.date = 1_700_000_000.0
                expected = message_bytes(message, boundaries=("=" * 15 + "a" * 32 + "==", "=" * 15 + "b" * 32 + "=="))
                from email.utils import formatdate
                got = wire.compose(rendered, recipient, png, name,
                                   boundaries=("=" * 15 + "a" * 32 + "==", "=" * 15 + "b" * 32 + "=="),
                                   date=formatdate(message.date, localtime=True), msg_id=message.msgId)
                assert got.data == expected, (sender, subject)
                assert got.recipient == recipient and not got.bad_headers
        assert wire.compose(RenderedMail("s", "t", "h"), "a@example.com\r\nBcc: x@example.com", png).bad_headers


def test_qr_codes_of_a_bulk_run_are_the_same_image(app):
    """A bulk run draws its codes as flips of one code of the same length (linear in the
    data bits, cds.mail.qr._LinearCode) and writes the PNG itself: pixel for pixel what
    Pillow draws from qrcode's own matrix of each link, and read back by a QR decoder."""
    import io
    import secrets

    from PIL import Image

    from cds.mail.qr import MODULE_PIXELS, bulk_qr_png, qr_matrix, qr_png

    def pillow(link: str) -> bytes:
        matrix = qr_matrix(link)
        size = len(matrix)
        image = Image.frombytes("L", (size, size), b"".join(bytes(0 if d else 255 for d in row) for row in matrix))
        return image.resize((size * MODULE_PIXELS,) * 2, Image.NEAREST).convert("1").tobytes()

    def pixels(png: bytes) -> bytes:
        image = Image.open(io.BytesIO(png))
        assert image.mode == "1" and image.format == "PNG"
        return image.tobytes()

    for base in ("https://deploy.example.com", "http://a.b", "https://" + "r" * 60 + ".example.org/cds"):
        for _ in range(12):
            link = f"{base}/r/{secrets.token_urlsafe(32)}"
            assert pixels(bulk_qr_png(link)) == pixels(qr_png(link)) == pillow(link)
            assert decode_qr(bulk_qr_png(link)) == link


def test_header_lines_are_folded_as_the_generator_folds_them():
    """The short-cut for one-line ASCII headers gives what the compat32 generator gives."""
    import random
    import string

    from cds.mail.compose import fold_header
    from cds.mail.wire import WIRE_POLICY
    rng = random.Random(17)
    alphabet = string.ascii_letters + string.digits + " \t;,=?_.<>@\"'()[]:!#%&*+-/\\^`{|}~" + "   " + "äé€"
    for _ in range(20000):
        name = rng.choice(["Subject", "To", "Date", "Message-ID", "From"])
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90)))
        if rng.random() < 0.1:
            value = "=?utf-8?q?" + value.replace(" ", "_") + "?="
        assert fold_header(name, value) == WIRE_POLICY.fold_binary(name, value), (name, value)


def test_envelope_addresses_are_quoted_as_smtplib_quotes_them():
    """The short-cut for plain addresses gives what smtplib.quoteaddr gives, on plain
    addresses built piece by piece and on anything else."""
    import random
    import smtplib

    from cds.mail.transport import envelope_address
    rng = random.Random(5)
    atom = "abcXYZ0189_+-'"
    other = atom + ".@ <>\"()[],;:\\é%!#\t"

    def atoms(n: int, chars: str) -> str:
        return ".".join("".join(rng.choice(chars) for _ in range(rng.randint(1, 6))) for _ in range(n))

    plain = 0
    for _ in range(20000):
        if rng.random() < 0.5:
            address = f"{atoms(rng.randint(1, 3), atom)}@{atoms(rng.randint(1, 3), 'ab9-')}"
        else:
            address = "".join(rng.choice(other) for _ in range(rng.randint(0, 20)))
        plain += address == f"{envelope_address(address)[1:-1]}"
        assert envelope_address(address) == smtplib.quoteaddr(address), address
    assert plain > 10000
    assert envelope_address("Jo <jo@example.com>") == "<jo@example.com>"


def test_recipient_names_are_encoded_as_flask_mail_encodes_them():
    import random
    import string

    from flask_mail import sanitize_address

    from cds.mail.compose import address_header
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + "     .-'\"_=?äÖé"
    for _ in range(20000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        address = rng.choice(["ann@example.com", "x.y+z@sub.example.org", "ann@exämple.de"])
        assert address_header((name, address)) == sanitize_address((name, address), "utf-8"), name


def test_a_recipient_name_reads_back_as_written(app):
    """What a mail reader shows in To: is the user's name as the administrator wrote it,
    accents and all, not an encoded word (=?utf-8?…?=) left over from encoding it twice."""
    import email
    from email import policy
    from email.utils import getaddresses

    from cds.mail.compose import RenderedMail, WireComposer, build_message
    from cds.mail.qr import qr_png
    from cds.mail.wire import message_bytes
    png = qr_png("https://deploy.example.com/r/abc")
    rendered = RenderedMail("Your softphone", "Hello", "<p>Hello</p>")
    with app.app_context():
        wire = WireComposer("CDS <cds@example.com>")
        for name in ("Jürgen Müller", "名前 テスト", "Zoë  O'Brien, \"Zo\"", "Ann User"):
            for data in (message_bytes(build_message(rendered, "CDS <cds@example.com>", "u@example.com", png,
                                                     recipient_name=name)),
                         wire.compose(rendered, "u@example.com", png, name).data):
                to = email.message_from_bytes(data, policy=policy.default)["To"]
                assert getaddresses([str(to)]) == [(" ".join(name.split()), "u@example.com")], str(to)


def test_lines_starting_with_a_dot_arrive_as_written(app, smtp_server):
    """Dot-stuffing: a line of the body that starts with a dot (the first included) is
    received as it was written, and a body without one is sent as it is."""
    from cds.mail.compose import ComposedMail
    from cds.mail.transport import SENT, MailSettings, MailTransport
    settings = MailSettings(server="127.0.0.1", port=smtp_server.port, use_tls=False, use_ssl=False,
                            username=None, password=None, sender="cds@example.com", rate_limit=0, timeout=10)
    bodies = [b"Subject: a\r\n\r\n.first\r\n..two\r\nmid.dle\r\n.\r\nend", b"Subject: b\r\n\r\nno dots\r\n",
              b".Subject: c\r\n\r\n.x\r\n"]
    with app.app_context():
        transport = MailTransport(settings)
        for body in bodies:
            assert transport.send(ComposedMail(body, "jo.doe@example.com")).state == SENT
        transport.close()
    smtp_server.wait_for(len(bodies))
    received = [raw.replace(b"\r\n", b"\n") for _, raw in smtp_server.messages]
    assert received == [b.replace(b"\r\n", b"\n").rstrip(b"\n") + b"\n" for b in bodies]
    assert smtp_server.handler.recipients() == ["jo.doe@example.com"] * len(bodies)
