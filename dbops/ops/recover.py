"""invoke recover: which revision is the live schema exactly, and (with --apply) stamp it.

One agent process: ``recover.inspect`` (live fingerprint, version rows, the history and
its file hashes), ``recover.expected`` only on a cache miss (a linear pass on a scratch
database), and with ``--apply`` ``lock.acquire`` + ``recover.stamp`` inside a lifecycle
``Operation``: an "applying" line first, the agent's commit on the host's word (the
handshake stamp and migrate have; dbops/ops/settle.py settles a line whose host died).
Comparing is done here, on the host. Expected fingerprints are cached as JSON under
``DBOPS_CACHE_DIR`` (default ``.dbops/cache``)/recover/, keyed by the revision chain (ids,
parents, a sha256 of each revision file and of env.py), the server's major version and the
fingerprint format.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from dbops import audit
from dbops.agent import fingerprint as fpmod
from dbops.agent_client import Agent, AgentDied, AgentError
from dbops.config import Settings
from dbops.confirm import confirm as ask_first
from dbops.errors import OpsError
from dbops.lifecycle import Operation
from dbops.ops.output import Out, print_note
from dbops.ops.settle import settle
from dbops.ops.stamp import cut_short
from dbops.ops.status import label
from dbops.seam import target_for

CACHE_FORMAT = 1


# --- the cache -------------------------------------------------------------------
def cache_dir(settings: Settings) -> Path:
    return settings.get("DBOPS_CACHE_DIR") / "recover"


def cache_key(insp: dict) -> str:
    material = {
        "cache": CACHE_FORMAT,
        "fingerprint": fpmod.FORMAT,
        "server_major": insp["server_major"],
        "env": insp.get("env_sha256"),
        "chain": [[r["revision"], r["down_revisions"], r["sha256"]] for r in insp["chain"]],
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def cache_load(path: Path) -> list[dict] | None:
    try:
        data = json.loads(path.read_text())
        steps = data["steps"]
        if all(fpmod.digest(s["fingerprint"]) == s["hash"] for s in steps):
            return steps
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None  # missing, torn or tampered with: rebuild


def cache_store(path: Path, insp: dict, steps: list[dict], warn: Out = print_note) -> None:
    from dbops import safefile

    try:
        safefile.folder(path.parent)  # 0700, owned by this user, not group/world-writable
        safefile.write_atomic(  # a private 0600 temporary file, renamed into place
            path,
            json.dumps(
                {
                    "key": path.stem,
                    "server_major": insp["server_major"],
                    "revisions": [r["revision"] for r in insp["chain"]],
                    "created_at": audit.utcnow(),
                    "steps": steps,
                }
            ),
        )
    except safefile.FolderError as exc:
        warn(f"note: could not write the recover cache {path}: {exc.message}; {exc.next_command}")
    except OSError as exc:  # a read-only checkout: works, just not cached
        warn(f"note: could not write the recover cache {path}: {exc.strerror}")


def expected_steps(
    settings: Settings, agent: Agent, insp: dict, *, use_cache: bool = True, warn: Out = print_note
) -> tuple[list[dict], dict]:
    """The expected fingerprint after each revision (step 0 = base), from cache or built."""
    path = cache_dir(settings) / f"{cache_key(insp)}.json"
    steps = cache_load(path) if use_cache else None
    if steps is not None:
        return scoped_steps(settings, steps), {
            "source": "cache",
            "cache_file": str(path),
            "seconds": 0.0,
        }
    try:
        built = agent.call("recover.expected")
    except AgentError as exc:
        if exc.kind in ("wrong_database", "live_changed"):
            raise  # the guard's refusal: its own state and next command
        if exc.kind == "scratch":
            from dbops.ops.doctor_facts import _ident, psql_command

            raise OpsError(
                exc.message,
                state="unchanged",
                next_command=psql_command(
                    f"ALTER ROLE {_ident(settings.user)} CREATEDB",
                    env="POSTGRES_USER=<superuser>",
                )
                + "   # as a superuser: recover needs a scratch database",
            ) from None
        raise OpsError(
            exc.message,
            state="unchanged (only a scratch database was used, and dropped)",
            next_command="fix the revision named above, or run: invoke check",
        ) from None
    cache_store(path, insp, built["steps"], warn)
    return scoped_steps(settings, built["steps"]), {
        "source": "built",
        "cache_file": str(path),
        "seconds": built["seconds"],
    }


# --- which schemas count ----------------------------------------------------------
def schemas(settings: Settings) -> list[str] | None:
    """DBOPS_RECOVER_SCHEMAS=public,app: only these schemas are compared (others on the live
    database, e.g. made by an extension or a DBA, are not drift). Default: every user schema."""
    return list(settings.get("DBOPS_RECOVER_SCHEMAS")) or None


def scoped_steps(settings: Settings, steps: list[dict]) -> list[dict]:
    keep = schemas(settings)
    if not keep:
        return steps
    out = []
    for s in steps:
        fp = fpmod.restrict(s["fingerprint"], keep)
        out.append({**s, "fingerprint": fp, "hash": fpmod.digest(fp)})
    return out


def scoped_inspect(settings: Settings, insp: dict) -> dict:
    keep = schemas(settings)
    if keep:
        fp = fpmod.restrict(insp["live"]["fingerprint"], keep)
        insp["live"] = {"fingerprint": fp, "hash": fpmod.digest(fp), "summary": fpmod.summary(fp)}
    return insp


# --- comparing -------------------------------------------------------------------
def ancestry(chain: list[dict], heads: list[str] | tuple[str, ...]) -> set[str]:
    """The revisions at or below ``heads`` (what is applied when the version rows say so)."""
    parents = {r["revision"]: r["down_revisions"] for r in chain}
    seen: set[str] = set()
    todo = [h for h in heads if h in parents]
    while todo:
        rev = todo.pop()
        if rev not in seen:
            seen.add(rev)
            todo += [p for p in parents.get(rev, []) if p in parents]
    return seen


def redundant(chain: list[dict], current: list[str]) -> set[str]:
    """Version rows that lie below another row (alembic keeps only heads: such a row is extra,
    left by a manual INSERT or a stamp without --purge)."""
    return {c for c in current if any(c in ancestry(chain, [o]) for o in current if o != c)}


def half_applied(steps: list[dict], idx: int, live_fp: dict) -> str | None:
    """The next revision, when the live schema lies strictly between step idx and idx+1
    (every difference from step idx is one that revision makes; INVALID indexes count)."""
    if idx + 1 >= len(steps):
        return None
    norm = {**live_fp, "indexes": {k: {**v, "valid": True} for k, v in live_fp["indexes"].items()}}
    cur, nxt, live = (
        fpmod.items(steps[idx]["fingerprint"]),
        fpmod.items(steps[idx + 1]["fingerprint"]),
        fpmod.items(norm),
    )
    if live == nxt or live == cur:
        return None
    live_new = {(k, v) for k, v in live.items() if cur.get(k) != v}
    live_gone = {(k, v) for k, v in cur.items() if live.get(k) != v}
    step_new = {(k, v) for k, v in nxt.items() if cur.get(k) != v}
    step_gone = {(k, v) for k, v in cur.items() if nxt.get(k) != v}
    if live_new <= step_new and live_gone <= step_gone:
        return steps[idx + 1]["revision"]
    return None


def analyse(insp: dict, steps: list[dict]) -> dict:
    """Match the live fingerprint against every step; describe what alembic_version says."""
    chain = insp["chain"]
    messages = {r["revision"]: r["message"] for r in chain}
    current = sorted(insp["current"])
    matches = [i for i, s in enumerate(steps) if s["hash"] == insp["live"]["hash"]]
    targets: list[tuple[str, ...]] = []
    for i in matches:
        t = tuple(sorted(steps[i]["heads"]))
        if t not in targets:
            targets.append(t)
    report = base_report(insp, steps, matches, current, messages)
    live_fp = insp["live"]["fingerprint"]
    anchor = anchored(report, steps, matches, targets, current, live_fp, messages)
    state, found = version_state(insp, anchor, current, bool(matches) and tuple(current) in targets)
    report.update(found)
    report["half_applied"] = None if matches else half_applied_near(steps, anchor, live_fp)
    report["version_state"] = state
    at_schema = ancestry(chain, anchor)
    report["pending_after"] = [r["revision"] for r in chain if r["revision"] not in at_schema]
    return report


def base_report(
    insp: dict, steps: list[dict], matches: list[int], current: list[str], messages: dict
) -> dict:
    """The report's facts (what anchored() and version_state() fill in comes after)."""
    return {
        "database": insp["database"],
        "server_version": insp["server_version"],
        "live": {"hash": insp["live"]["hash"], "summary": insp["live"]["summary"]},
        "version_table": insp["version_table"],
        "current": current,
        "unknown_current": [c for c in current if c not in messages],
        "heads": insp["heads"],
        "revisions": len(insp["chain"]),
        "matches": [
            {
                "revision": steps[i]["revision"] or "base",
                "heads": steps[i]["heads"],
                "message": messages.get(steps[i]["revision"], "empty schema (base)"),
            }
            for i in matches
        ],
        "stamp_to": None,
        "ambiguous": False,
        "closest": None,
        "differences": [],
    }


