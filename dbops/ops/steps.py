"""The steps migrate, rollback, stamp and check share: refusals, the lock, the backup before
a change, running revisions one at a time with bounded retries, and ``audited``, which writes
a run's audit record on every outcome (ok, failed, interrupted) through its
``lifecycle.Operation`` (``Run.op``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from dbops.agent_client import STOP_WAIT, Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError, command
from dbops.lifecycle import Operation, outcome_of
from dbops.ops.output import Out, print_note
from dbops.ops.status import label


def refusal(exc: AgentError, current: list[str] | None = None, action: str = "migrate") -> OpsError:
    """A preflight/plan refusal: nothing was changed."""
    d = exc.agent_details
    details: list[str] = []
    cur = d.get("current", current)
    state = f"unchanged at {label(cur)}" if cur is not None else "unchanged"
    nxt = None
    if exc.kind == "multiple_heads":
        for h in d.get("head_info") or [{"revision": h, "message": ""} for h in d.get("heads", [])]:
            details.append(f"head {h['revision']}  {h.get('message', '')}")
        nxt = (
            f"alembic merge -m 'merge heads' {' '.join(d.get('heads', []))}   "
            f"(in the Alembic project; commit the merge revision, then: invoke {action})"
        )
    elif exc.kind == "env_py":
        nxt = f"invoke {action}   # after fixing what the project's env.py needs (its error above)"
    elif exc.kind == "unknown_current":
        details.append("known revisions (newest first):")
        details += [f"  {c['revision']}  {c['message']}" for c in d.get("candidates", [])]
        nxt = (
            "invoke doctor   # finds which revision the schema really matches; then: "
            "invoke stamp --to=REV with it (stamp changes no schema)"
        )
    elif exc.kind == "bad_target":
        cands = d.get("candidates") or []
        if cands:
            details.append("candidates:")
            details += [
                f"  {c['revision']}  {c.get('message', '')}"
                + (f"  [{', '.join(c['branch_labels'])}]" if c.get("branch_labels") else "")
                for c in cands
            ]
        if d.get("reason") == "below_current":
            nxt = "invoke rollback --to=REV   (rollback goes down; migrate only goes up)"
        else:
            nxt = (
                command(
                    "invoke",
                    action,
                    f"--to={cands[0]['revision']}",
                    why="or another of the candidates above",
                )
                if cands
                else f"invoke history   # then: invoke {action} --to=REV"
            )
    elif exc.kind in ("connect", "read_only", "script") and exc.next_command:
        return OpsError(  # doctor's words (dbops/ops/failures.py)
            exc.message, state=exc.state, next_command=exc.next_command, details=exc.details
        )
    elif exc.kind == "connect":
        state = "unknown (the database was not reached; nothing was done)"
        nxt = "invoke doctor   # check POSTGRES_* in .env and that the server is up"
    return OpsError(exc.message, state=state, next_command=nxt, details=details)


def planned(agent: Agent, op: str, action: str = "migrate", **args) -> dict:
    """The agent's preflight/plan answer to ``op``, or its refusal (nothing was changed)."""
    try:
        return agent.call(op, **args)
    except AgentError as exc:
        raise refusal(exc, action=action) from None


def backup_folder_ready(settings: Settings, current: list[str], action: str) -> None:
    """The backup folder can take the backup before a change: checked before the lock."""
    from dbops.ops import backup as backup_op
    from dbops.safefile import FolderError

    try:
        backup_op.backup_folder(settings)
    except FolderError as exc:
        raise OpsError(
            f"the backup before {action} cannot be written, so nothing was changed: {exc.message}",
            state=f"unchanged at {label(current)}",
            next_command=exc.next_command,
        ) from None


def acquire_lock(agent: Agent, purpose: str, current: list[str], action: str) -> None:
    try:
        agent.call("lock.acquire", purpose=purpose)
    except AgentError as exc:
        if exc.kind == "locked":
            raise OpsError(
                exc.message,
                state=f"unchanged at {label(current)}",
                next_command=f"invoke current   # once the holder above has finished "
                f"(it shows the result), then re-run: invoke {action}",
            ) from None
        raise


