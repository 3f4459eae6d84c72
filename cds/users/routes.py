from flask import Blueprint, render_template, request

from cds.users.service import InvalidQuery, UserQuery, list_users

bp = Blueprint("users", __name__, url_prefix="/users")


@bp.route("")
def index():
    try:
        q = UserQuery.from_mapping(request.args)
    except InvalidQuery:
        q = UserQuery()
    page = list_users(q)
    return render_template("users/page.html", page=page, active_tab="users")
