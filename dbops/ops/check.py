"""invoke check, the CI gate: one head; stairway up/down/up on a scratch database; models
match the migrations; squawk over the offline SQL of every revision. Any failure -> non-zero.

The SQL is rendered by the agent (where alembic runs); squawk runs on the host.

Accepting a known squawk finding (see docs/migrations.md):
- in the revision file, a comment ``# squawk-accept: RULE[, RULE] -- why``;
- or an entry in DBOPS_SQUAWK_ACCEPT (default ``squawk-accept.toml`` in the project):
  ``[[accept]] revision = "23cd436768a8"
  rule = "require-concurrent-index-creation"  reason = "…"``;
- rules turned off everywhere: DBOPS_SQUAWK_EXCLUDE (comma list) or squawk's own config
  (DBOPS_SQUAWK_CONFIG, default ``.squawk.toml`` next to alembic.ini when present).
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

from dbops import seam
from dbops.agent_client import Agent
from dbops.config import Settings
from dbops.errors import OpsError
from dbops.ops.output import Out, print_line
from dbops.ops.status import call_status

MARKER = re.compile(r"#\s*squawk-accept:\s*([\w\-, ]+?)\s*(?:--\s*(.*))?$", re.M)


def squawk_binary(settings: Settings) -> str | None:
    configured = settings.get("DBOPS_SQUAWK")
    if configured:
        return configured
    beside = Path(sys.executable).parent / "squawk"
    return str(beside) if beside.is_file() else shutil.which("squawk")


def accepted(settings: Settings, revisions: list[dict]) -> dict[tuple[str, str], str]:
    """{(revision, rule): reason} from revision-file markers and the accept file."""
    out: dict[tuple[str, str], str] = {}
    for r in revisions:
        for m in MARKER.finditer(r.get("source") or ""):
            for rule in filter(None, (x.strip() for x in m.group(1).split(","))):
                out[(r["revision"], rule)] = (m.group(2) or "marked in the revision file").strip()
    path = settings.get("DBOPS_SQUAWK_ACCEPT")
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise OpsError(f"{path}: not valid TOML ({exc})") from None
        for entry in data.get("accept", []):
            if not entry.get("revision") or not entry.get("rule"):
                raise OpsError(f"{path}: every [[accept]] needs revision and rule: {entry}")
            if not entry.get("reason"):
                raise OpsError(
                    f"{path}: accepting {entry['rule']} on {entry['revision']} needs a reason"
                )
            # a unique prefix of the revision is fine
            for r in revisions:
                if r["revision"].startswith(str(entry["revision"])):
                    out[(r["revision"], entry["rule"])] = entry["reason"]
    return out


def _unrendered(revisions: list[dict]) -> list[str]:
    return [
        f"{r['revision']}: offline SQL could not be rendered: {r['error']} (a revision that "
        f"reads the database has no offline SQL; --no-squawk skips the lint)"
        for r in revisions
        if r.get("error") and not r.get("sql")
    ]


def _squawk_argv(settings: Settings, binary: str, pg_version: str | None) -> list[str]:
    """squawk with JSON output, the excluded rules, its config file (when there) and the
    server's version."""
    exclude = settings.get("DBOPS_SQUAWK_EXCLUDE")
    cfg = settings.get("DBOPS_SQUAWK_CONFIG") or (
        settings.alembic_ini.parent / ".squawk.toml" if settings.alembic_ini else Path("-")
    )
    argv = [binary, "--reporter", "json"]
    if exclude.strip():
        argv += [f"--exclude={exclude}"]
    if cfg.is_file():
        argv += [f"--config={cfg}"]
    if pg_version:
        argv += [f"--pg-version={pg_version}"]
    return argv


