"""The only entry point: `flask --app app …`, `waitress-serve app:app`, gunicorn app:app."""
import sys

from cds import ConfigError, create_app

try:
    app = create_app()
except ConfigError as exc:
    # One clear line, not a traceback.
    print(f"cds: configuration error: {exc}", file=sys.stderr)
    sys.exit(2)
