"""The Settings tab, one area: its pages (routes.py: General, Administrators, Your
account; mail.py: E-mail and the e-mail template; api_tokens.py: API tokens;
backup.py: Backup), the stored settings (service.py), administrators (accounts.py),
API tokens (tokens.py) and their commands (cli.py). The e-mail and backup machinery
the pages drive live in cds/mail and cds/backup."""