def anchored(
    report: dict,
    steps: list[dict],
    matches: list[int],
    targets: list[tuple[str, ...]],
    current: list[str],
    live_fp: dict,
    messages: dict,
) -> list[str]:
    """The heads the schema is at (an exact match, else the closest step); sets stamp_to,
    ambiguous, closest and differences in ``report``."""
    if matches:
        if tuple(current) in targets:
            return current
        if len(targets) == 1:
            report["stamp_to"] = list(targets[0]) or ["base"]
            return steps[matches[-1]]["heads"]
        report["ambiguous"] = True
        return steps[matches[0]]["heads"]
    scored = sorted(
        (len(fpmod.diff(s["fingerprint"], live_fp)), -i, i) for i, s in enumerate(steps)
    )
    best = steps[scored[0][2]]
    report["closest"] = {
        "revision": best["revision"] or "base",
        "heads": best["heads"],
        "message": messages.get(best["revision"], "empty schema (base)"),
    }
    report["differences"] = fpmod.diff(best["fingerprint"], live_fp)
    return best["heads"]


def version_state(
    insp: dict, anchor: list[str], current: list[str], matching: bool
) -> tuple[str, dict]:
    """What alembic_version says against the schema's revision ``anchor``, and the revisions
    that tell it (unrecorded, unapplied, extra_rows)."""
    chain = insp["chain"]
    ordered = [r["revision"] for r in chain]
    at_schema, at_record = ancestry(chain, anchor), ancestry(chain, current)
    if matching:
        return "matching", {}
    if not insp["version_table"]:
        return "table missing", {}
    if not current:
        return "no version row", {}
    if any(c not in ordered for c in current):
        return "unknown id", {}
    if at_record < at_schema:
        return "behind", {"unrecorded": [r for r in ordered if r in at_schema - at_record]}
    if at_record > at_schema:
        return "ahead", {"unapplied": [r for r in ordered if r in at_record - at_schema]}
    extra = redundant(chain, current)
    if len(current) > 1 and len(set(current) - extra) < len(current):
        return "extra rows", {"extra_rows": sorted(extra)}
    if at_record == at_schema:
        return "at the closest revision", {}
    return "diverged", {}


