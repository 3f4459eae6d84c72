"""Deployment e-mail: QR codes, templates, and delivery over SMTP or into the outbox."""