def _write_sql(settings: Settings, revisions: list[dict], folder: Path) -> dict[str, dict]:
    """One .sql file per revision with SQL (the session settings dbops runs it with first):
    {file name: {"revision", "lines"}}."""
    header = (
        f"-- dbops runs every migration with these (PGOPTIONS)\n"
        f"SET lock_timeout = '{settings.lock_timeout}';\n"
        f"SET statement_timeout = '{settings.statement_timeout}';\n"
    )
    files = {}
    for i, r in enumerate(revisions):
        if not r["sql"].strip():
            continue
        name = f"{i:03d}_{r['revision']}.sql"
        (folder / name).write_text(header + r["sql"] + "\n")
        files[name] = {"revision": r["revision"], "lines": (header + r["sql"]).splitlines()}
    return files


def _squawk_output(done) -> list[dict] | str:
    """squawk's findings, or what went wrong (a string) when it gave no JSON."""
    stdout, stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    try:
        if not stdout.strip() and done.returncode != 0:
            raise json.JSONDecodeError("no output", "", 0)
        return json.loads(stdout or "[]")
    except json.JSONDecodeError:
        return f"squawk failed (status {done.returncode}): {(stderr or stdout).strip()[:400]}"


def _finding(f: dict, files: dict[str, dict], accept: dict) -> dict:
    fname = Path(f.get("file", "")).name
    rev = files.get(fname, {}).get("revision", "?")
    rule = f.get("rule_name", "?")
    lines = files.get(fname, {}).get("lines", [])
    line = f.get("line")  # squawk counts lines from 0
    stmt = lines[line].strip() if isinstance(line, int) and 0 <= line < len(lines) else ""
    line = line + 1 if isinstance(line, int) else line  # shown from 1, as editors do
    return {
        "revision": rev,
        "rule": rule,
        "line": line,
        "statement": stmt[:120],
        "message": f.get("message", ""),
        "help": f.get("help") or "",
        "level": f.get("level", ""),
        "accepted": accept.get((rev, rule)),
    }


def run_squawk(
    settings: Settings, revisions: list[dict], pg_version: str | None
) -> tuple[list[dict], list[str]]:
    """(findings, problems). Each finding: revision, rule, line, message, accepted (reason|None)."""
    binary = squawk_binary(settings)
    if not binary:
        return [], ["squawk is not installed: pip install squawk-cli (or set DBOPS_SQUAWK)"]
    problems = _unrendered(revisions)
    argv = _squawk_argv(settings, binary, pg_version)
    with tempfile.TemporaryDirectory(prefix="dbops-squawk-") as tmp:
        files = _write_sql(settings, revisions, Path(tmp))
        if not files:
            return [], problems
        launch = seam.host(argv + list(files), cwd=Path(tmp), quiet=settings.get("DBOPS_QUIET"))
        done = seam.run(launch)
    raw = _squawk_output(done)
    if isinstance(raw, str):
        return [], [*problems, raw]
    accept = accepted(settings, revisions)
    return [_finding(f, files, accept) for f in raw], problems


