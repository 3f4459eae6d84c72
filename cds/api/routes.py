"""JSON API v1 (/api/v1): the blueprint with every resource's routes, and the OpenAPI
document that describes them. Each resource is one module; ``cds.api.blueprint``
holds what they share (authentication, the error shape), ``cds.api.schema`` the
JSON shapes of the records they answer."""
from __future__ import annotations

from flask import jsonify

# Each resource module adds its routes to bp when imported.
from cds.api import audit, connections, imports, jobs, profiles, users  # noqa: F401
from cds.api.blueprint import bp
from cds.api.openapi import build_document

__all__ = ["bp"]


@bp.route("/openapi.json")
def openapi():
    return jsonify(build_document())