def half_applied_near(steps: list[dict], anchor: list[str], live_fp: dict) -> dict | None:
    """The revision half-applied after the closest step (or the one before it), if any."""
    idx = next((i for i, s in enumerate(steps) if sorted(s["heads"]) == sorted(anchor)), None)
    for i in [idx, idx - 1] if idx is not None else []:
        if i >= 0 and half_applied(steps, i, live_fp):
            return {"after": steps[i]["revision"] or "base", "revision": steps[i + 1]["revision"]}
    return None


STAMP_WHY = {
    "table missing": "there is no alembic_version table (a database created without "
    "alembic, or the table was dropped)",
    "no version row": "alembic_version is empty",
    "unknown id": "alembic_version names {unknown}, which the script directory does not have "
    "(deployed from a branch that was reverted?)",
    "behind": "alembic_version says {cur}, behind the schema: {unrecorded} applied but not "
    "recorded (DDL applied by hand?)",
    "ahead": "alembic_version says {cur}, ahead of the schema: {unapplied} recorded but not "
    "applied (a failed upgrade that was stamped?)",
    "extra rows": "alembic_version holds {rows} rows ({cur}): {extra} lies below another row "
    "(an extra row: a manual INSERT, or a stamp without --purge)",
    "diverged": "alembic_version says {cur}, which is not where the schema is",
}


