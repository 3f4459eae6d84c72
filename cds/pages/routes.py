"""The console's entry point, and tabs whose screens are not built yet."""
from flask import Blueprint, abort, redirect, render_template, url_for

bp = Blueprint("pages", __name__)

# Tabs of PRODUCT.md §3 that do not have their own blueprint yet: path -> title.
# An area that gets its blueprint removes its line here.
NOT_YET: dict[str, str] = {}


@bp.route("/")
def home():
    return redirect(url_for("users.index"))


def not_yet(tab):
    if tab not in NOT_YET:
        abort(404)
    return render_template("not_yet.html", title=NOT_YET[tab], tab=tab)


if NOT_YET:
    bp.add_url_rule("/<any(" + ",".join(NOT_YET) + "):tab>", view_func=not_yet)
