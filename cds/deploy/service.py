"""Deploy, Auto deploy and Set Force Config: one implementation each, shared by the
Users tab, the API, the CLI and the scheduler.

A deployment is a link with a fresh 256-bit token; only the token's hash is
stored. Sending is exactly-once: a deployment is marked "sending" and committed
before its message is handed to SMTP (or written to the outbox), and "sent"
after, before the next message is handed over (``SendLedger``). Only a pending
deployment becomes "sending", and in a job only while the
job's runner still holds its claim, in the same transaction. A run that dies in
between leaves "sending" behind, which is never sent again: it becomes
"unknown" and the user is reported as not sent. A temporary refusal (4xx, an
unreachable server, an outbox that cannot be written) is retried by the
scheduler with backoff; the retry gets a new token, because the old one was
never delivered and is not kept. A user's older links stay valid until a new
message has actually been handed over.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import set_committed_value

from cds import errors
from cds.audit.service import actor_type_of, record_event, scrub
from cds.client.statements import DriverCursor, DriverStatement
from cds.clients import checks_users, deploy_problem, kind_of, profile_refusal
from cds.extensions import db
from cds.jobs.service import ClaimLost, Outcome, RunnerStopping, action, current_claim, send_claim_renewal
from cds.mail.compose import MailTemplates, TemplateProblem, WireComposer, mail_context, sample_context
from cds.mail.qr import QrMaker, qr_png
from cds.mail.transport import FAILED, RETRY, SENT, UNKNOWN, Delivery, MailSettings, MailTransport, outbox_dir
from cds.models import (SEND_FAILED, SEND_PENDING, SEND_RETRY, SEND_SENDING, SEND_SENT, SEND_UNKNOWN,
                        AuditEvent, ClientDevice, Deployment, Job, User, utcnow)
from cds.profiles.service import all_profiles
from cds.redirect.service import push_outbox, register_link, register_links, withdraw_links
from cds.scheduler import tick_task
from cds.security import new_token, token_hash, token_ref
from cds.settings.service import redirect_url
from cds.users.selection import selection_query

log = logging.getLogger("cds.deploy")

# Temporary failures are retried after these delays; then the send is given up.
RETRY_DELAYS = (timedelta(minutes=1), timedelta(minutes=5), timedelta(minutes=15),
                timedelta(hours=1), timedelta(hours=3))
# A deployment still "sending" this long after it was handed over was interrupted.
INTERRUPTED_AFTER = timedelta(minutes=10)

SKIP_DO_NOT_DEPLOY = "Profile is \"Do Not Deploy\"."
NO_ADDRESS = "No e-mail address (the user has none and the profile has no central address)."
OUTBOX_WRITTEN = "Written to the Outbox (no SMTP configured): not sent to the user."
INTERRUPTED = ("Interrupted while the message was being sent; not resent, as it may already have "
               "arrived. Deploy again to send a new link.")
NOT_WRITTEN = ("Interrupted while the message was being written to the outbox, and it is not there: "
               "not sent. Deploy again to send a new link.")
REPLACED_UNSENT = ("Not handed over: the run was interrupted before this message was sent; "
                   "a new link was issued instead.")


class DeployError(errors.Conflict):
    """A deployment cannot be issued (e.g. the profile is Do Not Deploy); the message says why."""


# --- links -------------------------------------------------------------------

def recipient_for(user: User) -> str:
    """The profile's central address if it has one, else the user's own."""
    central = (user.profile.central_email or "").strip()
    return central or (user.email or "").strip()


def link_for(token: str, profile=None) -> str:
    """The link of the e-mail and its QR code, as the profile's client kind forms it."""
    return kind_of(profile).link(token)


def supersede_other_links(dep: Deployment, now: datetime) -> int:
    """Once ``dep``'s message was handed over, the user's older unused links stop working."""
    open_link = (Deployment.user_id == dep.user_id, Deployment.id != dep.id, Deployment.used_at.is_(None),
                 Deployment.revoked_at.is_(None), Deployment.superseded_at.is_(None))
    hashes = list(db.session.scalars(select(Deployment.token_hash).where(*open_link)))
    if hashes:
        db.session.execute(update(Deployment).where(*open_link).values(superseded_at=now)
                           .execution_options(synchronize_session=False))
        withdraw_links(hashes)
    return len(hashes)


def issue_deployments(users: list[User], *, actor: str | None = None, job_id: int | None = None
                      ) -> list[tuple[User, Deployment, str]]:
    """A new link per user, registered with the redirect store. The user's older
    unused links stay valid until the new one's message has been handed over (then
    they are superseded, see ``_record_delivery``). Returns (user, deployment, token);
    the token exists only in memory. The caller commits. Resending never changes a
    user's passwords: only links change."""
    now = utcnow()
    for user in users:
        if user.profile.is_do_not_deploy:
            raise DeployError(f"{user.login_id}: {SKIP_DO_NOT_DEPLOY}")
    if not users:
        return []
    tokens, rows, links = [], [], []
    for user in users:
        token = new_token()
        expires = now + timedelta(hours=user.profile.link_validity_hours)
        row = {"user_id": user.id, "token_hash": token_hash(token), "issued_at": now, "issued_by": actor,
               "expires_at": expires, "recipient": recipient_for(user), "send_state": SEND_PENDING,
               "job_id": job_id}
        if kind_of(user.profile).uses_redirect():
            links.append((row["token_hash"], expires))
        tokens.append(token)
        rows.append(row)
    # One INSERT … RETURNING for the batch: the deployments come back as loaded rows of
    # the session, as a flush of new objects would leave them, for a fraction of its cost.
    deps = db.session.scalars(insert(Deployment).returning(Deployment, sort_by_parameter_order=True),
                              rows).all()
    register_links(links)
    return list(zip(users, deps, tokens))


