"""Revision specs and plans: resolve what ``--to`` names, list the steps between the
current revision and it, and say what each downgrade would do (drops data? empty?
NotImplemented?). Read-only: nothing here changes the database.
"""

from __future__ import annotations

import ast
import hashlib
import io
import re

from alembic import command
from alembic.script.revision import ResolutionError
from alembic.util import CommandError

from dbops.agent.db import one_line
from dbops.agent.protocol import AgentFailure, handler

RELATIVE = re.compile(r"^-(\d+)$")


# --- small facts about revision files ---------------------------------------------
def file_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def source(rev) -> str:
    try:
        with open(rev.path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def uses_autocommit_block(rev) -> bool:
    """True when the revision leaves the transaction (autocommit_block: CREATE INDEX
    CONCURRENTLY and friends): a failure part-way may leave committed changes behind."""
    return "autocommit_block" in source(rev)


def info(rev) -> dict:
    return {
        "revision": rev.revision,
        "down_revision": rev.down_revision,
        "message": (rev.doc or "").strip().splitlines()[0] if (rev.doc or "").strip() else "",
        "path": rev.path,
        "sha256": file_hash(rev.path),
        "transactional": not uses_autocommit_block(rev),
    }


def candidates(script, limit: int = 12) -> list[dict]:
    """Every revision, newest first, as the host lists them after a refusal."""
    out = []
    for rev in script.walk_revisions():
        labels = sorted(rev.branch_labels or [])
        out.append(
            {
                "revision": rev.revision,
                "message": (rev.doc or "").strip().splitlines()[0]
                if (rev.doc or "").strip()
                else "",
                "branch_labels": labels,
            }
        )
    return out[:limit]


# --- resolving --to ------------------------------------------------------------------
def resolve(script, spec: str, current: list[str]):
    """The one revision ``spec`` names (None for base). Full id, unique prefix, relative
    (-1, -2: from the current revision), base, head/heads (one head), or a branch label.
    Unknown or ambiguous specs raise AgentFailure(kind="bad_target") with candidates."""
    spec = (spec or "").strip()
    if not spec:
        raise AgentFailure(
            "no revision given (--to=REV)", kind="bad_target", candidates=candidates(script)
        )
    if spec == "base":
        return None
    if spec in ("head", "heads"):
        heads = script.get_heads()
        if len(heads) != 1:
            raise AgentFailure(
                f"'{spec}' is ambiguous: the script directory has {len(heads)} heads: "
                f"{', '.join(sorted(heads))}",
                kind="multiple_heads",
                heads=sorted(heads),
            )
        return script.get_revision(heads[0])
    m = RELATIVE.match(spec)
    if m:
        steps = int(m.group(1))
        if len(current) != 1:
            raise AgentFailure(
                f"'{spec}' is relative to the current revision, and the database has "
                f"{'none' if not current else len(current)}",
                kind="bad_target",
                candidates=candidates(script),
            )
        rev = _known(script, current[0])
        for i in range(steps):
            down = rev.down_revision
            if down is None:
                if i == steps - 1:
                    return None
                raise AgentFailure(
                    f"'{spec}' goes below base: {current[0]} is only {i + 1} "
                    f"revision(s) above base",
                    kind="bad_target",
                    candidates=candidates(script),
                )
            if isinstance(down, (tuple, list)):
                raise AgentFailure(
                    f"'{spec}' crosses the merge revision {rev.revision} "
                    f"(parents {', '.join(down)}): name the revision instead",
                    kind="bad_target",
                    candidates=candidates(script),
                )
            rev = script.get_revision(down)
        return rev
    matches = [r for r in script.walk_revisions() if r.revision.startswith(spec)]
    if len(matches) > 1:
        raise AgentFailure(
            f"'{spec}' is ambiguous: {len(matches)} revisions start with it",
            kind="bad_target",
            reason="ambiguous",
            candidates=[
                {
                    "revision": r.revision,
                    "message": (r.doc or "").strip(),
                    "branch_labels": sorted(r.branch_labels or []),
                }
                for r in matches
            ],
        )
    if len(matches) == 1:
        return matches[0]
    try:  # branch labels, label@rev, anything else alembic itself understands
        revs = [r for r in script.get_revisions(spec) if r is not None]
    except (CommandError, ResolutionError, KeyError, ValueError) as exc:
        raise AgentFailure(
            f"'{spec}' names no revision ({one_line(exc)})",
            kind="bad_target",
            reason="unknown",
            candidates=candidates(script),
        ) from None
    if len(revs) != 1:
        raise AgentFailure(
            f"'{spec}' names {len(revs)} revisions: "
            f"{', '.join(r.revision for r in revs) or 'none'}",
            kind="bad_target",
            reason="ambiguous",
            candidates=candidates(script),
        )
    return revs[0]


def _known(script, revision: str):
    try:
        rev = script.get_revision(revision)
    except (CommandError, ResolutionError):
        rev = None
    if rev is None:
        raise unknown_current(script, [revision])
    return rev


def unknown_current(script, current: list[str]) -> AgentFailure:
    return AgentFailure(
        f"the database's version row names {', '.join(current)}, which this script directory does "
        f"not have (a revision file deleted or renamed, or a database from another branch)",
        kind="unknown_current",
        current=current,
        candidates=candidates(script),
    )


def read_current(ctx) -> list[str]:
    """The version rows; an unreachable database is an AgentFailure of kind "connect"."""
    from dbops.agent import db

    try:
        return ctx.current_heads()
    except Exception as exc:
        raise AgentFailure(
            f"cannot connect to database {db.database()}: {one_line(exc)}", kind="connect"
        ) from None


def check_current_known(script, current: list[str]) -> None:
    known = {r.revision for r in script.walk_revisions()}
    missing = [c for c in current if c not in known]
    if missing:
        raise unknown_current(script, current)


def ancestors(script, current: list[str]) -> list[str]:
    """Revisions at or below the current ones (newest first)."""
    out: list[str] = []
    for c in current:
        for r in script.iterate_revisions(c, "base"):
            if r.revision not in out:
                out.append(r.revision)
    return out


# --- what a downgrade does ---------------------------------------------------------------
# What it DESTROYS is not read from its SQL text: the host runs it on a schema-only scratch
# copy and reads the catalog and the statements (dbops/agent/downgrade_trace.py). Here only
# the shape of downgrade(): empty, NotImplementedError, or code.


def _downgrade_body(rev) -> tuple[str, list[str]]:
    """('empty' | 'not_implemented' | 'code', op calls) from the downgrade() source."""
    try:
        tree = ast.parse(source(rev))
    except SyntaxError:
        return "code", []
    fn = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "downgrade"), None
    )
    if fn is None:
        return "not_implemented", []
    body = [
        n for n in fn.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
    ]
    if not body or all(isinstance(n, ast.Pass) for n in body):
        return "empty", []
    for n in body:
        if isinstance(n, ast.Raise):
            exc = n.exc.func if isinstance(n.exc, ast.Call) else n.exc
            if isinstance(exc, ast.Name) and exc.id in ("NotImplementedError", "NotImplemented"):
                return "not_implemented", []
    calls = []
    for n in ast.walk(fn):
        if (
            isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Name)
            and n.func.value.id == "op"
        ):
            calls.append(n.func.attr)
    return "code", calls


