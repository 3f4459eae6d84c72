"""GET /healthz — public (no login, no user data), for load balancers and monitoring."""
from flask import Blueprint, jsonify

from cds.extensions import limiter
from cds.health.service import health

bp = Blueprint("health", __name__)


@bp.route("/healthz")
@limiter.exempt
def healthz():
    report, ok = health()
    response = jsonify(report)
    response.status_code = 200 if ok else 503
    response.headers["Cache-Control"] = "no-store"
    return response