def issue_deployment(user: User, *, actor: str | None = None, job_id: int | None = None
                     ) -> tuple[Deployment, str]:
    """One user's new link (see ``issue_deployments``). The caller commits."""
    _, dep, token = issue_deployments([user], actor=actor, job_id=job_id)[0]
    return dep, token


def _rotate_token(dep: Deployment, user: User, now: datetime) -> str:
    """A retry gets a new token and a full validity period; the old token was never delivered."""
    withdraw_links([dep.token_hash])
    token = new_token()
    dep.token_hash = token_hash(token)
    dep.expires_at = now + timedelta(hours=user.profile.link_validity_hours)
    if kind_of(user.profile).uses_redirect():
        register_link(dep.token_hash, dep.expires_at)
    return token


# --- who Deploy sends to ---------------------------------------------------------

def deploy_refusal(user: User) -> tuple[str, str] | None:
    """Why Deploy would not send to ``user``: ("skipped" | "failed", reason), or None.
    The job and the confirmation's count (``plan_deploy``) both ask this."""
    if user.profile.is_do_not_deploy:
        return "skipped", SKIP_DO_NOT_DEPLOY
    problem = deploy_problem(user)
    if problem is not None:
        # Nothing is sent that the client could not use (an empty host, no SIP account).
        return "skipped", problem
    if not recipient_for(user):
        return "failed", NO_ADDRESS
    return None


@dataclass
class DeployPlan:
    """What Deploy would do with a selection, before anything is sent."""
    total: int = 0
    to_send: int = 0
    # reason -> how many users Deploy would not send to for it
    not_sent: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"total": self.total, "to_send": self.to_send,
                "not_sent": [{"reason": r, "count": n} for r, n in self.not_sent.items()]}


def classify_for_deploy(users) -> DeployPlan:
    """Count ``users`` by what Deploy would do with each (see ``deploy_refusal``)."""
    plan = DeployPlan()
    for user in users:
        plan.total += 1
        refusal = deploy_refusal(user)
        if refusal is None:
            plan.to_send += 1
        else:
            plan.not_sent[refusal[1]] = plan.not_sent.get(refusal[1], 0) + 1
    return plan


def plan_deploy(selection: dict) -> DeployPlan:
    """``classify_for_deploy`` of a selection (ids, or all users matching a filter),
    counted per profile in SQL; only the users of a kind that asks something of each
    user (Linphone: a SIP account) are loaded, so "all 100,000 matching" stays quick."""
    profiles = {p.id: p for p in all_profiles()}
    selected = selection_query(selection)
    per_profile = db.session.execute(selected.with_only_columns(User.profile_id, func.count(User.id))
                                     .group_by(User.profile_id).order_by(None)).all()
    plan = DeployPlan()

    def not_sent(reason: str, n: int) -> None:
        plan.not_sent[reason] = plan.not_sent.get(reason, 0) + n

    for profile_id, n in per_profile:
        profile = profiles[profile_id]
        refusal = SKIP_DO_NOT_DEPLOY if profile.is_do_not_deploy else profile_refusal(profile)
        if refusal is not None:
            plan.total += n
            not_sent(refusal, n)
        elif checks_users(profile):
            part = classify_for_deploy(db.session.scalars(
                selected.where(User.profile_id == profile_id).order_by(User.id)))
            plan.total += part.total
            plan.to_send += part.to_send
            for reason, count in part.not_sent.items():
                not_sent(reason, count)
        else:
            no_address = 0 if (profile.central_email or "").strip() else db.session.scalar(
                selected.where(User.profile_id == profile_id, func.trim(User.email) == "")
                .with_only_columns(func.count(User.id)).order_by(None))
            plan.total += n
            plan.to_send += n - no_address
            if no_address:
                not_sent(NO_ADDRESS, no_address)
    return plan


# --- sending -----------------------------------------------------------------

@dataclass
class MailRun:
    """What a bulk run shares: one SMTP connection, the compiled templates, the QR drawer."""
    transport: MailTransport = field(default_factory=MailTransport)
    templates: MailTemplates = field(default_factory=MailTemplates.load)
    qr: QrMaker = field(default_factory=QrMaker)
    _wire: WireComposer | None = None

    @property
    def wire(self) -> WireComposer:
        """The run's e-mail skeleton (see ``WireComposer``), made on first use."""
        if self._wire is None:
            self._wire = WireComposer(self.transport.settings.sender)
        return self._wire

    def close(self) -> None:
        self.transport.close()
        self.qr.close()