def why_stamp(report: dict) -> str:
    """Why alembic_version disagrees with the exactly matching schema."""
    state, cur = report["version_state"], label(report["current"])
    return STAMP_WHY.get(state, "alembic_version says {cur} ({state})").format(
        cur=cur,
        state=state,
        unknown=", ".join(report["unknown_current"]),
        unrecorded=", ".join(report.get("unrecorded", [])),
        unapplied=", ".join(report.get("unapplied", [])),
        rows=len(report["current"]),
        extra=", ".join(report.get("extra_rows", [])),
    )


def verdict(report: dict) -> tuple[str, str]:
    """(what it means, the next command)."""
    if not report["matches"]:
        return no_match_verdict(report)
    state, cur = report["version_state"], label(report["current"])
    if state == "matching":
        after = "invoke migrate" if report["pending_after"] else "invoke current"
        return (f"alembic_version ({cur}) agrees with the schema: nothing to recover.", after)
    if report["ambiguous"]:
        names = " = ".join(x["revision"] for x in report["matches"])
        return (
            f"the schema is exactly what several revisions give ({names}: they change no "
            f"schema); alembic_version: {state} ({cur}). Choose which one the data is at.",
            f"invoke recover --apply --to <one of {names}>",
        )
    to = label(report["stamp_to"])
    return (
        f"{why_stamp(report)}; the schema is exactly {to}. Stamping {to} fixes the record "
        f"(no schema change).",
        "invoke recover --apply",
    )


def no_match_verdict(report: dict) -> tuple[str, str]:
    """No revision gives this schema: half-applied, or drift. Never stamp."""
    state, cur = report["version_state"], label(report["current"])
    if report.get("half_applied"):
        a, h = report["half_applied"]["after"], report["half_applied"]["revision"]
        return (
            f"the schema matches NO revision: it lies between {a} and {h}, so {h} is "
            f"half-applied (a non-transactional step ran, the rest did not). Do not stamp: "
            f"drop what {h} left behind so the schema is {a} again (invoke recover shows it "
            f"as matching {a}), then re-run invoke migrate. alembic_version: {state} ({cur}).",
            "invoke backup   (take one before repairing anything by hand)",
        )
    c = report["closest"]
    return (
        f"the schema matches NO revision (drift). Closest: {c['revision']} ({c['message']}) "
        f"with {len(report['differences'])} difference(s). Do not stamp: reconcile the "
        f"differences first (restore a backup, or apply/revert the DDL by hand), then run "
        f"invoke recover again. alembic_version: {state} ({cur}).",
        "invoke backup   (take one before repairing anything by hand)",
    )


def script_error(exc: AgentError) -> OpsError:
    """A revision file that does not load: what and where, and that the database is untouched."""
    d = exc.agent_details or {}
    path = d.get("file")
    fix = "resolve the merge-conflict markers" if d.get("conflict_markers") else "fix it"
    return OpsError(
        exc.message,
        state="unchanged (the history could not be read; nothing was compared or stamped)",
        next_command=(
            f'"${{EDITOR:-vi}}" {shlex.quote(path)}   # {fix}; then: invoke recover'
            if path
            else "invoke check   # after fixing the script directory"
        ),
    )


