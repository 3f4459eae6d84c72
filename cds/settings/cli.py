"""`flask --app app cds create-api-token|list-api-tokens|revoke-api-token`."""
import json

import click

from cds.settings.tokens import create_api_token, list_api_tokens, revoke_api_token
from cds.cli import RoleChoice, role_text


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


commands = [create_api_token_command, list_api_tokens_command, revoke_api_token_command]