def compose_deployment_mail(run: MailRun, user: User, dep: Deployment, token: str,
                            png: bytes | None = None):
    link = link_for(token, user.profile)
    rendered = run.templates.render(mail_context(user, link, dep.expires_at), user.profile)
    return run.wire.compose(rendered, dep.recipient, png if png is not None else qr_png(link),
                            recipient_name=user.display_name)


NO_LONGER_PENDING = "Not sent: this link was replaced or handled by another run before it was handed over."


def send_deployment_mail(run: MailRun, user: User, dep: Deployment, token: str, *,
                         actor: str | None = None, message=None) -> Delivery:
    """Send one deployment e-mail exactly once and record the outcome (commits)."""
    ledger = SendLedger(actor)
    try:
        if message is None:
            try:
                message = compose_deployment_mail(run, user, dep, token)
            except TemplateProblem as exc:
                ledger.record(dep, user, Delivery(FAILED, f"E-mail template problem: {exc}"))
        if message is not None:
            ledger.hand_over(run, user, dep, message)
    except BaseException:
        ledger.flush_after_error()
        raise
    ledger.flush()
    return ledger.outcomes[user.id]


def _record_delivery(dep: Deployment, user: User, delivery: Delivery, actor: str | None) -> Delivery:
    """Record an outcome known without a hand-over (commits)."""
    ledger = SendLedger(actor)
    delivery = ledger.record(dep, user, delivery)
    ledger.flush()
    return delivery


_dep, _user = Deployment.__table__.c, User.__table__.c
_MARK_SENDING = DriverStatement(update(Deployment.__table__).where(
    _dep.id == bindparam("dep_id"), _dep.send_state == SEND_PENDING,
    _dep.superseded_at.is_(None), _dep.revoked_at.is_(None))
    .values(send_state=SEND_SENDING, send_attempts=_dep.send_attempts + 1,
            next_attempt_at=bindparam("now")))  # "sending since", read by the interrupted-send sweep
_DEP_SENT = DriverStatement(update(Deployment.__table__).where(_dep.id == bindparam("dep_id")).values(
    send_state=SEND_SENT, sent_at=bindparam("now"), next_attempt_at=None, send_error=None))
_DEP_NOT_SENT = DriverStatement(update(Deployment.__table__).where(_dep.id == bindparam("dep_id")).values(
    send_state=bindparam("state"), next_attempt_at=bindparam("next_at"), send_error=bindparam("error")))
_USER_SENT = DriverStatement(update(User.__table__).where(_user.id == bindparam("user_id")).values(
    deployed_at=bindparam("now"), send_error=None, send_error_at=None, redeploy_required=False,
    updated_at=bindparam("now")))
_USER_NOT_SENT = DriverStatement(update(User.__table__).where(_user.id == bindparam("user_id")).values(
    send_error=bindparam("error"), send_error_at=bindparam("now"), updated_at=bindparam("now")))
_OTHER_OPEN_LINKS = (_dep.user_id == bindparam("user_id"), _dep.id != bindparam("dep_id"),
                     _dep.used_at.is_(None), _dep.revoked_at.is_(None), _dep.superseded_at.is_(None))
# The user's other open links stop working; their hashes are withdrawn from the redirect store.
_SUPERSEDE = DriverStatement(update(Deployment.__table__).where(*_OTHER_OPEN_LINKS)
                             .values(superseded_at=bindparam("now")).returning(_dep.token_hash))
_AUDIT = DriverStatement(insert(AuditEvent.__table__).values(
    at=bindparam("now"), actor=bindparam("actor"), actor_type=bindparam("actor_type"),
    action=bindparam("action"), user_id=bindparam("user_id"), login_id=bindparam("login_id"),
    count=None, detail=bindparam("detail"), ip=None))


