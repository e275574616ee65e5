"""invoke restore of a partial (touched) backup: it holds the data of some relations only, so
it can only be put back into a database at the backup's revision (same schema), in one
transaction checked against the manifest's row counts (dbops/ops/touched.putback)."""

from __future__ import annotations

import time
from pathlib import Path

from dbops.agent_client import Agent
from dbops.config import Settings
from dbops.confirm import confirm
from dbops.errors import OpsError
from dbops.lifecycle import EXIT_CODES, Operation, outcome_of
from dbops.ops.restore import UNTOUCHED, lock_for_restore, restore_command


def restore_partial(
    settings: Settings,
    agent: Agent,
    path: Path,
    manifest: dict,
    facts: dict,
    op: Operation,
    *,
    yes: bool,
) -> dict:
    """Refuse another revision, confirm, take the lock, check the revision again, put the
    tables back. The outcome goes to ``op`` (entered once the lock is held)."""
    want, live = _same_revision(settings, path, manifest, facts)
    _confirm_putback(settings, path, manifest, yes)
    lock_for_restore(agent, path)
    again = agent.call("restore.facts")
    if sorted(again.get("revisions") or []) != want:
        raise OpsError(
            f"{settings.database} moved to {again.get('revisions')} meanwhile",
            state=UNTOUCHED,
            next_command=restore_command(path),
        )
    op.add(
        file=str(path),
        sha256=manifest["sha256"],
        to=manifest["revisions"],
        **{"from": live},
        partial=True,
        tables=sorted(manifest["tables"]),
    )
    with op:
        res = _put_back(settings, agent, path, manifest, op)
        op.finish()
    return {
        "database": settings.database,
        "file": str(path),
        "revisions": manifest["revisions"],
        "tables": res["tables"],
        "rows": res["rows"],
        "pre_restore_backup": None,
        "old_database": None,
        "dropped_old": None,
        "partial": True,
        "drop_command": None,
        "undo_command": None,
        "terminated": [],
        "timings": {"total_s": round(time.monotonic() - op.started, 3)},
        "kept_before": facts["kept_old"],
    }


def _same_revision(
    settings: Settings, path: Path, manifest: dict, facts: dict
) -> tuple[list[str], list[str]]:
    """The backup's and the live database's revisions, when they are the same; else a refusal."""
    want, live = sorted(manifest["revisions"]), sorted(facts.get("revisions") or [])
    if facts.get("revisions") is None or want != live:
        raise OpsError(
            f"{path.name} is a partial (touched) backup taken at {_label(want)}; "
            f"{settings.database} is at {_label(live)}: its tables can only be put back at "
            f"the backup's revision",
            state=UNTOUCHED,
            next_command=f"invoke rollback --to={want[0] if want else 'base'}   "
            f"# downgrades, then puts these tables back from it",
        )
    return want, live


def _label(revisions: list[str]) -> str:
    return "+".join(revisions) or "base"


def _confirm_putback(settings: Settings, path: Path, manifest: dict, yes: bool) -> None:
    tables = manifest["tables"]
    confirm(
        settings,
        "\n".join(
            [
                f"Put back the data of {len(tables)} table(s) from {path.name} (partial, "
                f"taken {manifest['started_at']}, revision {_label(manifest['revisions'])}) "
                f"into {settings.database} ({settings.target}):",
                "  " + ", ".join(sorted(tables)),
                "  their current rows are REPLACED by the backup's, in one "
                "transaction checked against",
                "  the manifest's row counts; every other table is left as it is",
            ]
        ),
        yes=yes,
        expect=settings.database,
        state=UNTOUCHED,
        next_command=restore_command(path, "--yes"),
    )


def _put_back(settings: Settings, agent: Agent, path: Path, manifest: dict, op: Operation) -> dict:
    """touched.putback, in one transaction: a failure rolled it back; an interruption (exit
    130) may have come before or after its COMMIT, and putting the rows back again is safe."""
    from dbops.ops.touched import putback

    try:
        return putback(settings, agent, path, manifest)
    except OpsError as exc:
        if outcome_of(exc)[0] == "interrupted":
            raise _interrupted(settings, op, path) from None
        op.finish("failed", error=exc.message)
        raise OpsError(
            f"restore failed: {exc.message}",
            details=exc.details,
            state=f"{settings.database} is unchanged (one transaction, rolled back)",
            next_command=f"invoke verify-backup {path} --restore-test",
        ) from None
    except KeyboardInterrupt:
        raise _interrupted(settings, op, path) from None


def _interrupted(settings: Settings, op: Operation, path: Path) -> OpsError:
    state = (
        f"{settings.database}: the put-back was interrupted; it runs in one transaction, so "
        f"its tables hold either their rows from before or the backup's, not a mix"
    )
    op.finish("interrupted", error="interrupted", state=state)
    return OpsError(
        "restore interrupted",
        state=state,
        next_command=f"{restore_command(path, '--yes')}   # puts the backup's rows back again",
        exit_code=EXIT_CODES["interrupted"],
    )