def backup_before(
    settings: Settings, agent: Agent, reason: str, out: Out, current: list[str], action: str
) -> str:
    """The verified backup taken before a change (``reason``: pre-migrate, pre-rollback); a
    failed backup stops the operation before anything is changed. Returns the file's path."""
    from dbops.ops import backup as backup_op

    out(f"backup ({reason}) ...")
    try:
        res = backup_op.take_backup(settings, agent, reason)
    except OpsError as exc:
        raise OpsError(
            f"the {reason} backup failed, so nothing was changed: {exc.message}",
            state=f"unchanged at {label(current)}",
            details=exc.details,
            next_command=f"invoke backup   # fix the backup; or knowingly skip it: "
            f"invoke {action} --no-backup",
        ) from None
    path = str(res["path"])
    out(f"backup: {path}")
    return path


def wal_position(agent: Agent) -> dict:
    """The server's WAL position and clock just before a run's first statement: the target of
    ``invoke restore --before=`` (point-in-time recovery, docs/pitr.md); empty when the server
    cannot say."""
    try:
        return agent.call("pitr.position")
    except OpsError:
        return {}


def run_steps(
    settings: Settings,
    agent: Agent,
    revisions: list[str],
    direction: str,
    out: Out,
    done: list[dict],
    applying: Callable[[dict], bool] | None = None,
) -> None:
    """Apply (up) or undo (down) each revision in order, each as its own alembic run, retrying a
    lock timeout with backoff up to DBOPS_LOCK_RETRIES times (the agent re-reads the current
    revision before every attempt). Completed steps are appended to ``done``. ``applying``
    (Run.applying) records each revision before it starts; the agent then commits a
    transactional one only when this host, still running this loop, says so (the handshake)."""
    for rev in revisions:
        res = _step(settings, agent, rev, direction, out, applying)
        done.append(res)
        verb = "applied" if direction == "up" else "downgraded"
        attempts = res["attempts"]
        out(
            f"  {verb} {rev} in {res['seconds']:.2f} s"
            + (f" (after {attempts} attempts)" if attempts > 1 else "")
            + (" (already done)" if res.get("skipped") else "")
        )


def _step(
    settings: Settings,
    agent: Agent,
    rev: str,
    direction: str,
    out: Out,
    applying: Callable[[dict], bool] | None,
) -> dict:
    """One revision's alembic run, its lock timeouts retried; its answer with ``attempts`` and
    ``wall_seconds`` (from before its applying line)."""
    t0 = time.monotonic()
    if applying is not None:
        applying({"revision": rev, "direction": direction})
    for attempt in _retrying(settings, rev, out):
        with attempt:
            attempts = attempt.retry_state.attempt_number
            res = agent.call(
                "migrate.step",
                revision=rev,
                direction=direction,
                lock_timeout=settings.lock_timeout,
                statement_timeout=settings.statement_timeout,
                attempt=attempts,
                handshake=applying is not None,
                on_ready=lambda what: what.get("revision") == rev,
            )
    res["attempts"] = attempts
    res["wall_seconds"] = round(time.monotonic() - t0, 3)
    return res


def _retrying(settings: Settings, rev: str, out: Out) -> Retrying:
    """Up to DBOPS_LOCK_RETRIES more attempts after a lock timeout, each announced."""
    retries = max(0, settings.lock_retries)

    def note(rs) -> None:
        exc = rs.outcome.exception()
        wait = rs.next_action.sleep if rs.next_action else 0
        holders = "; ".join(
            f"pid {b['pid']} {b['application_name']!r} ({b['state']}, "
            f"transaction open {b['xact_seconds']} s, locks {b['locks']})"
            for b in exc.agent_details.get("blockers") or []
        )
        out(
            f"  lock_timeout ({settings.lock_timeout}) on {rev}, attempt {rs.attempt_number}/"
            f"{retries + 1}: {holders or 'blocker gone'}; nothing waits behind us; retrying in "
            f"{wait:.1f} s"
        )

    return Retrying(
        stop=stop_after_attempt(retries + 1),
        wait=wait_exponential_jitter(
            initial=settings.get("DBOPS_LOCK_RETRY_WAIT"), max=15, jitter=0.5
        ),
        retry=retry_if_exception(lambda e: isinstance(e, AgentError) and e.kind == "lock_timeout"),
        before_sleep=note,
        reraise=True,
    )