class SendLedger:
    """The send states of one run's hand-overs, written as plain statements on the
    session's own connection (``cds.client.statements``): through the ORM, each state
    change was a unit-of-work flush that cost more than handing the message over.

    Exactly-once as before: a deployment is "sending", committed together with the
    renewal of the runner's claim, before its message is handed over; its outcome is
    known once the SMTP server answered. That outcome is committed in the same
    transaction as the next deployment's "sending" (or by ``flush``, at the latest at
    the end of the batch), so a user costs one transaction, not two. No message is
    handed over before the outcome of the one before it is committed, so at any moment
    at most one deployment is "sending" without a known outcome: a run killed at any
    point leaves exactly the message in flight "sending", which is then reported as
    possibly arrived and never sent again.

    The server's reply to a message's body is read when the next message is handed
    over (``hand_over``) or at the end (``flush``): the caller composes the next
    message while the server takes the last one in."""

    def __init__(self, actor: str | None):
        self.actor = actor or "system"
        self.actor_type = actor_type_of(actor)
        # The outcome of each user's message as reported (user id -> Delivery).
        self.outcomes: dict[int, Delivery] = {}
        self._unrecorded: list[_Noted] = []
        self._in_flight: tuple[Deployment, User, MailTransport, object] | None = None

    def record(self, dep: Deployment, user: User, delivery: Delivery) -> Delivery:
        """Note the outcome of ``dep`` (written with the next transaction); the outcome
        as reported: a temporary failure after the last retry is given up."""
        state = delivery.state
        if state == RETRY and dep.send_attempts > len(RETRY_DELAYS):
            delivery = Delivery(FAILED, f"{delivery.detail} Gave up after {dep.send_attempts} attempts.")
        self._unrecorded.append(_Noted(dep, user, delivery, dep.id, user.id, user.login_id, dep.recipient,
                                       token_ref_of(dep), dep.send_attempts))
        self.outcomes[user.id] = delivery
        return delivery

    def hand_over(self, run: MailRun, user: User, dep: Deployment, message) -> None:
        """Mark ``dep`` "sending" (with the outcomes noted so far, only while this runner
        holds its job), then hand ``message`` over; its outcome is noted with the next."""
        self._settle()
        transport = run.transport
        transport.pace()
        # The server is told the sender (MAIL FROM) and answers while "sending" is
        # recorded; nothing of the message is with it before that is committed.
        prepared = transport.prepare(message, label=f"d{dep.id}")
        now = utcnow()
        # One transaction, its statements sent together: this runner still holds its job
        # (else ClaimLost, and nothing is written), the outcomes noted so far, and
        # "sending" for this deployment only if it is still pending and current (no other
        # run replaced or sent it).
        with self._cursors() as cursor:
            check_claim = send_claim_renewal(cursor())
            superseding = self._write(cursor)
            mark = cursor()
            _MARK_SENDING.write(mark, {"dep_id": dep.id, "now": now})
        try:
            check_claim()
        except (ClaimLost, RunnerStopping):
            transport.abandon(prepared)
            self.flush()  # what was handed over is recorded, as it was before the claim was lost
            raise
        marked = mark.raw.rowcount
        withdraw_links([h for c in superseding for (h,) in c.raw.fetchall()])
        self._commit()
        self._written()
        if marked != 1:
            transport.abandon(prepared)
            log.warning("deployment %s for user %s was no longer pending; not sent", dep.id, user.id)
            self.outcomes[user.id] = Delivery(FAILED, NO_LONGER_PENDING)
            return
        _loaded(dep, send_state=SEND_SENDING, send_attempts=dep.send_attempts + 1, next_attempt_at=now)
        self._in_flight = (dep, user, transport, transport.start(prepared))

    @staticmethod
    def _commit() -> None:
        """Commit on the session's own database connection, which the session keeps:
        ``Session.commit`` gives the connection back to the pool and the next statement
        takes one out again, which pings the server first (pool_pre_ping) and resets
        the connection, three round trips per user on PostgreSQL. The session's own
        transaction ends with the batch (``flush``); until then each statement after
        this commit runs in a new database transaction, which the next commit ends."""
        db.session.flush()
        db.session.connection().connection.commit()

    def _settle(self) -> None:
        """Read the server's reply to the message in flight, and note its outcome."""
        if self._in_flight is not None:
            dep, user, transport, started = self._in_flight
            self._in_flight = None
            self.record(dep, user, transport.finish(started))

    def flush(self) -> None:
        """Commit the outcomes noted so far (with whatever else the session holds)."""
        self._settle()
        if not self._unrecorded:
            return
        with self._cursors() as cursor:
            superseding = self._write(cursor)
        withdraw_links([h for c in superseding for (h,) in c.raw.fetchall()])
        db.session.commit()
        self._written()

    def flush_after_error(self) -> None:
        """On the way out of a failing run: the outcomes of what was handed over are
        still recorded if the database allows it (else those deployments stay "sending"
        and are reported as possibly arrived); the error itself is the caller's to raise."""
        self._settle()
        if not self._unrecorded:
            return
        try:
            db.session.rollback()
            self.flush()
        except Exception as exc:  # the database failing is what the caller is about to report
            db.session.rollback()
            log.warning("outcomes of %s hand-overs not recorded (%s)", len(self._unrecorded), exc)

    @contextmanager
    def _cursors(self):
        """Driver cursors on the session's connection, in its transaction (the function
        yielded gives a new one). On PostgreSQL (psycopg) the statements are pipelined:
        sent without waiting for each answer, all answered when the block ends."""
        connection = db.session.connection()
        raw = connection.connection
        pipeline = None

        def cursor() -> DriverCursor:
            return DriverCursor(raw.cursor(), connection.dialect, pipeline)

        if connection.dialect.driver == "psycopg":
            with raw.driver_connection.pipeline() as pipeline:
                yield cursor
        else:
            yield cursor

    def _write(self, cursor) -> list[DriverCursor]:
        """Write the outcomes noted so far (``cursor()``: a new driver cursor). Returns
        the cursors whose rows are the hashes of the links they superseded, once the
        statements are answered (the caller withdraws them, in the same transaction)."""
        cur = cursor()
        superseding = []
        # Only values taken when the outcome was noted: a loaded row may have been expired
        # since (by a rollback), and loading it again here would be a statement in the pipeline.
        for noted in self._unrecorded:
            dep, user, delivery = noted.dep, noted.user, noted.delivery
            now = utcnow()
            if delivery.state == SENT:
                state, error, next_at = SEND_SENT, None, None
                _DEP_SENT.write(cur, {"dep_id": noted.dep_id, "now": now})
                _USER_SENT.write(cur, {"user_id": noted.user_id, "now": now})
                # Once this message was handed over, the user's older unused links stop working.
                keys = {"user_id": noted.user_id, "dep_id": noted.dep_id, "now": now}
                superseding.append(cursor())
                _SUPERSEDE.write(superseding[-1], keys)
            else:
                if delivery.state == RETRY:
                    state, next_at = SEND_RETRY, now + RETRY_DELAYS[max(0, noted.attempts - 1)]
                    user_error = f"{delivery.detail} Retrying automatically."
                else:
                    state, next_at = (SEND_UNKNOWN if delivery.state == UNKNOWN else SEND_FAILED), None
                    user_error = delivery.detail
                error = delivery.detail
                _DEP_NOT_SENT.write(cur, {"dep_id": noted.dep_id, "state": state, "next_at": next_at,
                                          "error": error})
                _USER_NOT_SENT.write(cur, {"user_id": noted.user_id, "error": user_error, "now": now})
            noted.state = state
            detail = {"deployment": noted.dep_id, "recipient": noted.recipient, "link": noted.link_ref}
            if state == SEND_SENT:
                detail["outbox"] = delivery.outbox_file is not None
            else:
                detail["state"], detail["reason"] = state, delivery.detail
            _AUDIT.write(cur, {"now": now, "actor": self.actor[:64], "actor_type": self.actor_type,
                               "action": "deploy.sent" if state == SEND_SENT else f"deploy.{state}",
                               "user_id": noted.user_id, "login_id": noted.login_id, "detail": scrub(detail)})
            # The loaded rows follow what was written (they are not written again).
            if state == SEND_SENT:
                _loaded(dep, send_state=state, sent_at=now, next_attempt_at=None, send_error=None)
                _loaded(user, deployed_at=now, send_error=None, send_error_at=None, redeploy_required=False,
                        updated_at=now)
            else:
                _loaded(dep, send_state=state, next_attempt_at=next_at, send_error=error)
                _loaded(user, send_error=user_error, send_error_at=now, updated_at=now)
        return superseding

    def _written(self) -> None:
        for noted in self._unrecorded:
            log.info("deployment %s for user %s: %s%s", noted.dep_id, noted.user_id, noted.state,
                     "" if noted.delivery.state == SENT else f" ({noted.delivery.detail})")
        self._unrecorded.clear()


