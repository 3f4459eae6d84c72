"""Logging: one line per request and per job step, to stdout and instance/logs/cds.log.

Nothing secret reaches a log: request paths that carry a deployment token are
rewritten to a short hash prefix, and a filter masks anything that still looks
like a token or a bearer credential.
"""
from __future__ import annotations

import logging
import logging.handlers
import re
import sys
import time
from pathlib import Path

from flask import g, request

from cds.security import token_ref

log = logging.getLogger("cds")

_TOKEN_PATH = re.compile(r"^(/r/|/deploy/|/deploy/qr/|/provisioning/[a-z0-9-]+/(?:device/)?)([^/?]+)")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_QUERY_SECRET = re.compile(r"(?i)((?:token|key|password|pin|secret)=)[^&\s]+")
# A token path quoted anywhere in a message (an error naming the request, a URL in a reply).
_TOKEN_IN_TEXT = re.compile(r"(/r/|/deploy/(?:qr/)?|/provisioning/[a-z0-9-]+/(?:device/)?)([A-Za-z0-9_-]{16,})")


def redact_path(path: str) -> str:
    return _TOKEN_PATH.sub(lambda m: m.group(1) + "tok:" + token_ref(m.group(2)), path)


def redact_text(text: str) -> str:
    text = _TOKEN_IN_TEXT.sub(lambda m: m.group(1) + "tok:" + token_ref(m.group(2)), text)
    return _QUERY_SECRET.sub(r"\1***", _BEARER.sub(r"\1***", text))


class RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact_text(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            # Format the traceback here, so it is cleaned like the message.
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        return True


def init_app(app) -> None:
    level = app.config["LOG_LEVEL"].upper()
    log.setLevel(level)
    log.propagate = False
    if not getattr(log, "_cds_configured", None) == app.instance_path:
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()
        fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        stream = logging.StreamHandler(sys.stdout)
        stream.setFormatter(fmt)
        stream.addFilter(RedactFilter())
        log.addHandler(stream)
        log_dir = Path(app.instance_path) / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(
            log_dir / "cds.log", maxBytes=5 * 1024 * 1024, backupCount=5, encoding="utf-8")
        rotating.setFormatter(fmt)
        rotating.addFilter(RedactFilter())
        log.addHandler(rotating)
        log._cds_configured = app.instance_path
    app.logger.handlers = log.handlers
    app.logger.setLevel(level)

    @app.before_request
    def _start_timer():
        g._t0 = time.perf_counter()

    @app.after_request
    def _log_request(response):
        if request.path.startswith("/static/"):
            return response
        ms = (time.perf_counter() - g.get("_t0", time.perf_counter())) * 1000
        who = getattr(g, "actor", None) or "-"
        # A load balancer's health checks every few seconds would drown the log at INFO.
        level = logging.DEBUG if request.path == "/healthz" and response.status_code == 200 \
            else logging.INFO
        log.log(level, "%s %s %s %s %.1fms %s", request.remote_addr, request.method,
                redact_path(request.path), response.status_code, ms, who)
        return response
