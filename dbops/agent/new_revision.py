"""``revision.autogenerate``: a new revision file from the models (alembic's autogenerate
against the live database), the online operations written for big tables
(dbops/agent/online_revision.py). Read-only on the database; the file is written into the
project where the agent runs and its text returned (the host writes it into its own checkout
when the agent ran in a container)."""

from __future__ import annotations

from pathlib import Path

from dbops.agent import db, guard
from dbops.agent.migration import quietly
from dbops.agent.online_revision import IMPORT, MIN_ROWS, OnlineRevision
from dbops.agent.protocol import AgentFailure, handler


@handler("revision.autogenerate")
@quietly
def autogenerate(
    ctx, message: str, online: bool = False, min_rows: int = MIN_ROWS, rev_id: str | None = None
) -> dict:
    from alembic import command
    from alembic.util import CommandError

    # the host prints what was replaced (from the result), once
    hook = OnlineRevision(force=bool(online), min_rows=int(min_rows), say=lambda _msg: None)
    name = db.database()
    try:
        with guard.expecting(name, "revision --autogenerate"):
            made = command.revision(
                guard.aim(ctx.config(), name),
                message=message,
                autogenerate=True,
                rev_id=rev_id,
                process_revision_directives=hook,
            )
    except CommandError as exc:
        raise AgentFailure(
            f"alembic refused to autogenerate: {exc}. No revision file was written.",
            kind="revision_refused",
        ) from None
    scripts = made if isinstance(made, list) else [made]
    if len(scripts) != 1 or scripts[0] is None:
        raise AgentFailure(
            f"autogenerate made {len(scripts)} revision files, dbops handles one",
            kind="revision_refused",
        )
    script = scripts[0]
    path = Path(script.path)
    text = path.read_text()
    if hook.rewritten and IMPORT not in text:  # a script.py.mako without ${imports}
        text = text.replace("from alembic import op\n", f"from alembic import op\n{IMPORT}\n", 1)
        if IMPORT not in text:
            text = f"{IMPORT}\n{text}"
        path.write_text(text)
    return {
        "revision": script.revision,
        "path": str(path),
        "relpath": str(path.relative_to(Path(ctx.script().dir))),
        "text": text,
        "online": hook.rewritten,
    }
