"""An API test client that checks every answer against the OpenAPI document:
the status must be documented for that operation and the JSON body must match
its schema. Used by every API test, so the document stays accurate."""
from __future__ import annotations

import re

import jsonschema
from referencing import Registry, Resource

from cds.api.openapi import build_document

DOC = build_document()
_REGISTRY = Registry().with_resource("urn:cds-openapi", Resource.from_contents(
    {**DOC, "$schema": "https://json-schema.org/draft/2020-12/schema"}))
SEEN: set[tuple[str, str, str]] = set()


def _match(path: str) -> str | None:
    rel = path.split("?")[0][len("/api/v1"):]
    # Literal paths first: /users/export.csv before /users/{user_id}.
    for template in sorted(DOC["paths"], key=lambda t: t.count("{")):
        pattern = "^" + re.sub(r"\{[^}]+\}", r"[^/]+", template) + "$"
        if re.match(pattern, rel):
            return template
    return None


def check_response(method: str, path: str, resp) -> None:
    template = _match(path)
    assert template, f"{path} is not in the OpenAPI document"
    operation = DOC["paths"][template].get(method.lower())
    assert operation, f"{method} {template} is not in the OpenAPI document"
    status = str(resp.status_code)
    assert status in operation["responses"], \
        f"{method} {template} answered {status}, which is not documented: {resp.get_data(as_text=True)[:300]}"
    SEEN.add((method.upper(), template, status))
    content = operation["responses"][status].get("content")
    if not content:
        return
    media = next(iter(content))
    if media != "application/json":
        assert resp.mimetype == media, f"{method} {template} {status}: {resp.mimetype} != {media}"
        return
    schema = content[media]["schema"]
    if "$ref" in schema:
        schema = {"$ref": "urn:cds-openapi" + schema["$ref"]}
    else:
        schema = _rebase(schema)
    validator = jsonschema.Draft202012Validator(schema, registry=_REGISTRY)
    errors = sorted(validator.iter_errors(resp.get_json()), key=lambda e: e.path)
    assert not errors, f"{method} {template} {status}: {errors[0].message} at {list(errors[0].path)}"


def _rebase(node):
    if isinstance(node, dict):
        return {k: ("urn:cds-openapi" + v if k == "$ref" else _rebase(v)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rebase(v) for v in node]
    return node


class ApiClient:
    def __init__(self, client, token: str | None):
        self.client, self.token = client, token

    def request(self, method: str, path: str, token: str | None = "default", **kwargs):
        headers = dict(kwargs.pop("headers", {}) or {})
        tok = self.token if token == "default" else token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        resp = self.client.open(path, method=method, headers=headers, **kwargs)
        check_response(method, path, resp)
        return resp

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def patch(self, path, **kw):
        return self.request("PATCH", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)