@dataclass
class _Noted:
    """An outcome noted by ``SendLedger.record``, with what writing it needs."""
    dep: Deployment
    user: User
    delivery: Delivery
    dep_id: int
    user_id: int
    login_id: str
    recipient: str
    link_ref: str
    attempts: int
    state: str = ""  # the send state written


def _loaded(obj, **values) -> None:
    """Set what the database now holds on a loaded row, without marking it changed."""
    for key, value in values.items():
        set_committed_value(obj, key, value)


def token_ref_of(dep: Deployment) -> str:
    """What audit and logs may show of a link: a short prefix of its hash."""
    return dep.token_hash[:10]


def _outcome(user: User, delivery: Delivery) -> Outcome:
    if delivery.state == SENT:
        return Outcome(user, "ok", OUTBOX_WRITTEN if delivery.outbox_file else "Sent.")
    if delivery.state == RETRY:
        return Outcome(user, "failed", f"Not sent yet: {delivery.detail} It is retried automatically.")
    return Outcome(user, "failed", delivery.detail)


# --- the bulk actions ----------------------------------------------------------

# A run's SMTP connection belongs to the claim of the runner that opened it (two
# runners of one job never share one); without a claim (a direct call), to the job.
_runs: dict[int, MailRun] = {}
_runs_lock = threading.Lock()


def _run_for(job: Job) -> MailRun:
    claim = current_claim()
    if claim is not None and claim.job_id == job.id:
        if "mail" not in claim.resources:
            claim.resources["mail"] = MailRun()
        return claim.resources["mail"]
    with _runs_lock:
        if job.id not in _runs:
            _runs[job.id] = MailRun()
        return _runs[job.id]


def _finish(job: Job) -> None:
    """End of a Deploy / Auto deploy job: close its SMTP connection, push redirect links."""
    claim = current_claim()
    if claim is not None and claim.job_id == job.id:
        run = claim.resources.pop("mail", None)
    else:
        with _runs_lock:
            run = _runs.pop(job.id, None)
    if run is not None:
        run.close()
    push_outbox()


@contextmanager
def _keep_loaded():
    """Commits inside a batch do not expire the batch's rows: this run is their only
    writer, and reloading hundreds of rows after every commit would cost more than
    the sending itself."""
    session = db.session()
    before = session.expire_on_commit
    session.expire_on_commit = False
    try:
        yield
    finally:
        session.expire_on_commit = before


def deploy_users(job: Job, users: list[User]) -> list[Outcome]:
    """Deploy a batch of a job: issue links, then send, one user after the other."""
    with _keep_loaded():
        return _deploy_users(job, users)


