"""`flask --app app cds create-admin|set-admin-role|create-api-token|list-api-tokens|revoke-api-token`:
the administrators and API tokens of Settings, from the shell."""
import json
import sys

import click
from sqlalchemy import select

from cds.auth.service import create_admin
from cds.cli import RoleChoice, fail, role_text, stored_role
from cds.extensions import db
from cds.models import AdminAccount
from cds.settings import accounts
from cds.settings.tokens import create_api_token, list_api_tokens, revoke_api_token


@click.command("create-admin")
@click.argument("name")
@click.option("--role", type=RoleChoice(), default="admin", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def create_admin_command(name, role, password_stdin):
    """Create an administrator account; the password is prompted for (or read from stdin)."""
    if password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    create_admin(name, password, stored_role(role), actor="cli")
    click.echo(f"administrator {name} created ({role})")


@click.command("set-admin-role")
@click.argument("name")
@click.argument("role", type=RoleChoice())
def set_admin_role_command(name, role):
    """Change an administrator's role. The last active primary administrator keeps theirs."""
    admin = db.session.scalar(select(AdminAccount).where(AdminAccount.username == name))
    if admin is None:
        fail(f"no administrator {name!r}")
    old = admin.role
    accounts.change_role(admin.id, stored_role(role), actor="cli")  # a refusal ends the command (CdsGroup)
    click.echo(f"administrator {name}: {role_text(old)} → {role}")


@click.command("create-api-token")
@click.argument("name")
@click.option("--role", type=RoleChoice(("admin", "read-only", "primary")), default="admin",
              show_default=True, help="primary may also create and re-authorize connections.")
@click.option("--expires", "expires_days", type=int, default=None, help="Days until it stops working.")
def create_api_token_command(name, role, expires_days):
    """Create an API token and print it once (only its hash is stored)."""
    row, token = create_api_token(name, role, expires_days, created_by="cli")
    click.echo(token)
    expiry = row.expires_at.strftime("%Y-%m-%d %H:%M UTC") if row.expires_at else "never"
    click.echo(f"token {row.id} '{row.name}' ({role}), expires {expiry}. "
               "Store it now: it cannot be shown again.", err=True)


@click.command("list-api-tokens")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_api_tokens_command(as_json):
    """List API tokens (never the tokens themselves)."""
    rows = [{"id": t.id, "name": t.name, "role": role_text(t.role),
             "created_at": t.created_at.isoformat() + "Z",
             "expires_at": t.expires_at.isoformat() + "Z" if t.expires_at else None,
             "last_used_at": t.last_used_at.isoformat() + "Z" if t.last_used_at else None,
             "revoked": t.revoked_at is not None} for t in list_api_tokens()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = "revoked" if r["revoked"] else "active"
        click.echo(f"{r['id']:>4}  {r['name']:<24} {r['role']:<10} {state:<8} "
                   f"expires {r['expires_at'] or 'never'}  last used {r['last_used_at'] or 'never'}")


@click.command("revoke-api-token")
@click.argument("token_id", type=int)
def revoke_api_token_command(token_id):
    """Revoke an API token: it stops working at once."""
    row = revoke_api_token(token_id, actor="cli")
    click.echo(f"token {row.id} '{row.name}' revoked")


commands = [create_admin_command, set_admin_role_command,
            create_api_token_command, list_api_tokens_command, revoke_api_token_command]
