"""invoke rehearse: run the pending revisions on a restored copy of this database, measured.

1. the data: the newest verified FULL backup at the live revision (--from=latest), a new one
   (--from=fresh, the backup op under the lock), or a named file; a partial backup or one at
   another revision is refused, naming the one to use;
2. room: the copy needs about the database's size on the server; refused up front when the
   server's free space (df of its data directory, read next to the server) is short;
3. a scratch copy (dbops_scratch_rehearse_<db>…) restored through restore's machinery
   (pg_restore next to the server, fed the archive on stdin; restore.check against the
   manifest), the revisions run there one at a time as migrate runs them, instrumented
   (dbops/agent/rehearse.py), the copy dropped unless --keep;
4. the verdicts (dbops/ops/rehearse_verdict.py), stored as JSON under DBOPS_CACHE_DIR/
   rehearsals/<db>/, keyed by the revision files' sha256, the data source's sha256 (which
   fixes the schema and the data) and the copy's schema fingerprint.
The live database is only read (preflight, facts) and, with --from=fresh, backed up.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from dbops import catalog, process, seam
from dbops.agent.pglocks import MODES
from dbops.agent_client import Agent
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.lifecycle import Operation
from dbops.ops.backup import fmt_bytes
from dbops.ops.backup import take_backup as backup_now
from dbops.ops.output import Out, print_line, print_note
from dbops.ops.rehearse_verdict import fmt_s, judge, over
from dbops.ops.restore import (
    check_pg_restore,
    check_restored,
    checked_manifest,
    pg_restore_stream,
    resolve,
    restore_jobs,
)
from dbops.ops.status import label
from dbops.ops.steps import acquire_lock, planned

ROOM_FACTOR = 1.2  # the copy is about the database's size; its rewrites need more on top


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?", duration.strip())
    if not m:
        raise OpsError(f"{duration!r} is not a duration")
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1, None: 1e-3, "min": 60, "h": 3600, "d": 86400}[
        m.group(2)
    ]
    return float(m.group(1)) * unit


def limits(settings: Settings) -> dict:
    return {
        "reads_s": seconds(settings.get("DBOPS_MAX_BLOCK_READS")),
        "writes_s": seconds(settings.get("DBOPS_MAX_BLOCK_WRITES")),
        "rewrite_mb": float(settings.get("DBOPS_MAX_REWRITE_MB")),
    }


# --- the data source ---------------------------------------------------------------------
def pick_source(
    settings: Settings, agent: Agent, source: str, current: list[str], out: Out
) -> tuple[Path, dict]:
    """The backup to rehearse on (``source``: fresh, auto, latest or a file) and its
    manifest, refused when it is not a full backup of this database at ``current``."""
    if source == "fresh":
        with Agent(settings) as backup_agent:  # its own agent: the lock ends with the backup
            acquire_lock(backup_agent, "rehearse (fresh backup)", current, "rehearse")
            res = backup_now(settings, backup_agent, "pre-rehearse")
        out(f"backup: {res['path']}")
        return Path(res["path"]), res["manifest"]
    if source == "auto":  # DBOPS_REHEARSE=always: a backup at the live revision, else a new one
        here = [
            e for e in full_backups(settings) if sorted(e["revisions"] or []) == sorted(current)
        ]
        return pick_source(settings, agent, here[0]["path"] if here else "fresh", current, out)
    path = resolve(settings, source) if source != "latest" else newest_full(settings, current)
    return path, source_manifest(settings, path, current)


def full_backups(settings: Settings) -> list[dict]:
    """This database's verified full (not touched) backups, newest first."""
    return [
        e
        for e in catalog.list_backups(settings, database=settings.database, include_invalid=False)
        if not e["partial"]
    ]


def newest_full(settings: Settings, current: list[str]) -> Path:
    """--from=latest: the newest verified full backup, which must be at ``current``."""
    fulls = full_backups(settings)
    if not fulls:
        raise OpsError(
            f"no verified full backup of {settings.database} to rehearse on",
            state="unchanged",
            next_command="invoke rehearse --from=fresh",
        )
    newest = fulls[0]
    if sorted(newest["revisions"] or []) != sorted(current):
        here = next((e for e in fulls if sorted(e["revisions"] or []) == sorted(current)), None)
        raise OpsError(
            f"the newest verified full backup ({Path(newest['path']).name}) is at "
            f"{label(newest['revisions'] or [])}, the database at {label(current)}: the "
            f"revisions would not run from the same place",
            state="unchanged",
            next_command=(
                f"invoke rehearse --from={here['path']}" if here else "invoke rehearse --from=fresh"
            ),
        )
    return Path(newest["path"])