def _deploy_users(job: Job, users: list[User]) -> list[Outcome]:
    actor = job.created_by
    outcomes: dict[int, Outcome] = {}
    # A batch interrupted by a crash runs again: deployments it already made are
    # honoured as they are, never sent twice.
    earlier = {d.user_id: d for d in db.session.scalars(select(Deployment).where(
        Deployment.job_id == job.id, Deployment.user_id.in_([u.id for u in users]),
        Deployment.superseded_at.is_(None)))}
    to_issue = []
    # Issued by an interrupted run but never handed over: withdrawn, a new link replaces it.
    unsent = [d for d in earlier.values() if d.send_state == SEND_PENDING]
    _withdraw_unsent(unsent)
    for d in unsent:
        del earlier[d.user_id]
    for user in users:
        dep = earlier.get(user.id)
        if dep is not None and dep.send_state != SEND_PENDING:
            outcomes[user.id] = _resumed_outcome(user, dep, actor)
        elif (refusal := deploy_refusal(user)) is not None:
            outcome, reason = refusal
            if outcome == "failed":
                user.send_error, user.send_error_at = reason, utcnow()
            outcomes[user.id] = Outcome(user, outcome, reason)
        else:
            to_issue.append(user)
    run = _run_for(job)
    # A profile whose own subject or body does not render is reported before any link changes.
    broken = _profiles_with_template_problems(run, to_issue)
    for user in [u for u in to_issue if u.profile_id in broken]:
        outcomes[user.id] = Outcome(user, "failed", f"E-mail template problem: {broken[user.profile_id]}")
    to_issue = [u for u in to_issue if u.profile_id not in broken]
    issued = issue_deployments(to_issue, actor=actor, job_id=job.id)
    db.session.commit()
    if current_app.config["REDIRECT_MODE"] == "remote":
        push_outbox()
    pngs = run.qr.pngs([link_for(token, user.profile) for user, _, token in issued])
    ledger = SendLedger(actor)
    try:
        for (user, dep, token), png in zip(issued, pngs):
            try:
                # Composed while the server takes the previous message in.
                message = compose_deployment_mail(run, user, dep, token, png)
            except TemplateProblem as exc:
                ledger.record(dep, user, Delivery(FAILED, f"E-mail template problem: {exc}"))
            else:
                ledger.hand_over(run, user, dep, message)
    except BaseException:
        ledger.flush_after_error()
        raise
    ledger.flush()
    for user, _, _ in issued:
        outcomes[user.id] = _outcome(user, ledger.outcomes[user.id])
    db.session.commit()
    return [outcomes[u.id] for u in users]


def _profiles_with_template_problems(run: MailRun, users: list[User]) -> dict[int, str]:
    problems = {}
    base = redirect_url()
    for profile in {u.profile_id: u.profile for u in users}.values():
        try:
            run.templates.render(sample_context(base, profile.link_validity_hours), profile)
        except TemplateProblem as exc:
            problems[profile.id] = str(exc)
    return problems


def _withdraw_unsent(deps: list[Deployment]) -> None:
    """Pending deployments of an interrupted run: never handed over, so nobody has their
    link; it stops working (the user's older links are untouched)."""
    if not deps:
        return
    now = utcnow()
    ids = [d.id for d in deps]
    db.session.execute(update(Deployment).where(Deployment.id.in_(ids), Deployment.send_state == SEND_PENDING)
                       .values(send_state=SEND_FAILED, superseded_at=now, send_error=REPLACED_UNSENT)
                       .execution_options(synchronize_session=False))
    withdraw_links([d.token_hash for d in deps])
    for d in deps:
        d.send_state, d.superseded_at, d.send_error = SEND_FAILED, now, REPLACED_UNSENT
    db.session.commit()


def _in_outbox(dep: Deployment) -> str | None:
    """The outbox file written for this deployment, if any (outbox mode only)."""
    try:
        found = sorted(outbox_dir().glob(f"*-d{dep.id}-*.eml"))
    except OSError:
        return None
    return found[0].name if found else None


def _resumed_outcome(user: User, dep: Deployment, actor: str | None) -> Outcome:
    if dep.send_state == SEND_SENT:
        return Outcome(user, "ok", "Sent.")
    if dep.send_state == SEND_SENDING:
        # Written to the outbox before the run stopped: it was handed over, exactly once.
        written = _in_outbox(dep)
        if written:
            _record_delivery(dep, user, Delivery(SENT, "Written to the outbox.", outbox_file=written), actor)
            return Outcome(user, "ok", "Written to the outbox.")
        if MailSettings.load().uses_outbox:
            # No file: the outbox never got it. Not retried automatically all the same
            # (the run may have used an SMTP server set up then), but known not sent.
            _record_delivery(dep, user, Delivery(FAILED, NOT_WRITTEN), actor)
            return Outcome(user, "failed", NOT_WRITTEN)
        _record_delivery(dep, user, Delivery(UNKNOWN, INTERRUPTED), actor)
        return Outcome(user, "failed", INTERRUPTED)
    if dep.send_state == SEND_RETRY:
        return Outcome(user, "failed", f"Not sent yet: {dep.send_error} It is retried automatically.")
    return Outcome(user, "failed", dep.send_error or "Not sent.")


