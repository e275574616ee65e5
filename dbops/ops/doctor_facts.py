"""What invoke doctor's checks read and return: ``Check`` (one line of the report, with the
command it proposes), ``Facts`` (the agent's answers, gathered once; the live fingerprint and
the expected schemas on first use) and the small helpers the checks share."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dbops import catalog, seam
from dbops.agent_client import Agent, AgentError
from dbops.config import Settings
from dbops.errors import OpsError, as_command
from dbops.ops import recover as recover_op

OK, WARN, FAIL, UNKNOWN = "ok", "warn", "fail", "unknown"
IDLE_TX_WARN_S = 60
SCHEMA_ACTIONS = ("migrate", "rollback", "stamp", "recover")
DUMP_APPS = ("pg_dump", "pg_dumpall", "pg_restore")


@dataclass
class Check:
    name: str
    status: str
    summary: str
    details: list[str] = field(default_factory=list)
    next: str | None = None  # the command this check proposes
    why: str | None = None
    data: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {
            "name": self.name,
            "status": self.status,
            "summary": self.summary,
            "details": self.details,
            **self.data,
        }
        if self.next:
            out.update(next=as_command(self.next), next_reason=self.why)
        return out


class Unknown(Exception):
    """A check that cannot tell: ``check`` is its "unknown" line."""

    def __init__(self, check: Check):
        super().__init__(check.summary)
        self.check = check


class Facts:
    """What the checks read, gathered once: the agent's facts, and lazily the live fingerprint
    and the expected schemas (both cost a round trip, the second maybe a scratch database)."""

    def __init__(
        self,
        settings: Settings,
        agent: Agent | None,
        *,
        schema: bool,
        start_error: OpsError | None = None,
    ):
        self.settings, self.agent, self.schema_wanted = settings, agent, schema
        self.start_error = start_error
        self.result: dict = {}
        self.raw: dict = {"errors": {}, "error_kinds": {}}
        if agent is not None:
            try:
                self.raw = agent.call("doctor.facts")
            except AgentError as exc:
                self.raw = {
                    "errors": {"facts": exc.message},
                    "error_kinds": {"facts": exc.kind},
                    "status": None,
                }
        self.errors: dict = self.raw.get("errors") or {}
        self.kinds: dict = self.raw.get("error_kinds") or {}
        self._insp: dict | None = None
        self._analysis: dict | None = None

    @property
    def reachable(self) -> bool:
        return (
            self.agent is not None
            and (self.raw.get("connection") or {}).get("ok", False)
            and "facts" not in self.errors
        )

    @property
    def status(self) -> dict | None:
        return self.raw.get("status")

    @property
    def pending(self) -> list[str]:
        return (self.status or {}).get("pending") or []

    def need(self, key: str, check: str, what: str):
        """The fact ``key``; when the agent could not read it, ``check`` ends as "unknown"
        saying ``what`` could not be done, and why (raises Unknown: run_checks reports it)."""
        value = self.raw.get(key)
        if value is None:
            raise Unknown(Check(check, UNKNOWN, f"{what}: {self.errors.get(key)}"))
        return value

    def insp(self) -> dict | None:
        if self._insp is None and self.agent is not None and self.status:
            try:
                self._insp = recover_op.scoped_inspect(
                    self.settings, self.agent.call("recover.inspect")
                )
            except AgentError as exc:
                self.errors["inspect"] = exc.message
                self._insp = {}
        return self._insp or None

    def analysis(self) -> dict:
        """The live schema against the expected one of every revision: steps, idx (the step of
        the current version rows), matches, half (a half-applied revision), or error."""
        if self._analysis is None:
            self._analysis = _analyse(self)
        return self._analysis


def _analyse(f: Facts) -> dict:
    insp = f.insp()
    if insp is None:
        return {"error": "could not fingerprint the live database"}
    if not f.schema_wanted:
        return {
            "error": f"not checked (--no-schema); live: {insp['live']['summary']}",
            "skipped": True,
        }
    try:
        steps, source = recover_op.expected_steps(f.settings, f.agent, insp)
    except OpsError as exc:
        return {"error": f"could not build the expected schemas: {exc.message}"}
    live_fp, live_hash = insp["live"]["fingerprint"], insp["live"]["hash"]
    current = sorted(f.status["current"])
    idx = next((i for i, s in enumerate(steps) if sorted(s["heads"]) == current), None)
    return {
        "steps": steps,
        "source": source,
        "idx": idx,
        "live_fp": live_fp,
        "matches": [s["revision"] or "base" for s in steps if s["hash"] == live_hash],
        "at_current": idx is not None and steps[idx]["hash"] == live_hash,
        "half": (
            recover_op.half_applied(steps, idx, live_fp)
            if idx is not None and steps[idx]["hash"] != live_hash
            else None
        ),
    }


# --- helpers -----------------------------------------------------------------------------
def psql_command(sql: str, *, env: str = "") -> str:
    """The command for one SQL statement on the target (`invoke psql` goes through the seam)."""
    if "'" in sql and not re.search(r'["$`\\!]', sql):  # readable: "… WHERE x = 'y'"
        quoted = f'"{sql}"'
    else:
        quoted = shlex.quote(sql)
    return (env + " " if env else "") + "invoke psql -c " + quoted


def _ident(name: str) -> str:
    return ".".join(
        p if re.fullmatch(r"[a-z_][a-z0-9_$]*", p) else '"' + p.replace('"', '""') + '"'
        for p in name.split(".")
    )


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _age(ts: str | datetime | None) -> float | None:
    if ts is None:
        return None
    if isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts.replace("Z", "+00:00"))
        except ValueError:
            return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (datetime.now(UTC) - ts).total_seconds() / 3600


def _major(version: str | None) -> int | None:
    m = re.search(r"(\d+)(?:\.\d+)?", version or "")
    return int(m.group(1)) if m else None


def _env_file(settings: Settings) -> str:
    return settings.raw.get("DBOPS_ENV_FILE") or ".env"


def pg_dump_version(settings: Settings) -> str | None:
    try:
        done = seam.run(seam.target_for(settings).pg(["pg_dump", "--version"]), timeout=60)
    except Exception:  # no pg_dump, compose not answering: reported as unknown
        return None
    if done.returncode != 0:
        return None
    m = re.search(r"(\d+(?:\.\d+)?)", done.stdout.decode(errors="replace"))
    return m.group(1) if m else None


def newest_verified_backup(settings: Settings) -> tuple[dict | None, str | None]:
    """(the newest verified backup of THIS database, or None; why it is unknown, or None)."""
    try:
        backups = catalog.list_backups(settings, database=settings.database)
    except Exception as exc:
        return None, f"the backup catalog could not be read: {exc}"
    return next((b for b in backups or [] if b.get("verified")), None), None


def needs_db(fn: Callable[[Facts], Check | None]) -> Callable[[Facts], Check | None]:
    """A check of the live database: not reported when the database cannot be reached."""

    def run(f: Facts) -> Check | None:
        return fn(f) if f.reachable else None

    run.__name__, run.__doc__ = fn.__name__, fn.__doc__
    return run