def step_failure(
    exc: AgentError,
    *,
    action: str,
    before: list[str],
    backup: str | None,
    retries: int,
    fix_hint: str,
) -> OpsError:
    d = exc.agent_details
    if exc.kind == "version_table":  # the rows dbops read are not env.py's: not a state
        kept = [f"{action} backup: {backup}"] if backup else []
        return OpsError(exc.message, state=exc.state, next_command=exc.next_command, details=kept)
    after = d.get("after", before)
    rev = d.get("revision", "?")
    details: list[str] = []
    if exc.kind == "lock_timeout":
        details.append(f"gave up after {retries + 1} attempts; the sessions holding locks:")
        for b in d.get("blockers") or []:
            details.append(
                f"  pid {b['pid']} {b['application_name']!r} user {b['user']} "
                f"{b['state']} since {b['xact_start']} ({b['xact_seconds']} s): "
                f"{b['locks']}; last query: {b['query']}"
            )
        if not d.get("blockers"):
            details.append("  (none left now: it may have just finished; re-run)")
    if d.get("transactional") is False:
        details.append(
            f"{rev} uses autocommit_block(): it ran partly OUTSIDE a transaction, so "
            f"statements before the failure may have committed"
        )
    elif "transactional" in d:
        details.append(f"{rev} ran in a transaction: its changes were rolled back")
    if d.get("dropped_invalid_indexes"):
        details.append(
            f"dropped the INVALID index(es) the failed attempt left: "
            f"{', '.join(d['dropped_invalid_indexes'])}"
        )
    if d.get("invalid_indexes"):
        details.append(f"INVALID indexes in the database now: {', '.join(d['invalid_indexes'])}")
    if backup:
        details.append(f"{action} backup: {backup}")
    state = f"before {action}: {label(before)}; now: {label(after)}"
    if exc.kind == "lock_timeout":
        nxt = (
            f"invoke {action}   # after the blocking session(s) above end (or end them: "
            f"SELECT pg_terminate_backend(pid), only if you own them)"
        )
    elif d.get("transactional") is False:
        nxt = f"invoke doctor   (see what {rev} left behind), then {fix_hint}"
    else:
        nxt = fix_hint
    return OpsError(exc.message, state=state, next_command=nxt, details=details)


def cut_short(before: list[str], done: list[str], how: str = "") -> str:
    """The state after a run that ended mid-way: what it completed, and the step in progress."""
    return (
        f"before: {label(before)}; completed by this run: {', '.join(done) or 'nothing'}; "
        f"the step in progress was rolled back{' ' + how if how else ''}, unless it used "
        f"autocommit_block()"
    )


def read_back(run: Run) -> list[str] | None:
    """The version rows read afresh once the run's agent has exited."""
    return rows_afresh(run.settings, run.agent)


def rows_afresh(settings: Settings, agent: Agent | None) -> list[str] | None:
    """The version rows read by a fresh agent once ``agent`` has exited (its work committed or
    rolled back by then); None when they cannot be read either."""
    from dbops.agent_client import call_once

    if agent is not None:
        agent.close(wait=STOP_WAIT)
    try:
        return list(call_once(settings, "settle.read", revisions=[])["current"])
    except (OpsError, KeyboardInterrupt):
        return None


def now_state(before: list[str], done: list[str], now: list[str] | None, how: str = "") -> str:
    if now is None:
        return cut_short(before, done, how) + "; the database could not be read afterwards"
    return (
        f"before: {label(before)}; completed by this run: {', '.join(done) or 'nothing'}; "
        f"now (read from the database after the agent exited): {label(now)}"
    )