def settle_users(job: Job, users: list[User], reason: str) -> list[Outcome]:
    """The outcome of users a failed Deploy / Auto deploy job did not record: what their
    deployment of this job says, else ``reason``."""
    deps = {d.user_id: d for d in db.session.scalars(select(Deployment).where(
        Deployment.job_id == job.id, Deployment.user_id.in_([u.id for u in users]),
        Deployment.superseded_at.is_(None)).order_by(Deployment.id))}
    _withdraw_unsent([d for d in deps.values() if d.send_state == SEND_PENDING])
    outcomes = []
    for user in users:
        dep = deps.get(user.id)
        if dep is None or dep.send_state == SEND_FAILED and dep.send_error == REPLACED_UNSENT:
            outcomes.append(Outcome(user, "failed", reason))
        else:
            outcomes.append(_resumed_outcome(user, dep, job.created_by))
    return outcomes


@action("deploy", "Deploy", finish=_finish, schedulable=True, settle=settle_users)
def deploy_batch(job: Job, users: list[User]) -> list[Outcome]:
    return deploy_users(job, users)


def force_config_users(job: Job | None, users: list[User], actor: str | None = None) -> list[Outcome]:
    """Mark users so their client downloads its configuration again at its next status check."""
    actor = actor or (job.created_by if job else None)
    outcomes = []
    active = set(db.session.scalars(select(ClientDevice.user_id).where(
        ClientDevice.user_id.in_([u.id for u in users]), ClientDevice.revoked_at.is_(None))))
    for user in users:
        if user.id not in active:
            reason = ("The client must be redeployed (its access was revoked)." if user.redeploy_required
                      else "No client has been activated for this user yet; use Deploy.")
            outcomes.append(Outcome(user, "skipped", reason))
            continue
        if not user.force_config:
            user.force_config = True
            user.config_version += 1
        record_event("force_config.set", actor=actor or "system", actor_type=actor_type_of(actor),
                     user=user, commit=False)
        outcomes.append(Outcome(user, "ok", "Force config set."))
    db.session.commit()
    return outcomes


@action("force_config", "Set Force Config", schedulable=True)
def force_config_batch(job: Job, users: list[User]) -> list[Outcome]:
    return force_config_users(job, users)


@action("auto_deploy", "Auto deploy", finish=_finish, schedulable=True, settle=settle_users)
def auto_deploy_batch(job: Job, users: list[User]) -> list[Outcome]:
    """Users whose client has downloaded get Set Force Config; users with a link that is
    still open are left alone; all others Deploy (see ``classify``)."""
    decisions = classify("auto_deploy", users)
    forced = [u for u in users if decisions[u.id].step == FORCE]
    to_deploy = [u for u in users if decisions[u.id].step in (SEND, FAIL)]
    outcomes = {u.id: Outcome(u, "skipped", decisions[u.id].reason) for u in users
                if decisions[u.id].step == SKIP}
    outcomes.update({o.user.id: o for o in force_config_users(job, forced)} if forced else {})
    outcomes.update({o.user.id: o for o in deploy_users(job, to_deploy)} if to_deploy else {})
    return [outcomes[u.id] for u in users]


# --- what Deploy and Auto deploy will do, before they do it ----------------------------

FORCE, SEND, SKIP, FAIL = "force_config", "send", "skip", "fail"
LINK_STILL_OPEN = ("A link sent earlier is still valid and not used yet: not sent again "
                   "(Deploy sends a new one on purpose).")


@dataclass
class Decision:
    step: str  # FORCE, SEND, SKIP (with the reason), FAIL (cannot be sent: the reason)
    reason: str = ""


def classify(kind: str, users: list[User]) -> dict[int, Decision]:
    """What ``kind`` ("deploy" or "auto_deploy") does with each user, by id. One set of
    rules for the confirmation (before anything is sent) and for the job itself.

    Auto deploy: an activated client gets Set Force Config; a user whose last e-mail's
    link is still valid and unused is not mailed again (a second e-mail would kill the
    first link); everyone else is deployed. Deploy sends to everyone on purpose."""
    ids = [u.id for u in users]
    active: set[int] = set()
    open_links: set[int] = set()
    if kind == "auto_deploy" and ids:
        downloaded = [u.id for u in users if u.downloaded_at is not None and not u.redeploy_required]
        if downloaded:
            active = set(db.session.scalars(select(ClientDevice.user_id).where(
                ClientDevice.user_id.in_(downloaded), ClientDevice.revoked_at.is_(None))))
        open_links = set(db.session.scalars(select(Deployment.user_id).where(
            Deployment.user_id.in_(ids), Deployment.send_state == SEND_SENT,
            Deployment.used_at.is_(None), Deployment.revoked_at.is_(None),
            Deployment.superseded_at.is_(None), Deployment.expires_at > utcnow())))
    decisions = {}
    for user in users:
        # Whom Deploy would not send to, and why, is Deploy's own rule (deploy_refusal).
        refusal = deploy_refusal(user)
        if user.id in active:
            decisions[user.id] = Decision(FORCE)
        elif refusal is not None and refusal[0] == "skipped":
            decisions[user.id] = Decision(SKIP, refusal[1])
        elif user.id in open_links:
            decisions[user.id] = Decision(SKIP, LINK_STILL_OPEN)
        elif refusal is not None:
            decisions[user.id] = Decision(FAIL, refusal[1])
        else:
            decisions[user.id] = Decision(SEND)
    return decisions


