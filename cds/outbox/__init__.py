"""The Outbox: deployment e-mails written to instance/outbox/ when no SMTP server is set."""