def agent_died(
    action: str,
    exc: OpsError,
    before: list[str],
    done: list[str],
    backup: str | None,
    now: list[str] | None = None,
) -> OpsError:
    return OpsError(
        f"{action} stopped: {exc.message}",
        state=now_state(before, done, now, "by PostgreSQL when its connection ended"),
        details=[f"{action} backup: {backup}"] if backup else [],
        next_command="invoke current   (then invoke doctor)",
    )


def interrupted(
    action: str,
    before: list[str],
    done: list[str],
    backup: str | None,
    now: list[str] | None = None,
) -> OpsError:
    """Ctrl-C or SIGTERM mid-run: the agent was stopped (its transaction rolled back) and has
    exited; the state is read back from the database."""
    return OpsError(
        f"{action} interrupted",
        exit_code=130,
        state=now_state(before, done, now),
        details=[f"{action} backup: {backup}"] if backup else [],
        next_command="invoke current   (then invoke doctor if a revision used autocommit_block)",
    )


@dataclass
class Run:
    """One schema-changing run: what its audit record holds whatever the outcome.

    ``record`` is the part known before the first step; ``hashes`` the planned revisions' file
    hashes, of which the completed ones go into each key of ``hash_keys``."""

    settings: Settings
    action: str
    before: list[str]
    backup: str | None
    record: dict
    hashes: dict[str, str]
    started: float
    hash_keys: tuple[str, ...] = ("revision_hashes",)
    done: list[dict] = field(default_factory=list)
    agent: Agent | None = None  # stopped, then the state read afresh, when interrupted
    op: Operation = field(init=False)

    def __post_init__(self) -> None:
        self.op = Operation(self.settings, self.action, warn=print_note, **self.record)

    @property
    def op_id(self) -> str:
        return self.op.op_id

    def completed(self) -> list[str]:
        return [d["revision"] for d in self.done if not d.get("skipped")]

    def applying(self, what: dict) -> bool:
        """Record, durably (fsync), that ``what`` (revision, direction) is about to be applied,
        before the agent is asked to: no commit without an audit line. Written before the step,
        outside its locks; the commit itself waits only for the host's word (run_steps). A
        record that cannot be written stops the run before the step."""
        self.op.intent(
            "applying",
            unchanged=f"{what.get('revision')} was not committed",
            revision=what.get("revision"),
            direction=what.get("direction"),
            **{"from": self.before},
        )
        return True

    def write(self, result: str = "ok", **outcome) -> dict:
        applied = {r: self.hashes[r] for r in self.completed()}
        return self.op.finish(
            result,
            **outcome,
            steps=self.done,
            **{key: dict(applied) for key in self.hash_keys},
        )


def audited(run: Run, body: Callable[[], dict], failure: Callable[[AgentError], OpsError]) -> dict:
    """Run ``body`` (which appends each completed step to ``run.done`` and returns the agent's
    verify result) and write the audit record on every outcome:
    - ok: ``to`` is the verified revision;
    - the agent refused a step or the verification: ``failure(exc)`` describes it;
    - the agent died (killed, OOM, container stopped): what completed, and the next command;
    - Ctrl-C: result "interrupted", exit status 130."""
    try:
        res = body()
    except AgentError as exc:
        err = failure(exc)
        result, fields = outcome_of(exc)  # failed, with error and error_kind
        d = exc.agent_details
        fields.update(to=d.get("after", d.get("current")), state=err.state)
        run.write(result, **fields)
        raise err from None
    except OpsError as exc:
        now = read_back(run)
        run.write("failed", to=now, error=exc.message, error_kind="agent_died")
        raise agent_died(run.action, exc, run.before, run.completed(), run.backup, now) from None
    except KeyboardInterrupt:
        now = read_back(run)
        run.write("interrupted", to=now)
        raise interrupted(run.action, run.before, run.completed(), run.backup, now) from None
    run.write("ok", to=res["current"])
    return res