def offline_sql(ctx, rng: str, *, down: bool = False) -> str:
    buf = io.StringIO()
    cfg = ctx.config()
    cfg.output_buffer = buf
    if down:
        command.downgrade(cfg, rng, sql=True)
    else:
        command.upgrade(cfg, rng, sql=True)
    return buf.getvalue()


def downgrade_effects(rev) -> dict:
    """The shape of ``rev``'s downgrade; what it loses is filled in by the host from the
    downgrade trace (``data_loss``: would lose rows or values, ``drops_empty``: loses none)."""
    kind, _ = _downgrade_body(rev)
    return {"body": kind, "data_loss": [], "drops_empty": []}


def downgrade_steps(script, current: str, target) -> list[dict]:
    lower = target.revision if target is not None else "base"
    steps = []
    for rev in script.iterate_revisions(current, lower):
        if isinstance(rev.down_revision, (tuple, list)):
            raise AgentFailure(
                f"rolling back across the merge revision {rev.revision} is not "
                f"supported here: use alembic downgrade directly",
                kind="unsupported",
                revision=rev.revision,
            )
        step = info(rev)
        step.update(downgrade_effects(rev))
        steps.append(step)
    return steps


@handler("plan.downgrade")
def plan_downgrade(ctx, to: str) -> dict:
    """Read-only plan for ``rollback --to``: refuses unknown / ambiguous / non-ancestor
    targets and an unknown current revision, before anything is touched."""
    from dbops.agent.migration import quiet

    with quiet():
        script = ctx.script()
        current = read_current(ctx)
        check_current_known(script, current)
        try:
            return _plan_downgrade(script, current, to)
        except AgentFailure as exc:
            exc.details.setdefault("current", current)
            raise


def _plan_downgrade(script, current: list[str], to: str) -> dict:
    if not current:
        raise AgentFailure(
            "the database has no version row (it is at base): nothing to roll back",
            kind="bad_target",
            candidates=[],
        )
    if len(current) > 1:
        raise AgentFailure(
            f"the database has {len(current)} version rows ({', '.join(current)}): "
            f"roll back one branch with alembic directly",
            kind="unsupported",
        )
    target = resolve(script, to, current)
    target_id = target.revision if target is not None else None
    anc = ancestors(script, current)
    if target_id is not None and target_id not in anc:
        raise AgentFailure(
            f"{target_id} is not an ancestor of the current revision {current[0]}: "
            f"rollback only goes down",
            kind="bad_target",
            reason="not_ancestor",
            candidates=[
                {"revision": r, "message": (script.get_revision(r).doc or "").strip()}
                for r in anc
                if r != current[0]
            ]
            + [{"revision": "base", "message": "empty schema"}],
        )
    steps = [] if target_id == current[0] else downgrade_steps(script, current[0], target)
    return {
        "current": current,
        "target": target_id,
        "target_info": info(target) if target else None,
        "steps": steps,
        "not_implemented": [s["revision"] for s in steps if s["body"] == "not_implemented"],
    }


@handler("plan.resolve")
def plan_resolve(ctx, to: str) -> dict:
    """Any known revision (for stamp): {current, target, target_info}."""
    from dbops.agent.migration import quiet

    script = ctx.script()
    with quiet():
        current = read_current(ctx)
    try:
        target = resolve(script, to, current)
    except AgentFailure as exc:
        exc.details.setdefault("current", current)
        raise
    known = {r.revision for r in script.walk_revisions()}
    return {
        "current": current,
        "unknown_current": [c for c in current if c not in known],
        "target": target.revision if target is not None else None,
        "target_info": info(target) if target is not None else None,
    }


@handler("revisions.hashes")
def revision_hashes(ctx) -> dict:
    """{revision: sha256 of its file} for every revision in the script directory."""
    return {r.revision: file_hash(r.path) for r in ctx.script().walk_revisions()}