# --- the operation ---------------------------------------------------------------
def recover(
    settings: Settings,
    *,
    apply: bool = False,
    yes: bool = False,
    to: str | None = None,
    use_cache: bool = True,
    confirm: Callable[[str], bool] | None = None,
    on_report: Callable[[dict], None] | None = None,
    warn: Out = print_note,
) -> dict:
    started = time.monotonic()
    with Agent(settings) as agent:
        try:
            insp = scoped_inspect(settings, agent.call("recover.inspect"))
        except AgentError as exc:
            if exc.kind == "connect":
                raise OpsError(
                    exc.message,
                    details=exc.details,
                    state=exc.state,
                    next_command=exc.next_command or "invoke doctor",
                ) from None
            if exc.kind == "script":
                raise script_error(exc) from None
            raise
        steps, source = expected_steps(settings, agent, insp, use_cache=use_cache, warn=warn)
        report = analyse(insp, steps)
        report["target"] = target_for(settings).describe()
        report["expected"] = source
        report["verdict"], report["next"] = verdict(report)
        report["applied"] = None
        if on_report:
            on_report(report)
        if apply:
            report["applied"] = _apply(
                settings, agent, insp, report, yes=yes, to=to, confirm=confirm, warn=warn
            )
            report["next"] = (
                "invoke migrate" if report["applied"]["pending_after"] else "invoke current"
            )
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


def _choose(report: dict, to: str | None) -> list[str]:
    if not report["matches"]:
        raise OpsError(
            "refusing to stamp: no revision matches the live schema exactly",
            details=report["differences"][:20],
            state="unchanged (nothing was stamped)",
            next_command="invoke backup   # then reconcile the differences by hand",
        )
    if to is None:
        if report["ambiguous"]:
            names = ", ".join(m["revision"] for m in report["matches"])
            raise OpsError(
                f"refusing to stamp: several revisions give this exact schema ({names});"
                f" say which one with --to",
                state="unchanged (nothing was stamped)",
                next_command=f"invoke recover --apply --to {report['matches'][0]['revision']}"
                f"   # or another of: {names}",
            )
        return report["stamp_to"]
    chosen = [m for m in report["matches"] if m["revision"] == to] or [
        m for m in report["matches"] if m["revision"].startswith(to)
    ]
    if len(chosen) != 1:
        raise OpsError(
            f"refusing to stamp: --to {to} is not one of the exactly matching revisions "
            f"({', '.join(m['revision'] for m in report['matches'])})",
            state="unchanged (nothing was stamped)",
        )
    return chosen[0]["heads"] or ["base"]


def hashes_up_to(chain: list[dict], targets: list[str]) -> dict[str, str]:
    """{revision: sha256} of every revision at or below the stamp target(s)."""
    pos = [i for i, r in enumerate(chain) if r["revision"] in targets]
    return {r["revision"]: r["sha256"] for r in chain[: max(pos) + 1]} if pos else {}


def _apply(
    settings: Settings,
    agent: Agent,
    insp: dict,
    report: dict,
    *,
    yes: bool,
    to: str | None,
    confirm: Callable[[str], bool] | None,
    warn: Out = print_note,
) -> dict:
    targets = _choose(report, to)
    if report["version_state"] == "matching" and to is None:
        return {"stamped": False, "to": report["current"], "pending_after": report["pending_after"]}
    question = (
        f"Stamp database {settings.database} to {label(targets)} (alembic_version now: "
        f"{label(report['current']) if report['version_table'] else 'no table'})? "
        f"This changes no schema."
    )
    ask_first(
        settings,
        question,
        yes=yes,
        ask=confirm,
        state="unchanged (nothing was stamped)",
        next_command="invoke recover --apply --yes" + (f" --to={to}" if to else ""),
    )
    _lock(agent)
    settle(settings, agent, warn, "recover")  # a run that died applying: its outcome
    record = {
        "from": report["current"],
        "to": targets,
        "previous_version_rows": report["current"],
        "version_table_existed": report["version_table"],
        "state": report["version_state"],
        "schema_hash": insp["live"]["hash"],
        "revision_hashes": hashes_up_to(insp["chain"], targets),
    }
    with Operation(settings, "recover", warn=warn, **record) as op:
        res = _stamp(settings, agent, op, insp, targets)
    return {
        "stamped": True,
        "to": res["after"],
        "before": res["before"],
        "pending_after": report["pending_after"],
    }


