"""Deploy, Auto deploy and Set Force Config: sending deployment e-mails, and what Deploy would do."""