def source_manifest(settings: Settings, path: Path, current: list[str]) -> dict:
    """The checked manifest of ``path``: of this database, full, at ``current``."""
    database = settings.database
    manifest = checked_manifest(path)
    if manifest.get("database") != database:
        raise OpsError(
            f"{path.name} is a backup of {manifest.get('database')}, not {database}",
            state="unchanged",
            next_command="invoke rehearse --from=latest",
        )
    if manifest.get("partial"):
        raise OpsError(
            f"{path.name} is a partial (touched) backup: it holds only some tables' rows, "
            f"so a rehearsal on it would measure the wrong sizes, rewrites and blocking "
            f"times; rehearse on a full backup",
            state="unchanged",
            next_command="invoke rehearse --from=fresh",
        )
    if sorted(manifest.get("revisions") or []) != sorted(current):
        raise OpsError(
            f"{path.name} is at {label(manifest.get('revisions') or [])}, the database at "
            f"{label(current)}",
            state="unchanged",
            next_command="invoke rehearse --from=fresh",
        )
    return manifest


def free_space(settings: Settings, target: seam.Target) -> tuple[int | None, str]:
    """Free bytes where the server keeps its data, or None and why it cannot be told."""
    if (
        settings.target == "local"
        and settings.host not in ("127.0.0.1", "localhost", "::1", "")
        and not settings.host.startswith("/")
    ):
        return None, f"the server ({settings.host}) is not on this machine"
    proc = seam.run(target.pg(process.sh_argv("data-dir-df", "dbops-df")), timeout=60)
    fields = (proc.stdout or b"").decode(errors="replace").split()
    if proc.returncode != 0 or len(fields) < 4 or not fields[3].isdigit():
        why = seam.mask(
            (proc.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
            and (proc.stderr or b"").decode(errors="replace").strip().splitlines()[-1]
            or f"status {proc.returncode}",
            settings.secrets(),
        )
        return (
            None,
            f"df of the data directory failed ({why}; SHOW data_directory needs a superuser)",
        )
    return int(fields[3]) * 1024, "df of the data directory"


def check_room(settings: Settings, target: seam.Target, database_size: int, out: Out) -> dict:
    need = int(database_size * ROOM_FACTOR)
    free, how = free_space(settings, target)
    if free is None:
        out(f"room: not measured: {how}; the copy needs about {fmt_bytes(need)}")
        return {"free": None, "need": need, "how": how}
    if free < need:
        raise OpsError(
            f"not enough room on the server for the copy: {fmt_bytes(free)} free ({how}), "
            f"the copy of {settings.database} needs about {fmt_bytes(need)} "
            f"({fmt_bytes(database_size)} x {ROOM_FACTOR})",
            state="unchanged (nothing was created)",
            next_command="free space on the database server, then: invoke rehearse",
        )
    out(f"room: {fmt_bytes(free)} free, the copy needs about {fmt_bytes(need)}")
    return {"free": free, "need": need, "how": how}


# --- the store ---------------------------------------------------------------------------
def store_dir(settings: Settings) -> Path:
    return Path(settings.get("DBOPS_CACHE_DIR")) / "rehearsals" / catalog.slug(settings.database)


def key_of(hashes: dict[str, str], source_sha: str, fingerprint: str) -> str:
    text = json.dumps(
        {"revisions": sorted(hashes.items()), "source": source_sha, "fp": fingerprint},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def save(settings: Settings, report: dict) -> Path:
    folder = catalog.ensure_dir(store_dir(settings))
    path = folder / f"{report['key']}.json"
    from dbops import safefile

    safefile.write_atomic(path, json.dumps(report, indent=1, default=str))
    return path


def matching(settings: Settings, current: list[str], pending: list[dict]) -> dict | None:
    """The newest stored rehearsal that started at ``current`` and ran every pending revision
    with the same file hashes."""
    want = {p["revision"]: p["sha256"] for p in pending}
    best = None
    folder = store_dir(settings)
    for path in folder.glob("*.json") if folder.is_dir() else []:
        try:
            rep = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if sorted(rep.get("from") or []) != sorted(current):
            continue
        if any(rep.get("revision_hashes", {}).get(r) != h for r, h in want.items()):
            continue
        if best is None or rep["finished_at"] > best["finished_at"]:
            best = rep
    return best


# --- the rehearsal -----------------------------------------------------------------------
def rehearse(
    settings: Settings,
    to: str = "head",
    *,
    source: str = "latest",
    keep: bool = False,
    out: Out = print_line,
) -> dict:
    t0 = time.monotonic()
    with Agent(settings) as agent:
        pre = planned(agent, "migrate.preflight", "rehearse", to=to)
        current, pending, target = pre["current"], pre["pending"], pre["target"]
        out(
            f"database {pre['database']}: at {label(current)}; target {target}; "
            f"{len(pending)} pending"
        )
        if not pending:
            return nothing_pending(settings, current, target)
        path, manifest = pick_source(settings, agent, source, current, out)
        out(f"data: {path.name} ({fmt_bytes(manifest['size'])}, taken {manifest['started_at']})")
        facts = agent.call("restore.facts")
        check_pg_restore(settings, agent.target, path, manifest, facts)
        room = check_room(settings, agent.target, int(facts.get("database_size") or 0), out)
        run = on_a_copy(settings, agent, path, manifest, pending, keep=keep, out=out)
    revisions = [judge(r) for r in run["revisions"]]
    hashes = {p["revision"]: p["sha256"] for p in pending}
    report = {
        "database": settings.database,
        "from": current,
        "target": target,
        "revision_hashes": hashes,
        "source": {
            "file": str(path),
            "sha256": manifest.get("sha256"),
            "taken": manifest.get("started_at"),
        },
        "fingerprint_before": run["fingerprint_before"],
        "fingerprint_after": run["fingerprint_after"],
        "revisions": revisions,
        "room": room,
        "predicted_seconds": round(sum(r["seconds"] for r in revisions), 3),
        "restore_seconds": round(run["restore_s"], 3),
        "flagged": any(r["flagged"] for r in revisions),
        "complete": len(revisions) == len(pending) and not any(r["error"] for r in revisions),
        "kept": run["name"] if keep else None,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 3),
    }
    report["key"] = key_of(hashes, report["source"]["sha256"] or "", run["fingerprint_before"])
    report["stored"] = str(save(settings, report))
    return report


def nothing_pending(settings: Settings, current: list[str], target: str) -> dict:
    return {
        "database": settings.database,
        "from": current,
        "target": target,
        "revisions": [],
        "predicted_seconds": 0.0,
        "flagged": False,
        "stored": None,
    }


def on_a_copy(
    settings: Settings,
    agent: Agent,
    path: Path,
    manifest: dict,
    pending: list[dict],
    *,
    keep: bool,
    out: Out,
) -> dict:
    """Restore ``path`` into a scratch copy and run the pending revisions there, measured
    (the agent's rehearse.run answer, with the copy's ``name`` and ``restore_s``); the copy
    is dropped unless ``keep`` and the run completed."""
    made = agent.call("rehearse.scratch")
    name = made["name"]
    for old in made["swept"]:
        out(f"swept a killed rehearsal's copy: {old}")
    kept = False
    try:
        restore_s = restore_copy(settings, agent, path, manifest, name)
        out(
            f"restored into {name} in {restore_s:.1f} s; running {len(pending)} revision(s) "
            f"(lock_timeout {settings.lock_timeout}, statement_timeout "
            f"{settings.statement_timeout})"
        )
        run = agent.call(
            "rehearse.run",
            name=name,
            revisions=[p["revision"] for p in pending],
            lock_timeout=settings.lock_timeout,
            statement_timeout=settings.statement_timeout,
        )
        kept = keep
    finally:
        if not kept:
            drop_copy(agent, name, out)
    return {**run, "name": name, "restore_s": restore_s}


def restore_copy(settings: Settings, agent: Agent, path: Path, manifest: dict, name: str) -> float:
    """pg_restore ``path`` into the copy ``name`` and check it against the manifest; the
    seconds it took."""
    t_restore = time.monotonic()
    rc, lines = pg_restore_stream(
        settings,
        agent.target,
        path,
        manifest,
        mode="restore",
        dbname=name,
        jobs=restore_jobs(settings, None),
    )
    if rc != 0:
        raise OpsError(
            f"restoring {path.name} into the copy {name} failed (status {rc})",
            details=lines[-8:],
            state="unchanged (only the copy was written)",
            next_command=f"invoke verify-backup {path} --restore-test",
        )
    check_restored(agent, name, manifest, state="unchanged (only the copy was written)")
    return time.monotonic() - t_restore


def drop_copy(agent: Agent, name: str, out: Out) -> None:
    try:
        agent.call("rehearse.drop", name=name)
    except OpsError as exc:
        out(
            f"warning: could not drop the copy {name}: {exc.message} (the next rehearsal sweeps it)"
        )


def format_report(report: dict, lim: dict | None = None) -> list[str]:
    lines = []
    for r in report["revisions"]:
        lines.append(f"{r['revision']}  {r['seconds']:.2f} s  {r['verdict']}")
        for st in r["statements"]:
            if (
                st["sql"]
                .lower()
                .startswith(
                    (
                        "update alembic_version",
                        "insert into alembic_version",
                        "select",
                        "begin",
                        "commit",
                        "set ",
                    )
                )
            ):
                continue
            strongest: dict[str, dict] = {}  # per relation the strongest mode this statement took
            for lk in r["locks"]:
                if lk["statement"] == st["index"] and (
                    lk["relation"] not in strongest
                    or MODES.index(lk["mode"]) > MODES.index(strongest[lk["relation"]]["mode"])
                ):
                    strongest[lk["relation"]] = lk
            locks = ", ".join(
                f"{rel} {lk['mode'].replace('Lock', '')} held {fmt_s(lk['held_s'])}"
                + (" (new table)" if lk["new_table"] else "")
                for rel, lk in sorted(strongest.items())
            )
            lines.append(f"    {st['seconds'] or 0:.3f} s  {st['sql'][:90]}")
            if locks:
                lines.append(f"        locks: {locks}")
            if st["rewrites"]:
                lines.append(f"        rewrites: {', '.join(st['rewrites'])}")
        for q, p in sorted(r["probe"].items()):
            lines.append(
                f"    probe {q}: readers blocked {fmt_s(p['read_blocked_s'])}, "
                f"writers blocked {fmt_s(p['write_blocked_s'])}"
            )
        for rw in r["rewrites"]:
            lines.append(
                f"    rewrite {rw['relation']}: {fmt_bytes(rw['bytes'])}, ~{rw['rows']} rows"
            )
        for p in r["patterns"]:
            lines.append(f"    ! {p['what']}")
            lines.append(f"      safer: {p['safer']}")
        if lim:
            for o in over(r, lim):
                lines.append(f"    over the limit: {o}")
    lines.append(
        f"predicted duration: {report['predicted_seconds']:.1f} s for "
        f"{len(report['revisions'])} revision(s) (on {report['source']['taken']}'s data)"
    )
    return lines


# --- the gate (migrate's preflight) ------------------------------------------------------
def gate(
    settings: Settings,
    current: list[str],
    pending: list[dict],
    out: Out,
    accept_risk: str | None = None,
) -> dict | None:
    """Show the newest matching rehearsal; in production refuse a verdict over the limits
    unless ``accept_risk`` (audited). DBOPS_REHEARSE=always rehearses first."""
    if settings.get("DBOPS_REHEARSE") == "always":
        out("rehearsing first (DBOPS_REHEARSE=always):")
        rehearse(
            settings, pending[-1]["revision"], source="auto", out=lambda line: out("  " + line)
        )
    rep = matching(settings, current, pending)
    if rep is None:
        out(
            "rehearsal: no rehearsal of these revisions from this revision "
            "(invoke rehearse shows what they would lock, for how long, on real data)"
        )
        return None
    lim = limits(settings)
    out(
        f"rehearsal {rep['finished_at']} on {Path(rep['source']['file']).name}: predicted "
        f"{rep['predicted_seconds']:.1f} s"
    )
    breaches = []
    for r in rep["revisions"]:
        out(f"  {r['revision']}: {r['verdict']}")
        breaches += [f"{r['revision']} {o}" for o in over(r, lim)]
        if r.get("error"):
            breaches.append(f"{r['revision']} failed in the rehearsal ({r['error']})")
    ran = {r["revision"] for r in rep["revisions"]}
    unrun = [p["revision"] for p in pending if p["revision"] not in ran]
    if unrun:  # the rehearsal stopped before them: nothing is known about what they lock
        out(f"  not rehearsed (the rehearsal stopped before them): {', '.join(unrun)}")
        breaches.append(f"{', '.join(unrun)} not rehearsed")
    if breaches and settings.is_production:
        if not accept_risk:
            raise OpsError(
                "the rehearsal's verdict is over the production limits: " + "; ".join(breaches),
                state=f"unchanged at {label(current)}",
                details=[f"{p['revision']}: {p['verdict']}" for p in rep["revisions"]],
                next_command="invoke rehearse   # shows how to rewrite the revision the "
                'safer way; or knowingly: invoke migrate --accept-risk="why"',
            )
        accepted(settings, accept_risk, rep, breaches)
        out(f"accepted risk ({accept_risk}): {'; '.join(breaches)}")
    elif breaches:
        out("  over the production limits: " + "; ".join(breaches))
    return rep


def accepted(settings: Settings, reason: str, rep: dict, breaches: list[str]) -> None:
    """The "accept-risk" record: who ran over the production limits, why, on which rehearsal."""
    with Operation(settings, "accept-risk", warn=print_note, reason=reason) as op:
        op.finish(
            rehearsal=rep["key"],
            over=breaches,
            revisions=[r["revision"] for r in rep["revisions"]],
        )


def list_leftovers(settings: Settings) -> list[dict]:
    """Copies left by killed rehearsals (doctor's hook): [{"name", "bytes"}]."""
    with Agent(settings) as agent:
        return agent.call("rehearse.leftovers")["leftovers"]