def _lock(agent: Agent) -> None:
    try:
        agent.call("lock.acquire", purpose="recover")
    except AgentError as exc:
        if exc.kind != "locked":  # busy only when the lock query said so
            raise
        raise OpsError(
            exc.message,
            state="unchanged (nothing was stamped)",
            next_command="invoke recover --apply   # once the holder above has finished",
        ) from None


def _stamp(settings: Settings, agent: Agent, op: Operation, insp: dict, targets: list[str]) -> dict:
    """Record the intent, then have the agent stamp, committing on our word (the handshake
    migrate and stamp have)."""
    rows = [t for t in targets if t != "base"]
    op.intent(
        "applying",
        unchanged="alembic_version was not changed",
        stamp_to=rows,
        **{"from": op.record["from"]},
    )
    try:
        return agent.call(
            "recover.stamp",
            revisions=rows,
            expect_current=insp["current"],
            expect_hash=insp["live"]["hash"],
            lock_timeout=settings.lock_timeout,
            handshake=True,
            on_ready=lambda what: what.get("stamp_to") == rows,
        )
    except AgentError as exc:  # "state" stays the analysis' version state
        op.finish("failed", error=exc.message, error_kind=exc.kind)
        raise OpsError(
            exc.message,
            state=f"alembic_version: {label(exc.agent_details.get('before'))}",
            next_command="invoke recover",
        ) from exc
    except AgentDied as exc:  # its transaction rolled back with its connection
        message, nxt = f"recover stopped: {exc.message}", "invoke recover"
        raise cut_short(agent, op, op.record["from"], message, next_command=nxt) from exc
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the agent was stopped first
        message, nxt = "recover interrupted", "invoke recover"
        raise cut_short(agent, op, op.record["from"], message, "interrupted", nxt) from exc


# --- printing --------------------------------------------------------------------
def format_report(r: dict) -> str:
    src = r["expected"]
    how = (
        f"from cache ({src['cache_file']})"
        if src["source"] == "cache"
        else f"built on a scratch database in {src['seconds']:.1f} s, cached"
    )
    lines = [
        f"database {r['database']} on {r['target']} (PostgreSQL {r['server_version']})",
        f"history:   {r['revisions']} revisions, head {label(r['heads'])}",
        f"expected:  {how}",
        f"live:      {r['live']['summary']} (fingerprint {r['live']['hash'][:12]})",
    ]
    if not r["version_table"]:
        av = "no alembic_version table"
    elif not r["current"]:
        av = "alembic_version is empty"
    else:
        av = ", ".join(
            c + (" (UNKNOWN to the script directory)" if c in r["unknown_current"] else "")
            for c in r["current"]
        )
    lines.append(f"alembic_version: {av}  [{r['version_state']}]")
    if r["matches"]:
        for m in r["matches"]:
            lines.append(f"MATCH:     {m['revision']}  {m['message']}  (exact)")
    else:
        c = r["closest"]
        lines.append(
            f"NO MATCH:  closest is {c['revision']}  {c['message']}; the live database "
            f"differs from it:"
        )
        lines += [f"  - {d}" for d in r["differences"][:40]]
        if len(r["differences"]) > 40:
            lines.append(f"  … and {len(r['differences']) - 40} more (--json for all)")
    lines.append(f"verdict:   {r['verdict']}")
    return "\n".join(lines)
