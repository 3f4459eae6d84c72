from flask import Blueprint, render_template

from cds.profiles.service import all_profiles, user_counts

bp = Blueprint("profiles", __name__, url_prefix="/profiles")


@bp.route("")
def index():
    return render_template("profiles/page.html", profiles=all_profiles(), counts=user_counts(),
                           active_tab="profiles")