@dataclass
class DeployPreview:
    """The counts a Deploy / Auto deploy confirmation shows."""
    kind: str
    total: int = 0
    force_config: int = 0
    send: int = 0
    skipped: dict[str, int] = field(default_factory=dict)   # reason -> users
    failing: dict[str, int] = field(default_factory=dict)   # reason -> users

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def failing_total(self) -> int:
        return sum(self.failing.values())


def preview_deploy(kind: str, selection: dict, batch: int = 1000) -> DeployPreview:
    """Classify every selected user as the job will (``classify``), without changing anything."""
    preview = DeployPreview(kind)
    last_id = 0
    while True:
        users = list(db.session.scalars(selection_query(selection).where(User.id > last_id)
                                        .order_by(User.id).limit(batch)
                                        .options(selectinload(User.profile))))
        if not users:
            break
        for decision in classify(kind, users).values():
            preview.total += 1
            if decision.step == FORCE:
                preview.force_config += 1
            elif decision.step == SEND:
                preview.send += 1
            else:
                bucket = preview.skipped if decision.step == SKIP else preview.failing
                bucket[decision.reason] = bucket.get(decision.reason, 0) + 1
        last_id = users[-1].id
    return preview


# --- retries and interrupted sends (scheduler) -------------------------------------

def resend_due(limit: int = 50) -> int:
    """Send the deployments whose retry time has come. Returns how many were attempted."""
    now = utcnow()
    due = list(db.session.scalars(select(Deployment).where(
        Deployment.send_state == SEND_RETRY, Deployment.next_attempt_at <= now)
        .order_by(Deployment.next_attempt_at).limit(limit)
        .options(selectinload(Deployment.user).selectinload(User.profile))))
    if not due:
        return 0
    run = MailRun()
    try:
        with _keep_loaded():
            for dep in due:
                _resend(run, dep)
    finally:
        run.close()
    return len(due)


def _resend(run: MailRun, dep: Deployment) -> None:
    user = dep.user
    now = utcnow()
    if dep.superseded_at or dep.revoked_at or dep.used_at or user.profile.is_do_not_deploy:
        dep.send_state, dep.next_attempt_at = SEND_FAILED, None
        dep.send_error = "Not retried: the link was replaced or revoked in the meantime."
        db.session.commit()
        return
    # Claim it: two schedulers (or a job and the scheduler) never send the same one.
    claimed = db.session.execute(update(Deployment).where(
        Deployment.id == dep.id, Deployment.send_state == SEND_RETRY)
        .values(send_state=SEND_PENDING).execution_options(synchronize_session=False)).rowcount
    if claimed != 1:
        db.session.rollback()
        return
    db.session.refresh(dep)
    token = _rotate_token(dep, user, now)
    db.session.commit()
    delivery = send_deployment_mail(run, user, dep, token, actor=dep.issued_by)
    log.info("retried deployment %s (link %s): %s", dep.id, token_ref(token), delivery.state)


def mark_interrupted_sends() -> int:
    """Deployments left "sending" by a process that died: never resent, reported as not sent."""
    cutoff = utcnow() - INTERRUPTED_AFTER
    stuck = list(db.session.scalars(select(Deployment).where(
        Deployment.send_state == SEND_SENDING, Deployment.next_attempt_at < cutoff)
        .options(selectinload(Deployment.user))))
    for dep in stuck:
        _resumed_outcome(dep.user, dep, None)
    return len(stuck)


@tick_task("deploy.retry_mail", every_ticks=6)
def retry_mail_tick(app) -> None:
    mark_interrupted_sends()
    resend_due()


# --- the landing page --------------------------------------------------------------

@dataclass
class LinkView:
    """What the landing page may show: the link's state and expiry, no user data."""
    state: str  # valid, used, expired, superseded, revoked, unknown
    expires_at: datetime | None = None
    link: str | None = None
    # The client kind of the link's profile: the app named, the button and install links.
    kind: object = None
    app_link: str | None = None


def view_link(token: str) -> LinkView:
    """Look a link up without consuming it (mail scanners and previews open links)."""
    if len(token) > 128:
        return LinkView("unknown")
    dep = db.session.scalar(select(Deployment).where(Deployment.token_hash == token_hash(token)))
    if dep is None:
        return LinkView("unknown", kind=kind_of(None))
    state = dep.status()
    kind = kind_of(dep.user.profile)
    if state != "valid":
        return LinkView(state, dep.expires_at, kind=kind)
    link = kind.link(token)
    return LinkView(state, dep.expires_at, link, kind, kind.app_link(link))