def write_baseline(settings: Settings, findings: list[dict]) -> tuple[Path, int]:
    """Append an [[accept]] entry for every finding not accepted yet to the accept file
    (created when missing): the revisions shipped before dbops check ran on them. Returns
    (the file, how many entries were added)."""
    import datetime

    path = settings.get("DBOPS_SQUAWK_ACCEPT")
    today = datetime.date.today().isoformat()
    pairs = sorted({(f["revision"], f["rule"]) for f in findings if not f["accepted"]})
    if not pairs:
        return path, 0
    text = (
        path.read_text()
        if path.is_file()
        else (
            "# Known squawk findings accepted for `invoke check` (see docs/migrations.md).\n"
            "# Each entry needs a reason; prefer fixing the revision when it has not shipped yet.\n"
        )
    )
    for revision, rule in pairs:
        text += (
            f'\n[[accept]]\nrevision = "{revision}"\nrule = "{rule}"\n'
            f'reason = "baseline {today}: shipped before invoke check linted it"\n'
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path, len(pairs)


def _check_heads(st: dict, out: Out) -> list[str]:
    heads = st["heads"]
    if len(heads) == 1:
        out(f"ok    single head: {heads[0]}")
        return []
    failure = (
        f"{len(heads)} heads: {', '.join(heads)} (alembic merge -m 'merge heads' {' '.join(heads)})"
    )
    out(f"FAIL  {failure}")
    return [failure]


def _report_stairway(stair: dict, out: Out) -> list[str]:
    """Print the stairway's (and the models') verdict; the failures."""
    if stair["failures"]:
        for f in stair["failures"]:
            out(f"FAIL  stairway: {f}")
        for d in stair["diff"]:
            out(f"        {d}")
        return [f"stairway: {f}" for f in stair["failures"]]
    out(
        f"ok    stairway: {stair['revisions']} revisions up, down, up again on a scratch "
        f"database ({stair['steps']} steps), then down to base"
    )
    if stair.get("models_note"):
        out(f"skip  models: {stair['models_note']}")
    else:
        out("ok    models match the migrations at head (autogenerate diff is empty)")
    return []


def _sql_to_lint(agent: Agent, stair: dict, out: Out) -> list[dict]:
    """Every revision's offline SQL; for one with none (it reads the database), what the
    stairway executed."""
    sql = agent.call("check.sql")["revisions"]
    for r in sql:
        executed = (stair.get("executed_sql") or {}).get(r["revision"])
        if r.get("error") and executed:
            r["sql"], r["executed"] = executed, True
            out(
                f"note  {r['revision']}: no offline SQL ({r['error']}); squawk lints the SQL "
                f"it executed in the stairway"
            )
    return sql


def _report_findings(findings: list[dict], problems: list[str], revisions: int, out: Out) -> list:
    """Print squawk's problems and findings; the failures (problems, findings not accepted)."""
    for p in problems:
        out(f"FAIL  {p}")
    failures = list(problems)
    open_ = [f for f in findings if not f["accepted"]]
    for f in findings:
        tag = "accepted" if f["accepted"] else "FAIL "
        out(
            f"{tag}  squawk {f['revision']}: {f['rule']}: "
            f"{f['message']}\n        {f['statement']}"
            + (f"  (accepted: {f['accepted']})" if f["accepted"] else "")
        )
    if open_:
        failures.append(f"squawk: {len(open_)} finding(s) not accepted")
        out(
            "      to accept a known finding: add '# squawk-accept: RULE -- why' to the "
            "revision file, or an [[accept]] entry (revision, rule, reason) to "
            "squawk-accept.toml (DBOPS_SQUAWK_ACCEPT); see docs/migrations.md"
        )
    elif not problems:
        out(f"ok    squawk: {revisions} revisions, {len(findings)} finding(s), all accepted")
    return failures


def _lint(settings: Settings, sql: list[dict], st: dict, baseline: bool, out: Out) -> list:
    version = (st.get("server_version") or "").split()[0] or None
    findings, problems = run_squawk(settings, sql, version)
    if baseline:
        path, added = write_baseline(settings, findings)
        out(f"ok    baseline: {added} finding(s) accepted in {path}")
        findings = [{**f, "accepted": f["accepted"] or "baseline"} for f in findings]
    return _report_findings(findings, problems, len(sql), out)


def check(
    settings: Settings, *, squawk: bool = True, baseline: bool = False, out: Out = print_line
) -> dict:
    """One head, the stairway (and models), squawk over every revision's SQL; OpsError naming
    every problem when any failed."""
    with Agent(settings) as agent:
        st = call_status(agent)
        failures = _check_heads(st, out)
        stair = agent.call("check.stairway")
        failures += _report_stairway(stair, out)
        sql = _sql_to_lint(agent, stair, out) if squawk else []
    if squawk:
        failures += _lint(settings, sql, st, baseline, out)
    else:
        out("skip  squawk (--no-squawk)")
    if failures:
        raise OpsError(
            f"check failed: {len(failures)} problem(s)",
            details=failures,
            next_command="invoke check   # after fixing the problems above",
        )
    return {"ok": True}
